"""Word error rate, with a light normaliser (case, punctuation, hyphens, whitespace), and the
statistics of yes/no outcomes of an intervention (did ablating X stop the loop on input i?).

Numbers are not spelled out, so "10 of clubs" against "ten of clubs" counts one substitution.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch


def read_transcripts(folder: str | Path) -> dict[str, str]:
    """Reference transcripts from ``folder/transcripts.tsv`` (columns ``file``, ``transcript``);
    empty if there is no such table."""
    table = Path(folder) / "transcripts.tsv"
    if not table.is_file():
        return {}
    with open(table) as f:
        return {row["file"]: row["transcript"] for row in csv.DictReader(f, delimiter="\t")}


def normalize_text(text: str) -> list[str]:
    text = re.sub(r"[-_/]", " ", text.lower())
    text = re.sub(r"[^\w\s']", "", text)
    return text.split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, after ``normalize_text``."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:
        return 0.0 if not hyp else float(len(hyp))
    previous = list(range(len(hyp) + 1))  # edit distance, one row at a time
    for i, r in enumerate(ref, start=1):
        current = [i]
        for j, h in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / len(ref)


def group_bootstrap_interval(
    outcomes: Sequence[bool], groups: Sequence, repeats: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of the share of ``outcomes`` that are true, resampling whole
    groups (inputs cut from one source clip are not independent, so resampling inputs one by
    one would give too narrow an interval)."""
    if len(outcomes) != len(groups) or not outcomes:
        raise ValueError(f"need one group per outcome and at least one outcome; got {len(outcomes)} and {len(groups)}")
    from hooked_whisper.probe_fitting import group_members

    members = group_members(groups)
    names = sorted(members, key=str)
    hits = torch.tensor([float(sum(bool(outcomes[i]) for i in members[name])) for name in names])
    counts = torch.tensor([float(len(members[name])) for name in names])
    pick = torch.randint(len(names), (repeats, len(names)), generator=torch.Generator().manual_seed(seed))
    shares = hits[pick].sum(1) / counts[pick].sum(1)
    return float(shares.quantile(0.025)), float(shares.quantile(0.975))


def mcnemar_p(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Exact two-sided McNemar test of paired yes/no outcomes (an intervention and its control on
    the same inputs): only the inputs where they disagree count, as fair coin flips under the null."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths; got {len(a)} and {len(b)}")
    only_a = sum(bool(x) and not y for x, y in zip(a, b))
    only_b = sum(bool(y) and not x for x, y in zip(a, b))
    n = only_a + only_b
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n)
