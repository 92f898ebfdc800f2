"""The decoder's state between generation steps: the key/value cache HookedWhisper builds and
decode() reads. It lives beside the model, not in ``decoding``, so that the model does not import
the decoding package (which imports the model's users: search, transcription, timing)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int

from hooked_whisper.components.attention import KeyValue
from hooked_whisper.components.layout import stored_as

HEADS_FIRST = (0, 2, 1, 3)  # [batch, pos, head, d_head] stored as [batch, head, pos, d_head]


def heads_first(kv: KeyValue) -> KeyValue:
    """The same (k, v) ``[batch, pos, head, d_head]``, stored head by head: attention then reads
    each head's keys and values as one block, which one query per step (KV-cached decoding of
    several clips) reads about twice as fast as keys strided across heads."""
    return stored_as(kv[0], HEADS_FIRST), stored_as(kv[1], HEADS_FIRST)


def _rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of a head-by-head tensor, copied once and still stored head by head."""
    return t.transpose(1, 2)[index].transpose(1, 2)


@dataclass
class DecoderCache:
    """What the decoder keeps between generation steps: per layer, the cross-attention keys and
    values (computed once from the encoder output) and the self-attention keys and values of
    every position decoded so far.

    Rows whose prompts differ in length (batched long-form transcription) are left-padded:
    ``pad[row]`` slots come before that row's first real token. Padding keys are hidden from
    self-attention and each row's positions count from its first real token, so a padded row
    computes what it would alone."""

    cross_kv: list[KeyValue]
    self_kv: list[KeyValue | None]
    pad: Int[torch.Tensor, " batch"] | None = None

    def positions(self, n_new: int) -> Int[torch.Tensor, "batch pos"] | None:
        """Per row, the decoder positions of the next ``n_new`` slots (None when unpadded)."""
        if self.pad is None:
            return None
        slots = torch.arange(self.position, self.position + n_new, device=self.pad.device)
        return (slots[None] - self.pad[:, None]).clamp(min=0)

    def self_attention_mask(self, n_new: int) -> Bool[torch.Tensor, "batch pos key_pos"] | None:
        """True where a new slot may attend to a key slot (causality is the attention's own
        business): real queries see real keys only; a padding query sees the padding (so its
        softmax has something finite to normalise, and nothing real ever reads it)."""
        if self.pad is None:
            return None
        n_keys = self.position + n_new
        key_is_real = torch.arange(n_keys, device=self.pad.device)[None] >= self.pad[:, None]
        query_is_pad = torch.arange(self.position, n_keys, device=self.pad.device)[None] < self.pad[:, None]
        return key_is_real[:, None, :] | query_is_pad[:, :, None]

    def for_rows(self, batch: int) -> DecoderCache:
        """A fresh cache for ``batch`` rows that all read this one clip's cross-attention keys
        and values, as views rather than copies: a sweep over ``batch`` patches downstream of
        them computes them once."""
        if self.cross_kv[0][0].shape[0] != 1 or self.position != 0:
            raise ValueError("for_rows shares a fresh cache of one clip (from new_decoder_cache)")
        cross_kv = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in self.cross_kv]
        return DecoderCache(cross_kv=cross_kv, self_kv=[None] * len(self.self_kv))

    @property
    def position(self) -> int:
        first = self.self_kv[0]
        return 0 if first is None else first[0].shape[1]

    def select(self, index: torch.Tensor, cross: bool = True) -> None:
        """Keep only batch rows ``index`` (in that order). Beam search passes ``cross=False``:
        it only reorders rows of the same clip, whose cross-attention K/V are identical."""
        if cross:
            self.cross_kv = [(_rows(k, index), _rows(v, index)) for k, v in self.cross_kv]
        self.self_kv = [None if kv is None else (kv[0][index], kv[1][index]) for kv in self.self_kv]
        if self.pad is not None:
            self.pad = self.pad[index]
