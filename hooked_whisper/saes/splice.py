"""Splicing autoencoders into a model by hook name (``model.saes({hook: sae})``).

Inside the block the hook point at ``hook`` runs the autoencoder first: what the model reads on
from there (and what hooks on ``hook`` itself see) is the reconstruction, or, with the error
term, the reconstruction plus the error, which is the original activation again. The
autoencoder's own hook points hang below the hook (``{hook}.sae.hook_sae_acts_post`` and the
rest of ``SAE_LEAVES``), registered with the model and its hook layouts, so caching, patching,
ablation, attribution and generation address the latents like any activation. Leaving the block,
even by an exception, takes all of it off again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import nn
from transformer_lens.hook_points import HookPoint

from hooked_whisper.hook_layout import SAE_LEAVES, hook_point, is_sae_hook, sae_hook_layouts, sae_hook_name
from hooked_whisper.saes.sae import SparseAutoencoder

if TYPE_CHECKING:
    from transformer_lens.hook_points import LensHandle

    from hooked_whisper.hooked_audio_model import HookedAudioModel


class HookedSAE(nn.Module):
    """An autoencoder as it runs spliced in at one hook, with a hook point at every step."""

    def __init__(self, autoencoder: SparseAutoencoder, use_error_term: bool, flatten_heads: bool, hook: str = ""):
        super().__init__()
        self.hook = hook  # the model hook it is spliced in at, for errors
        self.autoencoder = autoencoder
        self.use_error_term = use_error_term
        self.flatten_heads = flatten_heads  # a per-head hook ([batch, pos, head, d_head]) is read as one vector
        # Positions on the axis of the hook it is spliced in at (a per-position hook); no head axis.
        self.hook_sae_input = hook_point()  # [batch, pos, d_in]: the activation the model computed
        self.hook_sae_acts_pre = hook_point()  # [batch, pos, d_sae]: encoder output before the activation
        self.hook_sae_acts_post = hook_point()  # [batch, pos, d_sae]: the latents
        self.hook_sae_recons = hook_point()  # [batch, pos, d_in]: the reconstruction
        self.hook_sae_error = hook_point()  # [batch, pos, d_in]: input - reconstruction (with the error term)

    def forward(self, x: Float[torch.Tensor, "batch pos ..."]) -> Float[torch.Tensor, "batch pos ..."]:
        shape, dtype = x.shape, x.dtype
        sae = self.autoencoder
        flat = x.flatten(2) if self.flatten_heads else x
        if flat.shape[-1] != sae.d_in:
            raise ValueError(
                f"the autoencoder at {self.hook} reads vectors of {sae.d_in}, "
                f"but that hook's activation has shape {tuple(shape)}: splice it at a hook of width {sae.d_in}"
            )
        sae_in = self.hook_sae_input(flat.to(sae.W_enc.dtype))
        pre = self.hook_sae_acts_pre(sae.pre_acts(sae_in))
        acts = self.hook_sae_acts_post(sae.activate(pre))
        recons = self.hook_sae_recons(sae.decode(acts))
        out = recons
        if self.use_error_term:
            # The error is what the autoencoder misses on this input left alone: recomputed
            # without the latent hooks when any is set (one may patch the latents), so a patch
            # moves the output by exactly its change to the reconstruction. Kept differentiable:
            # gradients reach the input through the error term as through the model itself.
            hooked = any(getattr(self, leaf).fwd_hooks for leaf in SAE_LEAVES[1:4])
            clean = sae(sae_in) if hooked else recons
            out = recons + self.hook_sae_error(sae_in - clean)
        return out.to(dtype).reshape(shape)


@dataclass
class _Splice:
    hook: str
    point: HookPoint
    module: HookedSAE
    handle: LensHandle


def as_hook_map(saes: Mapping[str, SparseAutoencoder] | Sequence[SparseAutoencoder] | SparseAutoencoder):
    """``{hook: autoencoder}`` from a mapping, or from autoencoders that know their ``hook_name``."""
    if isinstance(saes, Mapping):
        return dict(saes)
    many = [saes] if isinstance(saes, SparseAutoencoder) else list(saes)
    unnamed = [i for i, sae in enumerate(many) if not sae.hook_name]
    if unnamed:
        raise ValueError(
            f"autoencoder(s) {unnamed} carry no hook_name: pass {{hook_name: sae}} to say where each is spliced"
        )
    hooks = [sae.hook_name for sae in many]
    if len(set(hooks)) != len(hooks):
        raise ValueError(f"two autoencoders name the same hook ({hooks}): splice one per hook")
    return dict(zip(hooks, many, strict=True))


@contextmanager
def splice_saes(
    model: HookedAudioModel,
    saes: Mapping[str, SparseAutoencoder] | Sequence[SparseAutoencoder] | SparseAutoencoder,
    use_error_term: bool = False,
) -> Iterator[HookedAudioModel]:
    """Run ``model`` with each autoencoder spliced in at its hook for the duration of the block
    (``model.saes`` calls this; see the module docstring)."""
    hook_map = as_hook_map(saes)
    with model._lock:
        done: list[_Splice] = []
        try:
            for hook, sae in hook_map.items():
                done.append(_attach(model, hook, sae, use_error_term))
            yield model
        finally:
            for splice in reversed(done):
                _detach(model, splice)


def _attach(model: HookedAudioModel, hook: str, sae: SparseAutoencoder, use_error_term: bool) -> _Splice:
    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(
            f"splice a hooked_whisper.saes.SparseAutoencoder (load_sae, import_sae_lens, load_audiosae); "
            f"got {type(sae).__name__} at {hook}"
        )
    layout = model.hook_layout(hook)
    point = model.hook_dict[hook]
    if hasattr(point, "sae"):
        raise ValueError(f"an autoencoder is already spliced in at {hook}: splice one per hook")
    if is_sae_hook(hook):
        raise ValueError(f"{hook} is an autoencoder's own hook: splice at a model hook")
    if layout.pos_axis != 1 or layout.key_unit is not None:
        raise ValueError(
            f"{hook} does not hold one vector per position ([batch, pos, ...]); splice at a residual, MLP, "
            "attention output or per-head (hook_z) hook"
        )
    module = HookedSAE(sae, use_error_term, flatten_heads=layout.head_axis is not None, hook=hook)
    module.to(next(sae.parameters()).device)
    point.add_module("sae", module)
    for leaf in SAE_LEAVES:
        name = sae_hook_name(hook, leaf)
        sub = getattr(module, leaf)
        sub.name = name
        model.hook_dict[name] = model.mod_dict[name] = sub
    model.hook_layouts |= sae_hook_layouts(hook, layout, module)

    def splice(x: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        return module(x)

    # Permanent, so that run_with_hooks' and hooks()' resets keep it; first, so that the hooks
    # users add at ``hook`` see what the model reads on.
    handle = point.add_hook(splice, dir="fwd", is_permanent=True, prepend=True)
    return _Splice(hook, point, module, handle)


def _detach(model: HookedAudioModel, splice: _Splice) -> None:
    splice.handle.hook.remove()
    splice.point.fwd_hooks = [h for h in splice.point.fwd_hooks if h is not splice.handle]
    for leaf in SAE_LEAVES:
        name = sae_hook_name(splice.hook, leaf)
        getattr(splice.module, leaf).remove_hooks("both", including_permanent=True)
        for table in (model.hook_dict, model.mod_dict, model.hook_layouts):
            table.pop(name, None)
    del splice.point._modules["sae"]
