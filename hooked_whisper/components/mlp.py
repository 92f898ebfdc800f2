"""The position-wise MLP: Linear -> exact (erf) GELU -> Linear."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import nn

from hooked_whisper.components.layout import LINEAR, keep_kernel_layouts
from hooked_whisper.config import HookedWhisperConfig
from hooked_whisper.hook_layout import hook_point


class MLP(nn.Module):
    def __init__(self, cfg: HookedWhisperConfig):
        super().__init__()
        assert cfg.d_mlp is not None
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        keep_kernel_layouts(self, {"W_in": LINEAR, "W_out": LINEAR})  # nn.Linear's [out, in]
        self.hook_pre = hook_point()  # [batch, pos, d_mlp]
        self.hook_post = hook_point()  # [batch, pos, d_mlp]

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        pre = self.hook_pre(torch.addmm(self.b_in, x.flatten(0, -2), self.W_in).view(*x.shape[:-1], -1))
        post = self.hook_post(F.gelu(pre))
        return torch.addmm(self.b_out, post.flatten(0, -2), self.W_out).view(x.shape)
