"""Activation extraction (pooling, shards) and linear probes (planted signals, controls, errors)."""

from __future__ import annotations

import pytest
import torch

from hooked_whisper import load_audio
from hooked_whisper.probing import extract_activations, train_probes
from tests.conftest import DATA


def test_mean_pooling_ignores_padding_frames(tiny_en, tmp_path):
    clips = [DATA / "cards_001.wav", DATA / "goforward.wav"]
    hook = "encoder_blocks.1.hook_resid_post"
    store = extract_activations(tiny_en, clips, [hook, "decoder_blocks.2.hook_resid_post"], progress=False)
    for i, clip in enumerate(clips):
        n_frames = -(-load_audio(clip).shape[0] // 320)  # 50 encoder frames per second of audio
        _, cache = tiny_en.run_with_cache(clip, names_filter=[hook, "decoder_blocks.2.hook_resid_post"])
        assert torch.allclose(store[hook][i], cache[hook][0, :n_frames].mean(0), atol=1e-4)
        assert not torch.allclose(store[hook][i], cache[hook][0].mean(0), atol=1e-2)
        last = cache["decoder_blocks.2.hook_resid_post"][0, -1]  # the position that predicts end-of-text
        assert torch.allclose(store["decoder_blocks.2.hook_resid_post"][i], last, atol=1e-4)
    sharded = extract_activations(tiny_en, clips, [hook], batch_size=1, out_dir=tmp_path / "shards", progress=False)
    assert len(list((tmp_path / "shards").glob("*.safetensors"))) == 2
    assert torch.allclose(sharded[hook], store[hook], atol=1e-5)


def test_probes_recover_a_planted_signal():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 40, generator=g)
    labels = ["a" if v > 0 else "b" for v in (x[:, :5].sum(1) * 2 + 0.1 * torch.randn(300, generator=g))]
    noise = torch.randn(300, 40, generator=g)
    for method in ("logistic", "ridge"):
        report = train_probes(
            {"encoder_blocks.3.signal": x, "encoder_blocks.0.noise": noise}, labels, method=method, progress=False
        )
        signal, pure_noise = report.results
        assert signal.layer == 3 and signal.accuracy > 0.85, method
        assert abs(signal.shuffled - 0.5) < 0.15 and abs(pure_noise.accuracy - 0.5) < 0.15, method
        assert 0.4 < signal.majority < 0.6
    runs = [train_probes({"encoder_blocks.3.signal": x}, labels, progress=False).results[0] for _ in range(2)]
    assert runs[0] == runs[1]  # deterministic for a seed


def test_probing_errors(tiny_en):
    with pytest.raises(ValueError, match="dataset is empty"):
        extract_activations(tiny_en, [], ["encoder_blocks.0.hook_resid_post"])
    with pytest.raises(ValueError, match="no hook named 'encoder_blocks.9.hook_resid_post'"):
        extract_activations(tiny_en, [DATA / "cards_001.wav"], ["encoder_blocks.9.hook_resid_post"])
    with pytest.raises(ValueError, match="3 labels for 4 examples"):
        train_probes({"h": torch.zeros(4, 3)}, [0, 1, 0], progress=False)
    with pytest.raises(ValueError, match="at least two classes"):
        train_probes({"h": torch.zeros(4, 3)}, [1, 1, 1, 1], progress=False)
    with pytest.raises(ValueError, match="pooling must be one of"):
        extract_activations(tiny_en, [DATA / "cards_001.wav"], ["hook_encoder_out"], pooling="max")
