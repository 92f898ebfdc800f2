"""Encoder and decoder blocks: pre-norm residual blocks with hooks between every step (Whisper's
encoder and decoder, and the decoder-only language model of an audio LLM)."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import nn

from hooked_whisper.components.attention import Attention, KeyValue
from hooked_whisper.components.gated_mlp import GatedMLP
from hooked_whisper.components.layer_norm import LayerNorm
from hooked_whisper.components.mlp import MLP
from hooked_whisper.components.rms_norm import RMSNorm
from hooked_whisper.components.rotary_attention import RotaryAttention
from hooked_whisper.config import HookedQwen2AudioConfig, HookedWhisperConfig
from hooked_whisper.hook_layout import Stream, hook_point


def per_head(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[batch, pos, d_model] -> [batch, pos, head, d_model]: one copy of the input per head."""
    return x.unsqueeze(-2).expand(-1, -1, n_heads, -1)


def self_attention_inputs(block: EncoderBlock | DecoderBlock, resid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The normalised query, key and value inputs of a block's self-attention. With
    ``use_split_qkv_input`` each head reads its own copy, so a patch can reach one head's q, k
    or v alone."""
    if block.cfg.use_split_qkv_input:
        x = per_head(resid, block.cfg.n_heads)
        return tuple(block.ln1(hook(x)) for hook in (block.hook_q_input, block.hook_k_input, block.hook_v_input))
    normalized = block.ln1(resid)
    return normalized, normalized, normalized


class PreNormBlock(nn.Module):
    """Two pre-norm residual sub-layers, attention (``ln1``, ``attn``) then MLP (``ln2``,
    ``mlp``), with a hook on the stream and on each write. Subclasses build those four modules
    and say how their attention is called (``attend``)."""

    def __init__(self) -> None:
        super().__init__()
        self.hook_resid_pre = hook_point(writes_residual=True)  # [batch, pos, d_model]
        self.hook_q_input = hook_point(head_axis=2)  # [batch, pos, head, d_model]; cfg.use_split_qkv_input
        self.hook_k_input = hook_point(head_axis=2)  # [batch, pos, head (key/value group), d_model]
        self.hook_v_input = hook_point(head_axis=2)  # [batch, pos, head (key/value group), d_model]
        self.hook_attn_out = hook_point(writes_residual=True)  # [batch, pos, d_model]
        self.hook_resid_mid = hook_point(writes_residual=True)  # [batch, pos, d_model]
        self.hook_mlp_out = hook_point(writes_residual=True)  # [batch, pos, d_model]
        self.hook_resid_post = hook_point(writes_residual=True)  # [batch, pos, d_model]

    def attend(self, resid: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, KeyValue]:
        raise NotImplementedError

    def forward(
        self, resid: Float[torch.Tensor, "batch pos d_model"], *args: Any, **kwargs: Any
    ) -> tuple[Float[torch.Tensor, "batch pos d_model"], KeyValue]:
        resid = self.hook_resid_pre(resid)
        attn_out, kv = self.attend(resid, *args, **kwargs)
        resid = self.hook_resid_mid(resid + self.hook_attn_out(attn_out))
        resid = self.hook_resid_post(resid + self.hook_mlp_out(self.mlp(self.ln2(resid))))
        return resid, kv


class EncoderBlock(PreNormBlock):
    def __init__(self, cfg: HookedWhisperConfig):
        super().__init__()
        self.cfg = cfg
        self.ln1 = LayerNorm(cfg)
        self.attn = Attention(cfg)
        self.ln2 = LayerNorm(cfg)
        self.mlp = MLP(cfg)

    def attend(
        self, resid: torch.Tensor, key_mask: Bool[torch.Tensor, "batch pos"] | None = None
    ) -> tuple[torch.Tensor, KeyValue]:
        """Self-attention over every position; ``key_mask`` (True = audio) hides padding."""
        return self.attn(*self_attention_inputs(self, resid), key_mask=key_mask)


class DecoderBlock(nn.Module):
    """Causal self-attention (ln1), cross-attention to the encoder output (ln2), MLP (ln3)."""

    def __init__(self, cfg: HookedWhisperConfig):
        super().__init__()
        self.cfg = cfg
        self.ln1 = LayerNorm(cfg)
        self.attn = Attention(cfg, causal=True)
        self.ln2 = LayerNorm(cfg)
        self.cross_attn = Stream(keys="audio_position").holds(Attention(cfg))  # its keys are the audio
        self.ln3 = LayerNorm(cfg)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = hook_point(writes_residual=True)  # [batch, pos, d_model]
        self.hook_q_input = hook_point(head_axis=2)  # [batch, pos, head, d_model]; cfg.use_split_qkv_input
        self.hook_k_input = hook_point(head_axis=2)  # [batch, pos, head, d_model]
        self.hook_v_input = hook_point(head_axis=2)  # [batch, pos, head, d_model]
        self.hook_attn_out = hook_point(writes_residual=True)  # [batch, pos, d_model]
        self.hook_resid_mid = hook_point(writes_residual=True)  # [batch, pos, d_model]
        self.hook_cross_q_input = hook_point(head_axis=2)  # [batch, pos, head, d_model]; cfg.use_cross_kv_input
        self.hook_cross_k_input = hook_point(unit="audio_position", head_axis=2)  # [batch, audio_pos, head, d_model]
        self.hook_cross_v_input = hook_point(unit="audio_position", head_axis=2)  # [batch, audio_pos, head, d_model]
        self.hook_cross_attn_out = hook_point(writes_residual=True)  # [batch, pos, d_model]
        self.hook_resid_mid_cross = hook_point(writes_residual=True)  # [batch, pos, d_model]
        self.hook_mlp_out = hook_point(writes_residual=True)  # [batch, pos, d_model]
        self.hook_resid_post = hook_point(writes_residual=True)  # [batch, pos, d_model]

    def cross_kv(self, encoder_out: Float[torch.Tensor, "batch audio_pos d_model"]) -> KeyValue:
        """Cross-attention keys and values: computed once per audio, reused at every step."""
        if self.cfg.use_cross_kv_input:
            x = per_head(encoder_out, self.cfg.n_heads)
            return self.cross_attn.compute_kv(self.hook_cross_k_input(x), self.hook_cross_v_input(x))
        return self.cross_attn.compute_kv(encoder_out, encoder_out)

    def forward(
        self,
        resid: Float[torch.Tensor, "batch pos d_model"],
        cross_kv: KeyValue,
        past_kv: KeyValue | None = None,
        self_mask: Bool[torch.Tensor, "batch pos key_pos"] | None = None,
    ) -> tuple[Float[torch.Tensor, "batch pos d_model"], KeyValue]:
        """``self_mask`` hides left padding from self-attention (``DecoderCache.pad``)."""
        resid = self.hook_resid_pre(resid)
        attn_out, self_kv = self.attn(*self_attention_inputs(self, resid), past_kv=past_kv, key_mask=self_mask)
        resid = self.hook_resid_mid(resid + self.hook_attn_out(attn_out))

        cross_q_in = (
            self.hook_cross_q_input(per_head(resid, self.cfg.n_heads)) if self.cfg.use_cross_kv_input else resid
        )
        cross_out, _ = self.cross_attn(self.ln2(cross_q_in), kv=cross_kv)
        resid = self.hook_resid_mid_cross(resid + self.hook_cross_attn_out(cross_out))

        resid = self.hook_resid_post(resid + self.hook_mlp_out(self.mlp(self.ln3(resid))))
        return resid, self_kv


class LanguageModelBlock(PreNormBlock):
    """A decoder-only block (Qwen2): RMSNorm, rotary self-attention, RMSNorm, gated MLP. Audio
    reaches it as embeddings at the audio-token positions, not through cross-attention."""

    def __init__(self, cfg: HookedQwen2AudioConfig):
        super().__init__()
        self.cfg = cfg
        self.ln1 = RMSNorm(cfg.d_model, cfg.eps)
        self.attn = RotaryAttention(cfg)
        self.ln2 = RMSNorm(cfg.d_model, cfg.eps)
        self.mlp = GatedMLP(cfg.d_model, cfg.d_mlp)

    def attend(
        self, resid: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, past_kv: KeyValue | None = None
    ) -> tuple[torch.Tensor, KeyValue]:
        """Causal rotary self-attention; with ``use_split_qkv_input`` each query head and each
        key/value group reads its own copy of the stream."""
        if not self.cfg.use_split_qkv_input:
            return self.attn(self.ln1(resid), cos, sin, past_kv)
        q_in = self.ln1(self.hook_q_input(per_head(resid, self.cfg.n_heads)))
        kv_copies = per_head(resid, self.cfg.n_key_value_heads)
        k_in, v_in = self.ln1(self.hook_k_input(kv_copies)), self.ln1(self.hook_v_input(kv_copies))
        return self.attn(q_in, cos, sin, past_kv, k_in, v_in)
