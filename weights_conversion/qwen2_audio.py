"""Qwen2-Audio checkpoints (Hugging Face) to and from HookedQwen2Audio: the audio tower reuses
Whisper's encoder table, the projector and the Qwen2 language model have their own rows."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from hooked_whisper.config import HookedQwen2AudioConfig
from weights_conversion.convert import CheckpointError, Naming, check_finite, convert_with_specs, read_json
from weights_conversion.keys import (
    TensorSpec,
    bias_in_of,
    bias_out_of,
    heads_in_of,
    heads_out_of,
    linear_in,
    linear_out,
    output_in_of,
    output_out_of,
    tensor_specs,
)

# Released checkpoints name the parts as transformers 4 did; transformers 5 nests them under
# "model.". Both are read; the newer names are written.
_KEY_RENAMES = [
    (r"^audio_tower\.", "model.audio_tower."),
    (r"^multi_modal_projector\.", "model.multi_modal_projector."),
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
]


def _modern_key(key: str) -> str:
    for pattern, repl in _KEY_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def qwen2_audio_specs(cfg: HookedQwen2AudioConfig) -> list[TensorSpec]:
    """Every tensor's Hugging Face name, hooked name and reshape."""
    d, h, kv, dh, m = cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head, cfg.d_mlp
    assert dh is not None
    specs = [
        TensorSpec(f"model.audio_tower.{s.hf.removeprefix('encoder.')}", "", s.hooked, s.hf_shape, s.to_hooked, s.to_hf)
        for s in tensor_specs(cfg.audio)
        if s.hf.startswith("encoder.")
    ]

    def same(t: torch.Tensor) -> torch.Tensor:
        return t

    def add(hf: str, hooked: str, shape: tuple[int, ...], fwd=same, back=same) -> None:
        specs.append(TensorSpec(hf, "", hooked, shape, fwd, back))

    a = cfg.audio.d_model
    add("model.multi_modal_projector.linear.weight", "W_audio_proj", (d, a), linear_in, linear_out)
    add("model.multi_modal_projector.linear.bias", "b_audio_proj", (d,))
    add("model.language_model.embed_tokens.weight", "embed.W_E", (cfg.d_vocab, d))
    for i in range(cfg.n_layers):
        hf, hk = f"model.language_model.layers.{i}", f"blocks.{i}"
        add(f"{hf}.input_layernorm.weight", f"{hk}.ln1.w", (d,))
        for proj, name, n in [("q_proj", "W_Q", h), ("k_proj", "_W_K", kv), ("v_proj", "_W_V", kv)]:
            add(
                f"{hf}.self_attn.{proj}.weight",
                f"{hk}.attn.{name}",
                (n * dh, d),
                heads_in_of(n, dh),
                heads_out_of(n, dh),
            )
            bias = name.replace("W", "b")
            add(f"{hf}.self_attn.{proj}.bias", f"{hk}.attn.{bias}", (n * dh,), bias_in_of(n, dh), bias_out_of(n, dh))
        add(
            f"{hf}.self_attn.o_proj.weight",
            f"{hk}.attn.W_O",
            (d, h * dh),
            output_in_of(h, dh),
            output_out_of(h, dh),
        )
        add(f"{hf}.post_attention_layernorm.weight", f"{hk}.ln2.w", (d,))
        add(f"{hf}.mlp.gate_proj.weight", f"{hk}.mlp.W_gate", (m, d), linear_in, linear_out)
        add(f"{hf}.mlp.up_proj.weight", f"{hk}.mlp.W_in", (m, d), linear_in, linear_out)
        add(f"{hf}.mlp.down_proj.weight", f"{hk}.mlp.W_out", (d, m), linear_in, linear_out)
    add("model.language_model.norm.weight", "ln_final.w", (d,))
    add("lm_head.weight", "unembed.W_U", (cfg.d_vocab, d), linear_in, linear_out)
    return specs


def convert_qwen2_audio_state_dict(
    state_dict: dict[str, torch.Tensor],
    cfg: HookedQwen2AudioConfig,
    src: Naming,
    dst: Naming,
    source: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Between Hugging Face names (either generation of them) and hooked names; every missing and
    unexpected key is listed."""
    sd = {_modern_key(k): v for k, v in state_dict.items()} if src == "hf" else dict(state_dict)
    shape = (
        f"a Qwen2-Audio of this shape (audio {cfg.audio.d_model} wide x {cfg.audio.n_encoder_layers} layers, "
        f"language model {cfg.d_model} wide x {cfg.n_layers} layers, {cfg.n_heads}/{cfg.n_key_value_heads} heads)"
    )
    return convert_with_specs(sd, qwen2_audio_specs(cfg), src, dst, source, shape, consume=False)


def load_qwen2_audio_folder(folder: Path) -> tuple[HookedQwen2AudioConfig, dict[str, torch.Tensor], Path | None]:
    """Config, hooked state dict and tokenizer file (if any) of a Hugging Face Qwen2-Audio folder
    (one safetensors file or shards with their index)."""
    from safetensors.torch import load_file

    raw = read_json(folder / "config.json")
    if "audio_config" not in raw or "text_config" not in raw:
        kind = raw.get("model_type", "unknown")
        hint = " (a Whisper checkpoint: load it with HookedWhisper.from_pretrained)" if kind == "whisper" else ""
        raise CheckpointError(
            f"{folder} is not a Qwen2-Audio checkpoint: its config.json (model_type {kind!r}) has no "
            f"audio_config and text_config{hint}"
        )
    cfg = HookedQwen2AudioConfig.from_hf_config(raw)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder} has no .safetensors weights (pickled .bin files are not read: convert them)")
    state_dict: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state_dict.update(load_file(str(f)))
        except Exception as err:
            raise CheckpointError(f"could not read {f}: {err}") from err
    check_finite(state_dict, str(folder))
    tokenizer = folder / "tokenizer.json"
    return (
        cfg,
        convert_qwen2_audio_state_dict(state_dict, cfg, "hf", "hooked", str(folder)),
        (tokenizer if tokenizer.is_file() else None),
    )
