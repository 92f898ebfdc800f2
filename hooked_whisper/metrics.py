"""Word error rate, with a light normaliser (case, punctuation, hyphens, whitespace).

Numbers are not spelled out, so "10 of clubs" against "ten of clubs" counts one substitution.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path


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
