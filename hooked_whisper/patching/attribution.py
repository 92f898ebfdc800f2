"""Attribution patching: a first-order estimate of activation patching at every site at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from hooked_whisper.patching.activation import prepare, source_cache
from hooked_whisper.patching.metrics import Metric

if TYPE_CHECKING:
    from hooked_whisper.hooked_audio_model import HookedAudioModel


def attribution_patch(
    model: HookedAudioModel,
    base,
    source,
    metric: Metric,
    hooks: Sequence[str] | None = None,
    tokens=None,
    sample_rate: int | None = None,
) -> dict[str, torch.Tensor]:
    """First-order estimate of patching every site from ``source`` into ``base`` at once:
    ``(source - base) . d metric / d activation``, from one forward and one backward pass.

    Returns, per hook, the estimate summed over positions and feature dimensions, kept per
    head for per-head hooks (``[n_heads]``) and a scalar otherwise. Default hooks: every
    attention head's ``hook_z`` (self and cross) and every ``hook_mlp_out``, both stacks.
    """
    if hooks is None:
        hooks = [
            model.hook_name(stack, layer, leaf)
            for stack in ("encoder", "decoder")
            for layer in range(model.layer_count(stack))
            for leaf in _default_leaves(model, stack)
        ]
    hooks = list(hooks)
    if not hooks:
        raise ValueError("no hooks given: pass at least one hook name, or hooks=None for every layer's outputs")
    for name in hooks:
        model.check_hook_name(name)
    mel, tokens = prepare(model, base, tokens, sample_rate)
    source = source_cache(model, source, tokens, set(hooks), sample_rate)
    live: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, hook) -> None:
        x.retain_grad()
        live[hook.name] = x

    with torch.enable_grad(), model.hooks(fwd_hooks=[(h, keep) for h in hooks]):
        value = metric(model(mel, tokens)).sum()
        value.backward()
    model.zero_grad(set_to_none=True)
    out = {}
    for name in hooks:
        x = live[name]
        contribution = (source[name] - x.detach()) * x.grad
        head_axis = model.hook_layouts[name].head_axis
        out[name] = (
            contribution.transpose(head_axis, -1).flatten(0, -2).sum(0) if head_axis is not None else contribution.sum()
        )
    return out


def _default_leaves(model: HookedAudioModel, stack: str) -> list[str]:
    """Every head and MLP of a block: self-attention, cross-attention where the decoder has it."""
    cross = ["cross_attn.hook_z"] if stack == "decoder" and model.has_cross_attention else []
    return ["attn.hook_z", *cross, "hook_mlp_out"]
