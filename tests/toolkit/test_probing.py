"""Pooled activations for probes: padding frames left out, batches equal one by one, errors named."""

from __future__ import annotations

import math

import pytest
import torch

from hooked_whisper import load_audio
from hooked_whisper.probing import extract_activations, train_probes
from tests.support import DATA, assert_close


def test_mean_pooling_ignores_padding_frames(tiny_en, tmp_path, float32_spread):
    clips = [DATA / "cards_001.wav", DATA / "goforward.wav"]
    hook = "encoder_blocks.1.hook_resid_post"
    store = extract_activations(tiny_en, clips, [hook, "decoder_blocks.2.hook_resid_post"], progress=False)
    for i, clip in enumerate(clips):
        n_frames = -(-load_audio(clip).shape[0] // 320)  # 50 encoder frames per second of audio
        _, cache = tiny_en.run_with_cache(clip, names_filter=[hook, "decoder_blocks.2.hook_resid_post"])
        assert_close(store[hook][i], cache[hook][0, :n_frames].mean(0), float32_spread, "pooled encoder")
        assert not torch.allclose(store[hook][i], cache[hook][0].mean(0), atol=1e-2)
        last = cache["decoder_blocks.2.hook_resid_post"][0, -1]  # the position that predicts end-of-text
        assert_close(store["decoder_blocks.2.hook_resid_post"][i], last, float32_spread, "pooled decoder")
    sharded = extract_activations(
        tiny_en, clips, [hook], batch_size=1, shard_size=1, out_dir=tmp_path / "shards", progress=False
    )
    assert len(list((tmp_path / "shards").glob("*.safetensors"))) == 2
    assert_close(sharded[hook], store[hook], float32_spread, "batch of 1 vs 2")


def test_probing_errors(tiny_en):
    with pytest.raises(ValueError, match="dataset is empty"):
        extract_activations(tiny_en, [], ["encoder_blocks.0.hook_resid_post"])
    with pytest.raises(ValueError, match="no hook named 'encoder_blocks.9.hook_resid_post'"):
        extract_activations(tiny_en, [DATA / "cards_001.wav"], ["encoder_blocks.9.hook_resid_post"])
    with pytest.raises(ValueError, match="3 labels for 4 examples"):
        train_probes({"h": torch.zeros(4, 3)}, [0, 1, 0], progress=False)
    with pytest.raises(ValueError, match="at least two classes"):
        train_probes({"h": torch.zeros(4, 3)}, [1, 1, 1, 1], progress=False)
    with pytest.raises(ValueError, match="no hooks given: name at least one hook"):
        extract_activations(tiny_en, [DATA / "cards_001.wav"], [])
    with pytest.raises(ValueError, match="pooling must be one of"):
        extract_activations(tiny_en, [DATA / "cards_001.wav"], ["hook_encoder_out"], pooling="max")


def test_mel_hook_pools_at_mel_frame_rate(tiny_en, float32_spread):
    clip = DATA / "cards_001.wav"
    store = extract_activations(tiny_en, [clip], ["hook_mel", "encoder_embed.hook_conv1"], progress=False)
    seconds = load_audio(clip).shape[0] / 16000
    _, cache = tiny_en.run_with_cache(clip, names_filter=["hook_mel", "encoder_embed.hook_conv1"])
    n = math.ceil(seconds * 100)  # 100 mel frames per second
    assert_close(store["hook_mel"][0], cache["hook_mel"][0, :, :n].mean(-1), float32_spread, "hook_mel")
    conv1 = cache["encoder_embed.hook_conv1"][0, :n].mean(0)
    assert_close(store["encoder_embed.hook_conv1"][0], conv1, float32_spread, "conv1")


def test_an_unpooled_store_is_refused_by_train_probes(tiny_en, tmp_path):
    clips = [DATA / "cards_001.wav", DATA / "goforward.wav"]
    hook = "encoder_blocks.0.hook_resid_post"
    for out_dir in (None, tmp_path / "acts"):
        store = extract_activations(tiny_en, clips, [hook], pooling="none", out_dir=out_dir, progress=False)
        with pytest.raises(ValueError, match=r"extracted with pooling 'none' .* one vector per clip"):
            train_probes(store, ["a", "b"], folds=2, progress=False)


def test_mean_audio_pools_what_the_audio_llm_reads(tmp_path, float32_spread):
    """On the audio LLM, ``mean_audio`` averages exactly the audio embeddings the language model
    receives at its placeholders, and the encoder positions its self-attention reads, whether the
    clip's encoder positions pair up (1.0 s) or leave a last half-padding one that pooling drops
    (1.02 s)."""
    from tests.toolkit.test_families import clip, tiny_qwen2_audio

    model = tiny_qwen2_audio(tmp_path)
    hooks = ["hook_audio_embeds", "encoder_blocks.1.hook_resid_post"]
    clips = [clip(0, 1.0), clip(1, 1.02)]
    store = extract_activations(model, clips, hooks, sample_rate=16000, batch_size=2, progress=False)
    for i, audio in enumerate(clips):
        with torch.no_grad():
            _, cache = model.run_with_cache(audio, sample_rate=16000)
        received = cache["blocks.0.hook_resid_pre"][0, cache["hook_tokens"][0] == model.cfg.audio_token_id]
        assert len(received) == int(model.to_mel(audio, 16000).n_audio_tokens[0]) == [25, 25][i]
        assert_close(store["hook_audio_embeds"][i], received.mean(0), float32_spread, "mean_audio, audio tokens")
        n_read = int(model.to_mel(audio, 16000).n_frames[0] + 1) // 2  # stride-2 convolution
        encoder = cache["encoder_blocks.1.hook_resid_post"][0, :n_read].mean(0)
        assert n_read == [50, 51][i]
        assert_close(store["encoder_blocks.1.hook_resid_post"][i], encoder, float32_spread, "mean_audio, encoder")
