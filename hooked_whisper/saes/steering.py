"""Steering with an autoencoder's latents, or any direction, at one hook: forward hooks for
``generate``, ``transcribe`` or ``model.hooks``, over chosen positions or seconds of audio
(``frames(start, end)``; positions are chosen per hook as patching chooses them, and decoder
positions stay absolute through KV-cached generation).

- ``mode="add"``: ``x += scale * direction``, the direction being the given vector or the sum
  of the chosen latents' decoder rows (``latents={i: coefficient}`` weighs them).
- ``mode="clamp"``: each chosen latent is set to ``value`` and the rest of the activation left as
  it is, ``x += (value - a_i(x)) * W_dec[i]`` with ``a_i(x)`` the latent on the current
  activation; ``value=0`` ablates the latent. The autoencoder need not be spliced in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from hooked_whisper.patching.sites import Seconds, Site, region, resolve
from hooked_whisper.saes.sae import SparseAutoencoder

if TYPE_CHECKING:
    from hooked_whisper.hooked_audio_model import HookedAudioModel


def _weights(latents: Sequence[int] | Mapping[int, float], d_sae: int) -> dict[int, float]:
    weights = dict(latents) if isinstance(latents, Mapping) else {int(i): 1.0 for i in latents}
    bad = [i for i in weights if not 0 <= i < d_sae]
    if bad:
        raise ValueError(f"latents {bad} out of range: the autoencoder has latents 0..{d_sae - 1}")
    return weights


def steering_hooks(
    model: HookedAudioModel,
    hook: str,
    *,
    direction: torch.Tensor | None = None,
    sae: SparseAutoencoder | None = None,
    latents: Sequence[int] | Mapping[int, float] = (),
    mode: str = "add",
    scale: float = 1.0,
    value: float = 0.0,
    positions: Sequence[int] | Seconds | None = None,
) -> list[tuple[str, Callable]]:
    """Hooks that steer ``hook`` (see the module docstring); pass them as ``fwd_hooks`` to
    ``generate`` or ``transcribe``, or to ``model.hooks``."""
    if mode not in ("add", "clamp"):
        raise ValueError(f"mode must be 'add' or 'clamp', not {mode!r}")
    if (direction is None) == (not latents):
        raise ValueError("steer along a direction or along an autoencoder's latents: give one of direction=, latents=")
    if latents and sae is None:
        raise ValueError("latents= needs sae=, the autoencoder they belong to")
    if mode == "clamp" and not latents:
        raise ValueError("mode='clamp' sets latents to a value: give sae= and latents=")
    site = resolve(
        model,
        Site(hook, positions=positions if positions is None or isinstance(positions, Seconds) else tuple(positions)),
    )
    flatten = model.hook_layouts[site.hook].head_axis is not None
    if latents:
        weights = _weights(latents, sae.d_sae)  # type: ignore[union-attr]
        index = torch.tensor(list(weights))
        coefficients = torch.tensor(list(weights.values()))
        steer = (coefficients[:, None] * sae.W_dec.detach()[index].cpu()).sum(0)  # type: ignore[union-attr]
    else:
        steer = torch.as_tensor(direction).detach().flatten()

    def steer_hook(x: torch.Tensor, hook) -> torch.Tensor | None:
        where = region(model, site, x, None)
        if where is None:
            return None  # none of the chosen positions in this call (a later generation step)
        flat = x.flatten(2) if flatten else x
        if flat.shape[-1] != steer.shape[0]:
            raise ValueError(
                f"the steering vector has {steer.shape[0]} dimensions; {site.hook} holds {flat.shape[-1]} per position"
            )
        here = where[0][:2]  # batch and positions; heads, if any, are flattened into the last axis
        selected = flat[here]
        if mode == "add":
            delta = scale * steer.to(flat)
        else:
            acts = sae.encode(selected.to(sae.W_enc.dtype))[..., index]  # type: ignore[union-attr]
            rows = sae.W_dec.detach()[index]  # type: ignore[union-attr]
            delta = ((value - acts) @ rows).to(flat.dtype)
        flat = flat.clone()
        flat[here] = selected + delta
        return flat.reshape(x.shape)

    steer_hook.__name__ = f"steer_{mode}"
    return [(site.hook, steer_hook)]
