"""Random-init Hugging Face references for the parity tests."""

from __future__ import annotations

import torch

from hooked_whisper import HookedWhisper, HookedWhisperConfig
from weights_conversion import convert_state_dict


def hf_random_pair(seed: int = 0, **kwargs) -> tuple[torch.nn.Module, HookedWhisper]:
    """A random-init Hugging Face Whisper (eager attention) and the HookedWhisper converted from it."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    d_model = kwargs.pop("d_model", 128)
    hf_cfg = WhisperConfig(d_model=d_model, encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model, **kwargs)
    hf = WhisperForConditionalGeneration(hf_cfg).eval()
    hf.config._attn_implementation = "eager"
    # Random init leaves biases at zero and LayerNorms at identity; perturb them so every
    # parameter takes part in the comparison.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    cfg = HookedWhisperConfig.from_hf_config(hf_cfg.to_dict())
    model = HookedWhisper(cfg)
    model.load_state_dict(convert_state_dict(hf.state_dict(), cfg, "hf", "hooked"))
    return hf, model.eval()
