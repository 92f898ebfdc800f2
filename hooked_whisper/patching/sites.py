"""Where to intervene: a ``Site`` is a hook, optionally one head, optionally some positions.

Positions are absolute (decoder token positions, or audio positions of the hook), so a patch
keeps its meaning in KV-cached generation, where each step sees only its new positions. A time
window (``frames(0.5, 1.5)``) is kept in seconds and turned into positions for the hook it is
applied to, through the model's hook layout: 100 per second on ``hook_mel`` and the first
convolution, 50 per second after the stride-2 convolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from hooked_whisper.hook_layout import hooks_across_layers

if TYPE_CHECKING:
    from hooked_whisper.hooked_audio_model import HookedAudioModel


@dataclass(frozen=True)
class Seconds:
    """A window of audio time, ``[start, end)`` seconds: positions are chosen per hook."""

    start: float
    end: float

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= 30:
            raise ValueError(f"a time window must satisfy 0 <= start < end <= 30 s; got {self.start}..{self.end}")


def frames(start_s: float, end_s: float) -> Seconds:
    """The audio between ``start_s`` and ``end_s`` seconds, for ``Site(positions=...)``."""
    return Seconds(start_s, end_s)


@dataclass(frozen=True)
class Site:
    hook: str
    head: int | None = None
    positions: tuple[int, ...] | Seconds | None = None  # None: every position
    label: str | None = None

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        parts = [self.hook] + ([f"head {self.head}"] if self.head is not None else [])
        if isinstance(self.positions, Seconds):
            parts.append(f"{self.positions.start:g}-{self.positions.end:g} s")
        elif self.positions is not None:
            first, last = self.positions[0], self.positions[-1]
            parts.append(f"pos {first}..{last}" if len(self.positions) > 1 else f"pos {first}")
        return " ".join(parts)


def resolve(model: HookedAudioModel, site: Site | str) -> Site:
    """``site`` checked against the model, with a time window turned into the hook's positions."""
    site = Site(site) if isinstance(site, str) else site
    layout = model.hook_layout(site.hook)
    if site.head is not None:
        if layout.head_axis is None:
            raise ValueError(f"{site.hook} has no head axis; patch a per-head hook (hook_z, hook_q, ...) for heads")
        n_heads = model.head_count(layout)
        if not 0 <= site.head < n_heads:
            raise ValueError(f"head {site.head} out of range: {site.hook} has heads 0..{n_heads - 1}")
    if isinstance(site.positions, Seconds):
        site = replace(site, positions=layout.positions(site.positions.start, site.positions.end), label=site.name)
    if site.positions is not None and layout.unit == "token" and any(p < 0 for p in site.positions):
        raise ValueError(
            f"{site.hook}: decoder positions are absolute (0 is the first prompt token), so a negative one "
            "has no fixed meaning across generation steps and would patch nothing; pass tokens.shape[1] - 1 "
            "for the last position"
        )
    if site.positions is not None and layout.unit != "token":
        limit = model.position_count(layout.unit)
        bad = [p for p in site.positions if not 0 <= p < limit]
        if bad:
            raise ValueError(f"positions {bad[:3]}... lie outside the {limit} positions of {site.hook}")
    return site


def resolve_all(model: HookedAudioModel, sites: Sequence[Site] | Site | str) -> list[Site]:
    many = [sites] if isinstance(sites, (Site, str)) else list(sites)
    if not many:
        raise ValueError("no sites given: pass at least one Site or hook name (layer_sites, head_sites build sweeps)")
    return [resolve(model, s) for s in many]


def check_token_positions(model: HookedAudioModel, sites: Sequence[Site], n_tokens: int) -> None:
    """In a teacher-forced run of ``n_tokens`` tokens, a decoder position at or past the end would
    patch nothing (and the site would look irrelevant): refuse it."""
    for site in sites:
        if site.positions is None or model.hook_layouts[site.hook].unit != "token":
            continue
        beyond = [p for p in site.positions if p >= n_tokens]  # type: ignore[union-attr]
        if beyond:
            raise ValueError(
                f"{site.hook}: decoder positions {beyond[:3]} lie past the {n_tokens} tokens this run reads "
                f"(0..{n_tokens - 1})"
            )


def refuse_padded_rows(model: HookedAudioModel, hook: str) -> None:
    """Decoder positions mean nothing fixed while rows are left-padded: say so rather than patch
    the wrong tokens."""
    if model.decode_padded:
        raise ValueError(
            f"{hook}: decoder positions are ambiguous while rows are left-padded (batched transcription, "
            "where each clip's prompt has its own length); transcribe with batch_size=1 to patch positions"
        )


def region(model: HookedAudioModel, site: Site, x: torch.Tensor, row: int | None) -> tuple[tuple, tuple] | None:
    """Index tuples (into the hooked tensor, into the full-run source) for a resolved ``site``;
    None when none of its positions are in this call (a later generation step)."""
    layout = model.hook_layouts[site.hook]
    pos_axis = layout.pos_axis
    here: list = [slice(None)] * x.ndim
    there: list = [slice(None)] * x.ndim
    if row is not None:
        here[0] = slice(row, row + 1)
    if site.head is not None:
        here[layout.head_axis] = there[layout.head_axis] = site.head  # type: ignore[index]
    offset = model.decode_offset if layout.unit == "token" else 0
    if layout.unit == "token" and site.positions is not None:
        refuse_padded_rows(model, site.hook)
    n_here = x.shape[pos_axis]
    assert not isinstance(site.positions, Seconds), "resolve() the site first"
    wanted = range(offset, offset + n_here) if site.positions is None else site.positions
    absolute = [p for p in wanted if offset <= p < offset + n_here]
    if not absolute:
        return None
    here[pos_axis] = [p - offset for p in absolute]
    there[pos_axis] = absolute
    if site.positions is None and offset == 0:
        here[pos_axis] = there[pos_axis] = slice(None)
    return tuple(here), tuple(there)


# ---------------------------------------------------------------------------------------- sweeps
def head_sites(
    model: HookedAudioModel,
    stack: str = "decoder",
    kind: str | None = None,
    hook: str = "hook_z",
    positions: Sequence[int] | Seconds | None = None,
) -> list[Site]:
    """One site per head of every layer of ``stack``: hook ``{kind}.{hook}`` of each block (labels
    XL/DL/EL{l}H{h}). ``kind`` defaults to the heads that read the audio: cross-attention in an
    encoder-decoder's decoder, self-attention ("attn") in the encoder and in an audio LLM's
    language model."""
    if kind is None:
        kind = "cross_attn" if stack == "decoder" and model.has_cross_attention else "attn"
    if kind == "cross_attn":
        model.require_cross_attention("cross-attention head sites")
    tag = "EL" if stack == "encoder" else ("XL" if kind == "cross_attn" else "DL")
    pos = _positions(positions)
    return [
        Site(model.hook_name(stack, l, kind, hook), h, pos, f"{tag}{l}H{h}")
        for l in range(model.layer_count(stack))
        for h in range(model.head_count(stack))
    ]


def layer_sites(model: HookedAudioModel, template: str, positions: Sequence[int] | Seconds | None = None) -> list[Site]:
    """One site per layer, from a hook name with ``{l}`` for the layer, e.g.
    ``layer_sites(model, "decoder_blocks.{l}.hook_cross_attn_out")``; or from a stack and a leaf
    given as ``"decoder:hook_resid_post"``, which names the hook in any family (Whisper's
    ``decoder_blocks``, an audio LLM's language-model ``blocks``)."""
    names = hooks_across_layers(model, template)
    pos = _positions(positions)
    return [Site(name, None, pos, name) for name in names]


def position_sites(hook: str, n_positions: int, head: int | None = None) -> list[Site]:
    """One site per position of ``hook`` (decoder tokens or audio positions)."""
    return [Site(hook, head, (p,), f"{hook} pos {p}") for p in range(n_positions)]


def window_sites(hook: str, duration_s: float, window_s: float = 0.5) -> list[Site]:
    """Consecutive windows of ``window_s`` seconds over the first ``duration_s`` of audio."""
    starts = [i * window_s for i in range(math.ceil(duration_s / window_s))]
    return [Site(hook, None, frames(s, min(s + window_s, 30.0)), f"{hook} {s:.1f}-{s + window_s:.1f}s") for s in starts]


def word_sites(
    model: HookedAudioModel, hook: str, word: Seconds | tuple[float, float], duration_s: float
) -> dict[str, Site]:
    """Sites at ``hook`` over one word of a clip lasting ``duration_s``: ``"target"`` (the
    word's frames), ``"context"`` (the clip's other frames) and ``"all"`` (every frame of the
    clip; the padding after it is left alone). ``word`` is ``(start, end)`` in seconds, from the
    synthesis that made the clip or from word timestamps (``transcribe(..., word_timestamps=True)``
    gives ``Word.start`` / ``.end``)."""
    start, end = (word.start, word.end) if isinstance(word, Seconds) else word
    if not 0 <= start < end <= duration_s <= 30:
        raise ValueError(
            f"the word must lie inside the clip: 0 <= start < end <= duration <= 30 s; got {start}..{end} "
            f"in {duration_s} s"
        )
    layout = model.hook_layout(hook)
    every = layout.positions(0.0, duration_s)
    inside = set(layout.positions(start, end))
    outside = tuple(p for p in every if p not in inside)
    if not outside:
        raise ValueError(f"the word fills the whole clip ({start}..{end} of {duration_s} s): there is no context")
    return {
        "target": Site(hook, None, tuple(sorted(inside)), f"{hook} word {start:.2f}-{end:.2f} s"),
        "context": Site(hook, None, outside, f"{hook} context"),
        "all": Site(hook, None, every, f"{hook} clip 0-{duration_s:.2f} s"),
    }


def _positions(positions: Sequence[int] | Seconds | None) -> tuple[int, ...] | Seconds | None:
    return positions if positions is None or isinstance(positions, Seconds) else tuple(positions)
