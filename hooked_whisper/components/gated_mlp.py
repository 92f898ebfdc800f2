"""The language model's gated MLP (SwiGLU): ``W_out(silu(x W_gate) * (x W_in))``, no biases."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import nn

from hooked_whisper.components.layout import LINEAR, keep_kernel_layouts
from hooked_whisper.hook_layout import hook_point


class GatedMLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.W_gate = nn.Parameter(torch.empty(d_model, d_mlp))
        self.W_in = nn.Parameter(torch.empty(d_model, d_mlp))
        self.W_out = nn.Parameter(torch.empty(d_mlp, d_model))
        keep_kernel_layouts(self, {"W_gate": LINEAR, "W_in": LINEAR, "W_out": LINEAR})  # nn.Linear's [out, in]
        self.hook_pre = hook_point()  # [batch, pos, d_mlp], the gate before its activation
        self.hook_pre_linear = hook_point()  # [batch, pos, d_mlp], the linear branch
        self.hook_post = hook_point()  # [batch, pos, d_mlp], silu(gate) * linear

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        gate = self.hook_pre(x @ self.W_gate)
        post = self.hook_post(F.silu(gate) * self.hook_pre_linear(x @ self.W_in))
        return post @ self.W_out
