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


def adjust_p_values(p_values: Sequence[float], method: str = "holm") -> list[float]:
    """p-values adjusted for testing a family of hypotheses at once (the layers and conditions of
    one study, the rows of an intervention table). ``"holm"`` (Holm's step-down) controls the
    chance of any false rejection in the family under any dependence between the tests, which
    layers of one model certainly have; ``"bh"`` (Benjamini-Hochberg) controls the expected
    share of false rejections among the rejections instead (less strict; it assumes the tests
    are independent or positively dependent)."""
    if method not in ("holm", "bh"):
        raise ValueError(f"method must be 'holm' or 'bh', not {method!r}")
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    if method == "holm":
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * p_values[i]))
            adjusted[i] = running
    else:
        running = 1.0
        for rank in range(m - 1, -1, -1):
            i = order[rank]
            running = min(running, m * p_values[i] / (rank + 1))
            adjusted[i] = min(1.0, running)
    return adjusted


def cluster_permutation_p(
    a: Sequence[float], b: Sequence[float], clusters: Sequence, repeats: int = 10000, seed: int = 0
) -> float:
    """Two-sided paired permutation test of outcomes ``a`` against ``b`` on the same inputs (an
    intervention and its control: 1/0 for loop stopped, or WER), by cluster: the inputs cut from
    one source clip are swapped between ``a`` and ``b`` together, so the test counts source
    clips, not inputs (McNemar on inputs from a few clips treats them as independent).
    Statistic: the mean of a - b; p = (1 + #{|permuted| >= |observed|}) / (1 + repeats)."""
    if not (len(a) == len(b) == len(clusters)) or not a:
        raise ValueError(f"need paired outcomes and one cluster each; got {len(a)}, {len(b)} and {len(clusters)}")
    from hooked_whisper.probe_fitting import group_members

    difference = torch.tensor([float(x) - float(y) for x, y in zip(a, b)], dtype=torch.float64)
    per_cluster = torch.stack([difference[idx].sum() for idx in group_members(clusters).values()])
    observed = float(per_cluster.sum())
    signs = torch.randint(0, 2, (repeats, len(per_cluster)), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    permuted = signs.to(torch.float64) @ per_cluster
    return (1 + int((permuted.abs() >= abs(observed) - 1e-9).sum())) / (1 + repeats)


def head_stability(scores_by_source, n_splits: int = 100, seed: int = 0) -> dict:
    """How often the best head on a random half of the sources is also the best on the other
    half. ``scores_by_source`` maps each source clip to ``{head: score}`` (higher is better, the
    same heads for every source), or is a ``[sources, heads]`` tensor. Returns ``agreement``
    (the share of the ``n_splits`` half-splits where both halves pick the same head) and
    ``best_counts`` (how often each head is best on a half). Heads tied for best on a half are
    picked from at random, so scores that cannot tell heads apart agree about 1 / heads of the time."""
    if isinstance(scores_by_source, torch.Tensor):
        scores, heads = scores_by_source.double(), list(range(scores_by_source.shape[1]))
    else:
        rows = list(scores_by_source.values())
        heads = list(rows[0]) if rows else []
        if any(set(r) != set(heads) for r in rows):
            raise ValueError("every source needs a score for the same heads")
        scores = torch.tensor([[r[h] for h in heads] for r in rows], dtype=torch.float64)
    if scores.ndim != 2 or len(scores) < 2:
        raise ValueError(f"head_stability needs at least two sources of head scores; got shape {tuple(scores.shape)}")
    generator = torch.Generator().manual_seed(seed)

    def best(rows: torch.Tensor) -> int:
        # Ties are broken at random: yes/no outcomes often tie (several heads stop every loop of a
        # half), and argmax's first index would make tied halves "agree" on the same head.
        mean = scores[rows].mean(0)
        tied = (mean == mean.max()).nonzero()[:, 0]
        return int(tied[torch.randint(len(tied), (1,), generator=generator)])

    agree, counts = 0, dict.fromkeys(heads, 0)
    half = len(scores) // 2
    for _ in range(n_splits):
        order = torch.randperm(len(scores), generator=generator)
        best_a, best_b = best(order[:half]), best(order[half:])
        agree += best_a == best_b
        counts[heads[best_a]] += 1
        counts[heads[best_b]] += 1
    return {"agreement": agree / n_splits, "best_counts": counts}
