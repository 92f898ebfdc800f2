"""Repetition metrics: how to tell that a transcript has fallen into a loop.

``compression_ratio`` is openai-whisper's measure (UTF-8 text through zlib; its transcribe
rejects a window above 2.4). ``trailing_repeat`` looks at tokens instead, which lets generation
stop as soon as a loop forms rather than at the 448-token cap.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def trailing_repeat(tokens: Sequence[int], max_period: int = 16) -> tuple[int, int]:
    """(period, count): the block of ``period`` tokens repeated ``count`` times back to back at
    the end of ``tokens`` that covers the most tokens (count >= 2), or (0, 0) if none."""
    best = (0, 0)
    n = len(tokens)
    for period in range(1, min(max_period, n // 2) + 1):
        block = list(tokens[n - period :])
        count = 1
        while (count + 1) * period <= n and list(tokens[n - (count + 1) * period : n - count * period]) == block:
            count += 1
        if count >= 2 and count * period > best[0] * best[1]:
            best = (period, count)
    return best


@dataclass
class LoopReport:
    looping: bool
    compression_ratio: float
    period: int  # tokens per repeated block at the end (0: none)
    repeats: int  # how often it repeats back to back

    @classmethod
    def of(
        cls,
        tokens: Sequence[int],
        text: str,
        min_repeated_tokens: int = 12,
        min_repeats: int = 3,
        max_ratio: float = 2.4,
    ) -> LoopReport:
        period, repeats = trailing_repeat(tokens)
        ratio = compression_ratio(text)
        return cls(
            _repeats_enough(period, repeats, min_repeated_tokens, min_repeats) or ratio > max_ratio,
            ratio,
            period,
            repeats,
        )


def _repeats_enough(period: int, repeats: int, min_repeated_tokens: int, min_repeats: int) -> bool:
    return repeats >= min_repeats and period * repeats >= min_repeated_tokens


def is_looping(tokens: Sequence[int], min_repeated_tokens: int = 12, min_repeats: int = 3) -> bool:
    """True when the end of ``tokens`` repeats one block at least ``min_repeats`` times and the
    repetition spans at least ``min_repeated_tokens`` tokens (so "5 5" is not a loop)."""
    return _repeats_enough(*trailing_repeat(tokens), min_repeated_tokens, min_repeats)


def loop_start(
    tokens: Sequence[int],
    timestamp_begin: int,
    max_period: int = 32,
    min_repeated_tokens: int = 12,
    min_repeats: int = 3,
) -> int | None:
    """Where the loop at the end of ``tokens`` begins to repeat itself: ``tokens[:i]`` keeps
    everything before the loop and its first copy. None when the end does not loop.

    Timestamps (ids from ``timestamp_begin``) are left out of the comparison, since a looping
    segment repeats its text under new times; ``max_period`` is larger than ``is_looping``'s so
    that a whole repeated sentence counts."""
    text_at = [i for i, t in enumerate(tokens) if t < timestamp_begin]
    text = [tokens[i] for i in text_at]
    period, repeats = trailing_repeat(text, max_period)
    if not _repeats_enough(period, repeats, min_repeated_tokens, min_repeats):
        return None
    kept = len(text) - (repeats - 1) * period  # text tokens up to the end of the first copy
    return text_at[kept - 1] + 1
