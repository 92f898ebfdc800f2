"""The decoder's state between generation steps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hooked_whisper.components.attention import KeyValue


@dataclass
class DecoderCache:
    """What the decoder keeps between generation steps: per layer, the cross-attention keys and
    values (computed once from the encoder output) and the self-attention keys and values of
    every position decoded so far."""

    cross_kv: list[KeyValue]
    self_kv: list[KeyValue | None]

    @property
    def position(self) -> int:
        first = self.self_kv[0]
        return 0 if first is None else first[0].shape[1]

    def select(self, index: torch.Tensor, cross: bool = True) -> None:
        """Keep only batch rows ``index`` (in that order). Beam search passes ``cross=False``:
        it only reorders rows of the same clip, whose cross-attention K/V are identical."""
        if cross:
            self.cross_kv = [(k[index], v[index]) for k, v in self.cross_kv]
        self.self_kv = [None if kv is None else (kv[0][index], kv[1][index]) for kv in self.self_kv]
