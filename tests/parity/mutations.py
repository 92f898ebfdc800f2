"""Real bugs a loader or a component could have, applied to a copy of a model: a cross-engine
tolerance is only worth its name if each of these still fails the comparison it guards.

``MUTATIONS`` maps a description to a function that edits a deep copy in place."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from hooked_whisper import HookedWhisper


def transpose_out_projection(model: HookedWhisper) -> None:
    """Layer 0's attention out-projection read as ``[in, out]`` instead of ``[out, in]``: the
    flattened ``[n_heads * d_head, d_model]`` matrix is square, so the shapes still fit."""
    W = model.encoder_blocks[0].attn.W_O
    W.data = W.data.flatten(0, 1).T.contiguous().view_as(W)


def layer_norm_epsilon_1e_3(model: HookedWhisper) -> None:
    """Every LayerNorm with epsilon 1e-3 instead of Whisper's 1e-5."""
    for module in model.modules():
        if hasattr(module, "eps") and hasattr(module, "hook_normalized"):
            module.eps = 1e-3


def one_mlp_row_one_percent_off(model: HookedWhisper) -> None:
    """One input row of the last encoder block's MLP scaled by 1.01."""
    with torch.no_grad():
        model.encoder_blocks[-1].mlp.W_in[0].mul_(1.01)


MUTATIONS: dict[str, Callable[[HookedWhisper], None]] = {
    "transposed out-projection": transpose_out_projection,
    "LayerNorm epsilon 1e-3": layer_norm_epsilon_1e_3,
    "one MLP row 1% off": one_mlp_row_one_percent_off,
}


def mutated(model: HookedWhisper, name: str) -> HookedWhisper:
    other = copy.deepcopy(model)
    MUTATIONS[name](other)
    return other
