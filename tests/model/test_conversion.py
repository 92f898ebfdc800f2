"""Weights between layouts: Hugging Face, openai-whisper and CTranslate2 give the same tensors; key
and shape errors name what is wrong."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from hooked_whisper import HookedWhisper
from tests.support import DATA
from weights_conversion import CheckpointError, convert_state_dict, save_openai_checkpoint


def assert_same_weights(a: HookedWhisper, b: HookedWhisper) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_three_routes_give_the_same_tensors(tiny_en, hf_export, tmp_path):
    hf_dir = hf_export(tiny_en, "tiny.en")
    pt = save_openai_checkpoint(tiny_en, tmp_path / "tiny.en.pt")
    shutil.copyfile(hf_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    shutil.copyfile(hf_dir / "generation_config.json", tmp_path / "generation_config.json")
    from_hf = HookedWhisper.from_pretrained(hf_dir)
    from_openai = HookedWhisper.from_pretrained(pt)
    assert_same_weights(tiny_en, from_hf)  # tiny_en itself came through the CTranslate2 route
    assert_same_weights(tiny_en, from_openai)
    clip = DATA / "goforward.wav"
    assert from_openai.transcribe(clip).tokens == from_hf.transcribe(clip).tokens == tiny_en.transcribe(clip).tokens
    assert from_hf.generation_config == tiny_en.generation_config == from_openai.generation_config


def test_openai_names_follow_openai_whisper(tiny_en):
    names = set(convert_state_dict(tiny_en.state_dict(), tiny_en.cfg, "hooked", "openai"))
    for key in [
        "encoder.conv1.weight",
        "encoder.positional_embedding",
        "encoder.blocks.0.attn.query.weight",
        "encoder.blocks.0.attn_ln.weight",
        "encoder.blocks.0.mlp.0.weight",
        "encoder.ln_post.weight",
        "decoder.token_embedding.weight",
        "decoder.positional_embedding",
        "decoder.blocks.0.cross_attn.key.weight",
        "decoder.blocks.0.cross_attn_ln.bias",
        "decoder.ln.weight",
    ]:
        assert key in names, key
    assert not any(k.endswith("key.bias") for k in names)  # Whisper's key projections have no bias


def test_round_trip_is_exact(tiny_en):
    sd, cfg = tiny_en.state_dict(), tiny_en.cfg
    for naming in ("hf", "openai"):
        back = convert_state_dict(convert_state_dict(sd, cfg, "hooked", naming), cfg, naming, "hooked")
        assert all(torch.equal(sd[k], back[k]) for k in sd)


def test_hf_state_dict_variants_accepted(tiny_en):
    hf = convert_state_dict(tiny_en.state_dict(), tiny_en.cfg, "hooked", "hf")
    unprefixed = {k.removeprefix("model."): v for k, v in hf.items()}
    with_proj = {**hf, "proj_out.weight": hf["model.decoder.embed_tokens.weight"]}
    for variant in (unprefixed, with_proj):
        out = convert_state_dict(variant, tiny_en.cfg, "hf", "hooked")
        assert torch.equal(out["decoder_blocks.0.cross_attn.W_K"], tiny_en.decoder_blocks[0].cross_attn.W_K)


def test_per_head_layout(tiny_en):
    """W_Q[h] must be the slice of the Hugging Face q_proj that produces head h."""
    hf = convert_state_dict(tiny_en.state_dict(), tiny_en.cfg, "hooked", "hf")
    q_proj = hf["model.encoder.layers.1.self_attn.q_proj.weight"]
    head = 3
    rows = q_proj[head * 64 : (head + 1) * 64]  # [d_head, d_model]
    assert torch.equal(tiny_en.encoder_blocks[1].attn.W_Q[head], rows.T)
    out_proj = hf["model.decoder.layers.0.encoder_attn.out_proj.weight"]
    assert torch.equal(tiny_en.decoder_blocks[0].cross_attn.W_O[head], out_proj[:, head * 64 : (head + 1) * 64].T)


def test_missing_and_unexpected_keys_listed(tiny_en):
    hf = convert_state_dict(tiny_en.state_dict(), tiny_en.cfg, "hooked", "hf")
    del hf["model.decoder.layers.2.fc1.bias"], hf["model.encoder.conv2.weight"]
    hf["model.decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        convert_state_dict(hf, tiny_en.cfg, "hf", "hooked", "my.safetensors")
    msg = str(err.value)
    assert "2 missing keys" in msg and "decoder.layers.2.fc1.bias" in msg and "encoder.conv2.weight" in msg
    assert "1 unexpected keys: decoder.extra.weight" in msg and "my.safetensors" in msg


def test_shape_mismatch_names_tensor_and_shapes(tiny_en):
    hf = convert_state_dict(tiny_en.state_dict(), tiny_en.cfg, "hooked", "hf")
    hf["model.encoder.layers.0.fc1.weight"] = torch.zeros(10, 384)
    with pytest.raises(
        CheckpointError, match=r"encoder.layers.0.fc1.weight has shape \(10, 384\), expected \(1536, 384\)"
    ):
        convert_state_dict(hf, tiny_en.cfg, "hf", "hooked")


def test_command_line_writes_hf_folder(tmp_path):
    out = tmp_path / "hf"
    done = subprocess.run(
        [sys.executable, "-m", "weights_conversion", "tiny.en", str(out)], capture_output=True, text=True, check=True
    )
    assert "4+4 layers" in done.stdout
    for f in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert (out / f).is_file(), f
