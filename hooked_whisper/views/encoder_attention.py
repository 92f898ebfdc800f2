"""The encoder's self-attention over time, per layer and head, and its locality: the share of each
query's attention that falls within ``k`` positions of it (k=75 positions, 1.5 s, as in the
finding that encoder attention is local on tiny), averaged over the clip's positions.

Each layer's pattern ``[head, 1500, 1500]`` is reduced as the encoder computes it (cut to the
clip, averaged into time bins when the page would be too big, and its locality taken over every
key), so a 32-layer encoder never holds all its patterns at once. Works on both families (an
audio LLM's audio tower is Whisper's encoder)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hooked_whisper.hook_layout import POSITIONS_PER_SECOND
from hooked_whisper.hooked_audio_model import HookedAudioModel
from hooked_whisper.views.page import (
    MAX_PAGE_CELLS,
    Axis,
    Heatmap,
    Page,
    bin_time,
    document,
    figures_png,
    numbered,
    time_bins,
)
from hooked_whisper.views.runs import checked_layers, one_window

LOCAL_K = 75  # positions (1.5 s): the window of the "encoder attention is local" finding on tiny
PROFILE_DISTANCES = (0, 5, 10, 25, 50, 75, 100, 150, 250, 500, 1000, 1500)  # positions either side (1500: all)


@dataclass
class EncoderAttentionView(Page):
    pattern: Heatmap  # [layer, head, query time, key time]
    locality: Heatmap  # [layer, head]: share of attention within k positions
    profile: Heatmap  # [layer, head, distance]: share within each of PROFILE_DISTANCES
    k: int

    def png(self, path: str | Path, layer: int | None = None, head: int | None = None) -> Path:
        figures = [
            (self.pattern, {"layer": layer, "head": head}),
            (self.locality, {}),
            (self.profile, {"layer": layer}),
        ]
        return figures_png(path, figures)

    def page(self) -> str:
        return document("encoder self-attention", [self.pattern, self.locality, self.profile])


def locality(pattern: torch.Tensor, ks: Sequence[int], n_queries: int) -> torch.Tensor:
    """Share of attention within each of ``ks`` positions of each query, averaged over the first
    ``n_queries`` queries: ``pattern [head, query, key]`` -> ``[head, len(ks)]``."""
    queries = torch.arange(n_queries, device=pattern.device)[:, None]
    distance = (queries - torch.arange(pattern.shape[-1], device=pattern.device)[None, :]).abs()
    rows = pattern[:, :n_queries]
    return torch.stack([(rows * (distance <= k).to(pattern.dtype)).sum(-1).mean(-1) for k in ks], dim=-1)


def encoder_attention_view(
    model: HookedAudioModel,
    audio,
    k: int = LOCAL_K,
    sample_rate: int | None = None,
    max_cells: int = MAX_PAGE_CELLS,
    layers: Sequence[int] | None = None,
) -> EncoderAttentionView:
    """Every encoder layer's (or ``layers``') attention pattern over the clip, averaged into time
    bins when the page would hold over ``max_cells`` values, and each head's locality at ``k``."""
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k (positions either side counted as local) must be a whole number >= 0, got {k!r}")
    wave, features, mel = one_window(model, audio, sample_rate)
    layers = checked_layers(model, "encoder", layers)
    n_layers, n_heads = len(layers), model.head_count("encoder")
    n = model.real_position_count("audio_position", wave.shape[0])
    factor = time_bins(n_layers * n_heads, n, n, 2, max_cells)
    patterns, shares = {}, {}

    def reduce(layer: int):
        def hook(pattern: torch.Tensor, hook) -> None:
            shares[layer] = locality(pattern[0].float(), [k, *PROFILE_DISTANCES], n).cpu().numpy()
            clip = pattern[0, :, :n, :n].float().cpu().numpy()
            patterns[layer] = bin_time(bin_time(clip, factor, axis=-1), factor, axis=-2)

        return hook

    hooks = [(model.hook_name("encoder", l, "attn.hook_pattern"), reduce(l)) for l in layers]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model.encode(features)
    names, heads = [str(l) for l in layers], numbered(n_heads)
    step = factor / POSITIONS_PER_SECOND["audio_position"]
    pattern = Heatmap(
        np.stack([patterns[l] for l in layers]).astype(np.float32),
        rows=Axis("query (s)", seconds_per_step=step),
        cols=Axis("key (s)", seconds_per_step=step),
        selectors=[Axis("layer", names), Axis("head", heads)],
        title="encoder self-attention",
        value_name="attention",
        mel=mel,
        binned=factor,
    )
    every = np.stack([shares[l] for l in layers]).astype(np.float32)  # [layer, head, 1 + distances]
    local = Heatmap(
        every[..., 0],
        rows=Axis("layer", names),
        cols=Axis("head", heads),
        title=f"encoder locality: share of attention within {k} positions ({k / 50:.2f} s)",
        value_name=f"share within {k}",
    )
    profile = Heatmap(
        every[..., 1:],
        rows=Axis("head", heads),
        cols=Axis("within (positions either side, 20 ms each)", [str(d) for d in PROFILE_DISTANCES]),
        selectors=[Axis("layer", names)],
        title="encoder locality profile: share of attention within each distance",
        value_name="share within",
    )
    return EncoderAttentionView(pattern, local, profile, k)
