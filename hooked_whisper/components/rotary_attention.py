"""Causal self-attention with rotary positions and grouped keys and values (fewer key/value
heads than query heads), as in Qwen2. Weights per head, TransformerLens' names: ``W_Q[n_heads,
d_model, d_head]``; keys and values are stored once per group as ``_W_K``/``_W_V[n_key_value_heads,
...]`` and shown repeated per query head as ``W_K``/``W_V``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import nn

from hooked_whisper.components.attention import KeyValue, project
from hooked_whisper.components.layout import HEADS_IN, HEADS_OUT, keep_kernel_layouts
from hooked_whisper.config import HookedQwen2AudioConfig
from hooked_whisper.hook_layout import hook_point


def rotary_frequencies(cfg: HookedQwen2AudioConfig, length: int, device: torch.device) -> torch.Tensor:
    """The ``d_head / 2`` rotary frequencies ``theta ** (-2i / d_head)`` (float32) of a call whose tokens end at
    absolute position ``length``, scaled as ``cfg.rope_type`` says: "linear" divides them by the
    factor; "dynamic" raises the base by ``(factor * length / n_ctx - (factor - 1)) ** (d / (d - 2))``
    once ``length`` passes ``n_ctx``, each call from its own length (keys already cached keep the
    rotation they were computed with, as in transformers)."""
    d_head, theta = cfg.d_head, cfg.rope_theta
    assert d_head is not None
    if cfg.rope_type == "dynamic" and length > cfg.n_ctx:
        factor = cfg.rope_factor
        theta = theta * ((factor * length / cfg.n_ctx) - (factor - 1)) ** (d_head / (d_head - 2))
    inv_freq = 1.0 / theta ** (torch.arange(0, d_head, 2, dtype=torch.float32, device=device) / d_head)
    return inv_freq / cfg.rope_factor if cfg.rope_type == "linear" else inv_freq


def rotary_tables(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[Float[torch.Tensor, "pos d_head"], Float[torch.Tensor, "pos d_head"]]:
    """cos and sin of each position times the rotary frequencies (``rotary_frequencies``), each
    frequency written twice (first half, second half), computed in float32."""
    angles = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: Float[torch.Tensor, "batch pos head d_head"], cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (i, i + d_head/2) of every head by its position's angle."""
    first, second = x.chunk(2, dim=-1)
    turned = torch.cat([-second, first], dim=-1)
    return x * cos[:, None, :] + turned * sin[:, None, :]


class RotaryAttention(nn.Module):
    def __init__(self, cfg: HookedQwen2AudioConfig):
        super().__init__()
        d_model, n_heads, n_key_value_heads, d_head = cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head
        assert d_head is not None
        if n_heads % n_key_value_heads:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_key_value_heads ({n_key_value_heads})")
        self.n_heads, self.n_key_value_heads = n_heads, n_key_value_heads
        self.W_Q = nn.Parameter(torch.empty(n_heads, d_model, d_head))
        self.b_Q = nn.Parameter(torch.zeros(n_heads, d_head))
        self._W_K = nn.Parameter(torch.empty(n_key_value_heads, d_model, d_head))
        self._b_K = nn.Parameter(torch.zeros(n_key_value_heads, d_head))
        self._W_V = nn.Parameter(torch.empty(n_key_value_heads, d_model, d_head))
        self._b_V = nn.Parameter(torch.zeros(n_key_value_heads, d_head))
        self.W_O = nn.Parameter(torch.empty(n_heads, d_head, d_model))
        self.scale = d_head**-0.5

        self.hook_q = hook_point(head_axis=2)  # [batch, pos, head, d_head], before rotation
        self.hook_k = hook_point(unit="keys", head_axis=2)  # [batch, pos, kv_head, d_head], before rotation
        self.hook_v = hook_point(unit="keys", head_axis=2)  # [batch, pos, kv_head, d_head]
        self.hook_rot_q = hook_point(head_axis=2)  # [batch, pos, head, d_head]
        self.hook_rot_k = hook_point(unit="keys", head_axis=2)  # [batch, pos, kv_head, d_head]
        self.hook_attn_scores = hook_point(
            pos_axis=2, head_axis=1, key_unit="keys"
        )  # [batch, head, query_pos, key_pos]
        self.hook_pattern = hook_point(pos_axis=2, head_axis=1, key_unit="keys")  # [batch, head, query_pos, key_pos]
        self.hook_z = hook_point(head_axis=2)  # [batch, pos, head, d_head]
        keep_kernel_layouts(self, {"W_Q": HEADS_IN, "_W_K": HEADS_IN, "_W_V": HEADS_IN, "W_O": HEADS_OUT})

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_key_value_heads

    @property
    def W_K(self) -> Float[torch.Tensor, "head d_model d_head"]:
        return self._W_K.repeat_interleave(self.group_size, dim=0)

    @property
    def W_V(self) -> Float[torch.Tensor, "head d_model d_head"]:
        return self._W_V.repeat_interleave(self.group_size, dim=0)

    def forward(
        self,
        x: Float[torch.Tensor, "batch pos d_model"] | Float[torch.Tensor, "batch pos head d_model"],
        cos: torch.Tensor,
        sin: torch.Tensor,
        past_kv: KeyValue | None = None,
        key_input: Float[torch.Tensor, "batch pos kv_head d_model"] | None = None,
        value_input: Float[torch.Tensor, "batch pos kv_head d_model"] | None = None,
    ) -> tuple[Float[torch.Tensor, "batch pos d_model"], KeyValue]:
        """Attend causally; ``past_kv`` holds the rotated keys and values of earlier positions
        (generation), and the full (keys, values) come back for the next step. Keys and values
        read ``x`` unless per-group inputs are given (``use_split_qkv_input``)."""
        key_input = x if key_input is None else key_input
        value_input = x if value_input is None else value_input
        q = self.hook_rot_q(rotate(self.hook_q(project(x, self.W_Q, self.b_Q)), cos, sin))
        k = self.hook_rot_k(rotate(self.hook_k(project(key_input, self._W_K, self._b_K)), cos, sin))
        v = self.hook_v(project(value_input, self._W_V, self._b_V))
        if past_kv is not None:
            k, v = torch.cat([past_kv[0], k], dim=1), torch.cat([past_kv[1], v], dim=1)
        q_len, k_len = q.shape[1], k.shape[1]
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len) if q_len > 1 else None
        q_heads = q.transpose(1, 2)
        k_heads = k.repeat_interleave(self.group_size, dim=2).transpose(1, 2)
        v_heads = v.repeat_interleave(self.group_size, dim=2).transpose(1, 2)
        if self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks():
            scores = (q_heads @ k_heads.transpose(-1, -2)) * self.scale
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            z = self.hook_pattern(self.hook_attn_scores(scores).softmax(dim=-1)) @ v_heads
        else:
            z = F.scaled_dot_product_attention(q_heads, k_heads, v_heads, attn_mask=mask, scale=self.scale)
        z = self.hook_z(z.transpose(1, 2))
        out = z.flatten(2) @ self.W_O.flatten(0, 1)
        return out, (k, v)
