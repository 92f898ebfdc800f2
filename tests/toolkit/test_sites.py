"""Time windows select the same seconds on every hook."""

from __future__ import annotations

import pytest
import torch

from hooked_whisper.patching import Site, frames, patch_hooks
from hooked_whisper.patching.sites import resolve
from tests.support import DATA

CLIP = DATA / "librivox_0880.wav"


def test_time_windows_select_the_same_seconds_on_every_hook(tiny_en):
    mel = resolve(tiny_en, Site("hook_mel", positions=frames(0.5, 1.5))).positions
    conv1 = resolve(tiny_en, Site("encoder_embed.hook_conv1", positions=frames(0.5, 1.5))).positions
    encoder = resolve(tiny_en, Site("encoder_blocks.0.hook_resid_post", positions=frames(0.5, 1.5))).positions
    cross_k = resolve(tiny_en, Site("decoder_blocks.0.cross_attn.hook_k", positions=frames(0.5, 1.5))).positions
    assert (mel[0], mel[-1] + 1) == (conv1[0], conv1[-1] + 1) == (50, 150)  # 100 mel frames per second
    assert (encoder[0], encoder[-1] + 1) == (cross_k[0], cross_k[-1] + 1) == (25, 75)  # 50 audio positions per second
    # Zeroing 0.5-1.5 s of the mel changes the encoder's input exactly there.
    hooks = patch_hooks(tiny_en, [Site("hook_mel", positions=frames(0.5, 1.5))], [0.0])
    with torch.no_grad():
        _, cache = tiny_en.run_with_cache(CLIP, [50257], names_filter=["hook_mel"])
        with tiny_en.hooks(fwd_hooks=hooks):
            _, patched = tiny_en.run_with_cache(CLIP, [50257], names_filter=["hook_mel"])
    changed = (patched["hook_mel"] != cache["hook_mel"]).any(dim=1)[0].nonzero().flatten()
    assert changed.min() >= 50 and changed.max() < 150
    with pytest.raises(ValueError, match="decoder tokens"):
        resolve(tiny_en, Site("decoder_blocks.0.hook_resid_post", positions=frames(0.5, 1.5)))
