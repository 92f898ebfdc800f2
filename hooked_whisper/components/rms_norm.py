"""RMSNorm, the language model's normalisation: no centring and no bias."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import nn

from hooked_whisper.hook_layout import hook_point


class RMSNorm(nn.Module):
    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.hook_scale = hook_point()  # [batch, pos, 1]
        self.hook_normalized = hook_point()  # [batch, pos, d_model]

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        if not self.hook_scale.has_hooks():
            return self.hook_normalized(F.rms_norm(x, self.w.shape, self.w, self.eps))
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale * self.w)
