"""Pre-LayerNorm with the scale exposed, as TransformerLens does for direct logit attribution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import nn

from hooked_whisper.config import HookedWhisperConfig
from hooked_whisper.hook_layout import hook_point


class LayerNorm(nn.Module):
    def __init__(self, cfg: HookedWhisperConfig):
        super().__init__()
        self.eps = cfg.layer_norm_eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_scale = hook_point()  # [batch, pos, 1]
        self.hook_normalized = hook_point()  # [batch, pos, d_model]

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        if not self.hook_scale.has_hooks():
            # Nobody reads or edits the scale: the fused kernel computes the same function.
            return self.hook_normalized(F.layer_norm(x, self.w.shape, self.w, self.b, self.eps))
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale * self.w + self.b)
