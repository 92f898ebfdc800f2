"""The one table behind every conversion: each Whisper tensor's Hugging Face name, openai-whisper
name, HookedWhisper name and the reshape between the Hugging Face layout and the per-head one.

Hugging Face is the hub format: openai and CTranslate2 checkpoints are first renamed to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from hooked_whisper.config import HookedWhisperConfig

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TensorSpec:
    hf: str  # without the "model." prefix
    openai: str
    hooked: str
    hf_shape: tuple[int, ...]
    to_hooked: Transform
    to_hf: Transform


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


# nn.Linear stores [out, in]; TransformerLens-style weights are [in, out], split per head. The
# model keeps them in nn.Linear's memory order (hooked_whisper/components/layout.py), so each is
# built as one copy of the checkpoint's tensor, viewed in the per-head shape: loading copies
# nothing more.
def linear_in(w: torch.Tensor) -> torch.Tensor:  # [out, in] -> [in, out]
    return w.clone(memory_format=torch.contiguous_format).T


def linear_out(w: torch.Tensor) -> torch.Tensor:
    return w.T.contiguous()


def heads_in_of(n: int, dh: int) -> Transform:
    """q/k/v projections: [n*dh, d] -> [n, d, dh]."""
    return lambda w: w.clone(memory_format=torch.contiguous_format).view(n, dh, -1).transpose(1, 2)


def heads_out_of(n: int, dh: int) -> Transform:
    return lambda w: w.transpose(1, 2).reshape(n * dh, -1).contiguous()


def output_in_of(n: int, dh: int) -> Transform:
    """The attention output projection: [d, n*dh] -> [n, dh, d]."""
    return lambda w: w.clone(memory_format=torch.contiguous_format).view(-1, n, dh).permute(1, 2, 0)


def output_out_of(n: int, dh: int) -> Transform:
    return lambda w: w.permute(2, 0, 1).reshape(-1, n * dh).contiguous()


def bias_in_of(n: int, dh: int) -> Transform:  # [n*dh] -> [n, dh]
    return lambda b: b.reshape(n, dh).contiguous()


def bias_out_of(n: int, dh: int) -> Transform:
    return lambda b: b.reshape(n * dh).contiguous()


def tensor_specs(cfg: HookedWhisperConfig) -> list[TensorSpec]:
    d, h, dh, m = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    assert m is not None
    qkv_in, qkv_out = heads_in_of(h, dh), heads_out_of(h, dh)
    o_in, o_out = output_in_of(h, dh), output_out_of(h, dh)
    heads_in, heads_out = bias_in_of(h, dh), bias_out_of(h, dh)

    def column_major(w: torch.Tensor) -> torch.Tensor:  # the embedding, so that W_E.T is contiguous
        return w.T.contiguous().T

    def row_major(w: torch.Tensor) -> torch.Tensor:
        return w.contiguous()

    specs: list[TensorSpec] = []

    def add(hf: str, openai: str, hooked: str, shape: tuple[int, ...], fwd: Transform = _same, back: Transform = _same):
        specs.append(TensorSpec(hf, openai, hooked, shape, fwd, back))

    def norm(hf: str, openai: str, hooked: str) -> None:
        add(f"{hf}.weight", f"{openai}.weight", f"{hooked}.w", (d,))
        add(f"{hf}.bias", f"{openai}.bias", f"{hooked}.b", (d,))

    def attention(hf: str, openai: str, hooked: str) -> None:
        add(f"{hf}.q_proj.weight", f"{openai}.query.weight", f"{hooked}.W_Q", (h * dh, d), qkv_in, qkv_out)
        add(f"{hf}.q_proj.bias", f"{openai}.query.bias", f"{hooked}.b_Q", (h * dh,), heads_in, heads_out)
        add(f"{hf}.k_proj.weight", f"{openai}.key.weight", f"{hooked}.W_K", (h * dh, d), qkv_in, qkv_out)
        add(f"{hf}.v_proj.weight", f"{openai}.value.weight", f"{hooked}.W_V", (h * dh, d), qkv_in, qkv_out)
        add(f"{hf}.v_proj.bias", f"{openai}.value.bias", f"{hooked}.b_V", (h * dh,), heads_in, heads_out)
        add(f"{hf}.out_proj.weight", f"{openai}.out.weight", f"{hooked}.W_O", (d, h * dh), o_in, o_out)
        add(f"{hf}.out_proj.bias", f"{openai}.out.bias", f"{hooked}.b_O", (d,))

    def mlp(hf: str, openai: str, hooked: str) -> None:
        add(f"{hf}.fc1.weight", f"{openai}.mlp.0.weight", f"{hooked}.W_in", (m, d), linear_in, linear_out)
        add(f"{hf}.fc1.bias", f"{openai}.mlp.0.bias", f"{hooked}.b_in", (m,))
        add(f"{hf}.fc2.weight", f"{openai}.mlp.2.weight", f"{hooked}.W_out", (d, m), linear_in, linear_out)
        add(f"{hf}.fc2.bias", f"{openai}.mlp.2.bias", f"{hooked}.b_out", (d,))

    add("encoder.conv1.weight", "encoder.conv1.weight", "encoder_embed.W_conv1", (d, cfg.n_mels, 3))
    add("encoder.conv1.bias", "encoder.conv1.bias", "encoder_embed.b_conv1", (d,))
    add("encoder.conv2.weight", "encoder.conv2.weight", "encoder_embed.W_conv2", (d, d, 3))
    add("encoder.conv2.bias", "encoder.conv2.bias", "encoder_embed.b_conv2", (d,))
    add("encoder.embed_positions.weight", "encoder.positional_embedding", "encoder_embed.W_pos", (cfg.n_audio_ctx, d))
    for i in range(cfg.n_encoder_layers):
        hf, oa, hk = f"encoder.layers.{i}", f"encoder.blocks.{i}", f"encoder_blocks.{i}"
        norm(f"{hf}.self_attn_layer_norm", f"{oa}.attn_ln", f"{hk}.ln1")
        attention(f"{hf}.self_attn", f"{oa}.attn", f"{hk}.attn")
        norm(f"{hf}.final_layer_norm", f"{oa}.mlp_ln", f"{hk}.ln2")
        mlp(hf, oa, f"{hk}.mlp")
    norm("encoder.layer_norm", "encoder.ln_post", "encoder_ln_final")

    add(
        "decoder.embed_tokens.weight",
        "decoder.token_embedding.weight",
        "embed.W_E",
        (cfg.d_vocab, d),
        column_major,
        row_major,
    )
    add("decoder.embed_positions.weight", "decoder.positional_embedding", "pos_embed.W_pos", (cfg.n_text_ctx, d))
    for i in range(cfg.n_decoder_layers):
        hf, oa, hk = f"decoder.layers.{i}", f"decoder.blocks.{i}", f"decoder_blocks.{i}"
        norm(f"{hf}.self_attn_layer_norm", f"{oa}.attn_ln", f"{hk}.ln1")
        attention(f"{hf}.self_attn", f"{oa}.attn", f"{hk}.attn")
        norm(f"{hf}.encoder_attn_layer_norm", f"{oa}.cross_attn_ln", f"{hk}.ln2")
        attention(f"{hf}.encoder_attn", f"{oa}.cross_attn", f"{hk}.cross_attn")
        norm(f"{hf}.final_layer_norm", f"{oa}.mlp_ln", f"{hk}.ln3")
        mlp(hf, oa, f"{hk}.mlp")
    norm("decoder.layer_norm", "decoder.ln", "decoder_ln_final")
    return specs
