"""Every hook's layout on both families, against a table written out by hand from the shape
comments: the layouts are built from the module tree (each hook point's declared axes, the
stream its module is placed on, the block it sits in), so a wrong declaration or placement
shows here as a row that differs. ``{l}`` stands for every layer of the stack."""

from __future__ import annotations

import pytest
from torch import nn

from hooked_whisper import HookedQwen2Audio, HookedWhisperConfig
from hooked_whisper.config import HookedQwen2AudioConfig
from hooked_whisper.hook_layout import TEXT_STREAM, HookLayout, hook_layouts_of, hook_point, writes_residual
from tests.support import random_whisper

# name: (stack, pos_axis, unit[, head_axis[, key_unit]])
WHISPER = {
    "hook_mel": ("audio", 2, "mel_frame"),
    "encoder_embed.hook_conv1": ("audio", 1, "mel_frame"),
    "encoder_embed.hook_conv2": ("audio", 1, "audio_position"),
    "encoder_embed.hook_pos_embed": ("audio", 1, "audio_position"),
    "encoder_blocks.{l}.hook_resid_pre": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.hook_q_input": ("encoder", 1, "audio_position", 2),
    "encoder_blocks.{l}.hook_k_input": ("encoder", 1, "audio_position", 2),
    "encoder_blocks.{l}.hook_v_input": ("encoder", 1, "audio_position", 2),
    "encoder_blocks.{l}.hook_attn_out": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.hook_resid_mid": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.hook_mlp_out": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.hook_resid_post": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.ln1.hook_scale": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.ln1.hook_normalized": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.attn.hook_q": ("encoder", 1, "audio_position", 2),
    "encoder_blocks.{l}.attn.hook_k": ("encoder", 1, "audio_position", 2),
    "encoder_blocks.{l}.attn.hook_v": ("encoder", 1, "audio_position", 2),
    "encoder_blocks.{l}.attn.hook_attn_scores": ("encoder", 2, "audio_position", 1, "audio_position"),
    "encoder_blocks.{l}.attn.hook_pattern": ("encoder", 2, "audio_position", 1, "audio_position"),
    "encoder_blocks.{l}.attn.hook_z": ("encoder", 1, "audio_position", 2),
    "encoder_blocks.{l}.attn.hook_result": ("encoder", 1, "audio_position", 2),
    "encoder_blocks.{l}.ln2.hook_scale": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.ln2.hook_normalized": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.mlp.hook_pre": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.mlp.hook_post": ("encoder", 1, "audio_position"),
    "encoder_ln_final.hook_scale": ("encoder", 1, "audio_position"),
    "encoder_ln_final.hook_normalized": ("encoder", 1, "audio_position"),
    "hook_encoder_out": ("encoder", 1, "audio_position"),
    "hook_tokens": ("decoder", 1, "token"),
    "hook_embed": ("decoder", 1, "token"),
    "hook_pos_embed": ("decoder", 1, "token"),
    "decoder_blocks.{l}.ln1.hook_scale": ("decoder", 1, "token"),
    "decoder_blocks.{l}.ln1.hook_normalized": ("decoder", 1, "token"),
    "decoder_blocks.{l}.attn.hook_q": ("decoder", 1, "token", 2),
    "decoder_blocks.{l}.attn.hook_k": ("decoder", 1, "token", 2),
    "decoder_blocks.{l}.attn.hook_v": ("decoder", 1, "token", 2),
    "decoder_blocks.{l}.attn.hook_attn_scores": ("decoder", 2, "token", 1, "token"),
    "decoder_blocks.{l}.attn.hook_pattern": ("decoder", 2, "token", 1, "token"),
    "decoder_blocks.{l}.attn.hook_z": ("decoder", 1, "token", 2),
    "decoder_blocks.{l}.attn.hook_result": ("decoder", 1, "token", 2),
    "decoder_blocks.{l}.ln2.hook_scale": ("decoder", 1, "token"),
    "decoder_blocks.{l}.ln2.hook_normalized": ("decoder", 1, "token"),
    "decoder_blocks.{l}.cross_attn.hook_q": ("decoder", 1, "token", 2),
    "decoder_blocks.{l}.cross_attn.hook_k": ("decoder", 1, "audio_position", 2),
    "decoder_blocks.{l}.cross_attn.hook_v": ("decoder", 1, "audio_position", 2),
    "decoder_blocks.{l}.cross_attn.hook_attn_scores": ("decoder", 2, "token", 1, "audio_position"),
    "decoder_blocks.{l}.cross_attn.hook_pattern": ("decoder", 2, "token", 1, "audio_position"),
    "decoder_blocks.{l}.cross_attn.hook_z": ("decoder", 1, "token", 2),
    "decoder_blocks.{l}.cross_attn.hook_result": ("decoder", 1, "token", 2),
    "decoder_blocks.{l}.ln3.hook_scale": ("decoder", 1, "token"),
    "decoder_blocks.{l}.ln3.hook_normalized": ("decoder", 1, "token"),
    "decoder_blocks.{l}.mlp.hook_pre": ("decoder", 1, "token"),
    "decoder_blocks.{l}.mlp.hook_post": ("decoder", 1, "token"),
    "decoder_blocks.{l}.hook_resid_pre": ("decoder", 1, "token"),
    "decoder_blocks.{l}.hook_q_input": ("decoder", 1, "token", 2),
    "decoder_blocks.{l}.hook_k_input": ("decoder", 1, "token", 2),
    "decoder_blocks.{l}.hook_v_input": ("decoder", 1, "token", 2),
    "decoder_blocks.{l}.hook_attn_out": ("decoder", 1, "token"),
    "decoder_blocks.{l}.hook_resid_mid": ("decoder", 1, "token"),
    "decoder_blocks.{l}.hook_cross_q_input": ("decoder", 1, "token", 2),
    "decoder_blocks.{l}.hook_cross_k_input": ("decoder", 1, "audio_position", 2),
    "decoder_blocks.{l}.hook_cross_v_input": ("decoder", 1, "audio_position", 2),
    "decoder_blocks.{l}.hook_cross_attn_out": ("decoder", 1, "token"),
    "decoder_blocks.{l}.hook_resid_mid_cross": ("decoder", 1, "token"),
    "decoder_blocks.{l}.hook_mlp_out": ("decoder", 1, "token"),
    "decoder_blocks.{l}.hook_resid_post": ("decoder", 1, "token"),
    "decoder_ln_final.hook_scale": ("decoder", 1, "token"),
    "decoder_ln_final.hook_normalized": ("decoder", 1, "token"),
}

QWEN2_AUDIO = {
    "hook_mel": ("audio", 2, "mel_frame"),
    "encoder_embed.hook_conv1": ("audio", 1, "mel_frame"),
    "encoder_embed.hook_conv2": ("audio", 1, "audio_position"),
    "encoder_embed.hook_pos_embed": ("audio", 1, "audio_position"),
    "encoder_blocks.{l}.hook_resid_pre": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.hook_q_input": ("encoder", 1, "audio_position", 2),
    "encoder_blocks.{l}.hook_k_input": ("encoder", 1, "audio_position", 2),
    "encoder_blocks.{l}.hook_v_input": ("encoder", 1, "audio_position", 2),
    "encoder_blocks.{l}.hook_attn_out": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.hook_resid_mid": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.hook_mlp_out": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.hook_resid_post": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.ln1.hook_scale": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.ln1.hook_normalized": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.attn.hook_q": ("encoder", 1, "audio_position", 2),
    "encoder_blocks.{l}.attn.hook_k": ("encoder", 1, "audio_position", 2),
    "encoder_blocks.{l}.attn.hook_v": ("encoder", 1, "audio_position", 2),
    "encoder_blocks.{l}.attn.hook_attn_scores": ("encoder", 2, "audio_position", 1, "audio_position"),
    "encoder_blocks.{l}.attn.hook_pattern": ("encoder", 2, "audio_position", 1, "audio_position"),
    "encoder_blocks.{l}.attn.hook_z": ("encoder", 1, "audio_position", 2),
    "encoder_blocks.{l}.attn.hook_result": ("encoder", 1, "audio_position", 2),
    "encoder_blocks.{l}.ln2.hook_scale": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.ln2.hook_normalized": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.mlp.hook_pre": ("encoder", 1, "audio_position"),
    "encoder_blocks.{l}.mlp.hook_post": ("encoder", 1, "audio_position"),
    "hook_pooled": ("encoder", 1, "audio_token"),
    "encoder_ln_final.hook_scale": ("encoder", 1, "audio_token"),
    "encoder_ln_final.hook_normalized": ("encoder", 1, "audio_token"),
    "hook_encoder_out": ("encoder", 1, "audio_token"),
    "hook_audio_embeds": ("encoder", 1, "audio_token"),
    "hook_tokens": ("decoder", 1, "token"),
    "hook_embed": ("decoder", 1, "token"),
    "blocks.{l}.hook_resid_pre": ("decoder", 1, "token"),
    "blocks.{l}.hook_q_input": ("decoder", 1, "token", 2),
    "blocks.{l}.hook_k_input": ("decoder", 1, "token", 2),
    "blocks.{l}.hook_v_input": ("decoder", 1, "token", 2),
    "blocks.{l}.hook_attn_out": ("decoder", 1, "token"),
    "blocks.{l}.hook_resid_mid": ("decoder", 1, "token"),
    "blocks.{l}.hook_mlp_out": ("decoder", 1, "token"),
    "blocks.{l}.hook_resid_post": ("decoder", 1, "token"),
    "blocks.{l}.ln1.hook_scale": ("decoder", 1, "token"),
    "blocks.{l}.ln1.hook_normalized": ("decoder", 1, "token"),
    "blocks.{l}.attn.hook_q": ("decoder", 1, "token", 2),
    "blocks.{l}.attn.hook_k": ("decoder", 1, "token", 2),
    "blocks.{l}.attn.hook_v": ("decoder", 1, "token", 2),
    "blocks.{l}.attn.hook_rot_q": ("decoder", 1, "token", 2),
    "blocks.{l}.attn.hook_rot_k": ("decoder", 1, "token", 2),
    "blocks.{l}.attn.hook_attn_scores": ("decoder", 2, "token", 1, "token"),
    "blocks.{l}.attn.hook_pattern": ("decoder", 2, "token", 1, "token"),
    "blocks.{l}.attn.hook_z": ("decoder", 1, "token", 2),
    "blocks.{l}.ln2.hook_scale": ("decoder", 1, "token"),
    "blocks.{l}.ln2.hook_normalized": ("decoder", 1, "token"),
    "blocks.{l}.mlp.hook_pre": ("decoder", 1, "token"),
    "blocks.{l}.mlp.hook_pre_linear": ("decoder", 1, "token"),
    "blocks.{l}.mlp.hook_post": ("decoder", 1, "token"),
    "ln_final.hook_scale": ("decoder", 1, "token"),
    "ln_final.hook_normalized": ("decoder", 1, "token"),
}


def tiny_qwen2_audio() -> HookedQwen2Audio:
    audio = HookedWhisperConfig(d_model=16, n_heads=2, d_head=8, n_encoder_layers=2, n_decoder_layers=0, d_vocab=0)
    cfg = HookedQwen2AudioConfig(
        audio=audio, d_model=16, n_layers=2, n_heads=4, n_key_value_heads=2, d_mlp=32, d_vocab=40
    )
    return HookedQwen2Audio(cfg)


def expected(model, table) -> dict[str, HookLayout]:
    out = {}
    for template, (stack, pos_axis, unit, *rest) in table.items():
        layers = [None] if "{l}" not in template else range(model.layer_count(stack if stack != "audio" else "encoder"))
        for layer in layers:
            name = template if layer is None else template.replace("{l}", str(layer))
            out[name] = HookLayout(stack, layer, pos_axis, unit, *rest)
    return out


@pytest.mark.parametrize("family", ["whisper", "qwen2_audio"])
def test_every_hook_has_the_layout_of_the_table(family):
    if family == "whisper":
        model, table = random_whisper(d_model=16, n_heads=2, d_head=8, n_encoder_layers=2, n_decoder_layers=2), WHISPER
    else:
        model, table = tiny_qwen2_audio(), QWEN2_AUDIO
    want = expected(model, table)
    assert set(model.hook_dict) == set(want)
    wrong = {
        name: (model.hook_layout(name), layout) for name, layout in want.items() if model.hook_layout(name) != layout
    }
    assert not wrong, wrong


def test_residual_writers_are_declared():
    model = tiny_qwen2_audio()
    senders = {name for name in model.hook_dict if writes_residual(model, name)}
    assert "blocks.1.hook_mlp_out" in senders and "encoder_embed.hook_conv2" in senders and "hook_embed" in senders
    assert not senders & {"blocks.1.attn.hook_z", "blocks.1.mlp.hook_post", "hook_audio_embeds", "hook_tokens"}


def test_an_undeclared_or_unplaced_hook_is_refused():
    from transformer_lens.hook_points import HookPoint

    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.hook_x = HookPoint()

    with pytest.raises(TypeError, match="hook_x declares no axes"):
        hook_layouts_of(TEXT_STREAM.holds(Bare()))
    nowhere = nn.Module()
    nowhere.hook_y = hook_point()
    with pytest.raises(TypeError, match="hook_y sits on no stream"):
        hook_layouts_of(nowhere)
    assert hook_layouts_of(TEXT_STREAM.holds(nowhere)) == {"hook_y": HookLayout("decoder", None, 1, "token")}
