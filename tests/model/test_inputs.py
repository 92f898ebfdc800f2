"""What the model accepts: every audio form, channels and sample rates, and clear errors for what it refuses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile
import torch

from hooked_whisper import HookedWhisper, HookedWhisperConfig, load_audio
from hooked_whisper.audio import log_mel_spectrogram, pad_or_trim
from tests.support import DATA

CLIP = DATA / "goforward.wav"


def test_bad_audio_errors(tiny_en, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        load_audio(np.zeros(0, dtype=np.float32), sample_rate=16000)
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_audio(np.array([0.1, np.nan, 0.2], dtype=np.float32), sample_rate=16000)
    with pytest.raises(ValueError, match="over the 30 s window"):
        tiny_en.to_mel(torch.full((16000 * 31,), 0.01), sample_rate=16000)
    with pytest.raises(FileNotFoundError, match="no audio file"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="could not read"):
        load_audio(tmp_path / "junk.wav")
    with pytest.warns(UserWarning, match="digital silence"):
        load_audio(np.zeros(16000, dtype=np.float32), sample_rate=16000)


def test_model_accepts_every_audio_form(tiny_en):
    audio = load_audio(CLIP)
    features = tiny_en.to_mel(CLIP)
    mel = features.mel
    assert mel.shape == (1, 80, 3000) and features.n_frames.tolist() == [math.ceil(len(audio) / 160)]
    for form in (audio, audio.numpy(), [CLIP], mel, mel[0], features):
        assert torch.equal(tiny_en.to_mel(form, sample_rate=16000).mel, mel)
    assert tiny_en.to_mel(mel).n_frames.tolist() == [3000]  # a bare log-mel says nothing of padding: all audio
    batch = tiny_en.to_mel([CLIP, DATA / "cards_001.wav"])
    assert batch.shape == (2, 80, 3000) and torch.equal(batch.mel[:1], mel)
    # Padding happens in the audio domain, so a padded waveform gives the same features.
    assert torch.equal(tiny_en.to_mel(pad_or_trim(audio), sample_rate=16000).mel, mel)
    assert torch.allclose(log_mel_spectrogram(pad_or_trim(audio))[None], mel)


CLIP = DATA / "librivox_0880.wav"


def test_stereo_and_other_rates(tiny_en, tmp_path):
    mono = load_audio(CLIP)
    text = tiny_en.transcribe(CLIP).text
    stereo = torch.stack([mono, mono], dim=1).numpy()  # [samples, channels], as soundfile.read returns
    assert tiny_en.transcribe(stereo, sample_rate=16000).text == text
    with pytest.raises(ValueError, match=r"shape \(2, \d+\) could be 2 clips or one clip with 2 channels"):
        tiny_en.run_with_cache(stereo.T, sample_rate=16000)
    import torchaudio.functional

    fast = torchaudio.functional.resample(mono, 16000, 44100)
    same = load_audio(fast, 44100)  # what every method must compute from the 44.1 kHz array
    assert torch.equal(tiny_en.to_mel(fast, sample_rate=44100).mel, tiny_en.to_mel(same, sample_rate=16000).mel)
    tokens = tiny_en.generate(same, sample_rate=16000)
    assert torch.equal(tiny_en.generate(fast, sample_rate=44100), tokens)
    assert torch.equal(tiny_en.encode(fast, sample_rate=44100), tiny_en.encode(same, sample_rate=16000))
    with torch.no_grad():
        assert torch.equal(tiny_en(fast, tokens, sample_rate=44100), tiny_en(same, tokens, sample_rate=16000))
        logits, cache = tiny_en.run_with_cache(fast, tokens, sample_rate=44100, names_filter=["hook_mel"])
    assert torch.equal(cache["hook_mel"], tiny_en.to_mel(same, sample_rate=16000).mel)
    assert tiny_en.transcribe(fast, sample_rate=44100).text == tiny_en.transcribe(same, sample_rate=16000).text
    path = tmp_path / "clip44k.wav"
    soundfile.write(path, fast.numpy(), 44100)
    with pytest.raises(ValueError, match="says its sample rate is 44100 Hz but sample_rate=8000"):
        tiny_en.transcribe(path, sample_rate=8000)


def test_bad_hook_returns_tokens_and_options_are_clear_errors(tiny_en):
    with pytest.raises(ValueError, match=r"the hook on encoder_blocks.1.hook_resid_post returned shape \(1, 10, 384\)"):
        tiny_en.run_with_hooks(
            CLIP, [50257], fwd_hooks=[("encoder_blocks.1.hook_resid_post", lambda x, hook: x[:, :10])]
        )
    with pytest.raises(ValueError, match="returned shape .* torch.float64"):
        tiny_en.run_with_hooks(CLIP, [50257], fwd_hooks=[("hook_embed", lambda x, hook: x.double())])
    assert not any(hp.has_hooks() for hp in tiny_en.hook_dict.values())
    with pytest.raises(ValueError, match="tokens are empty"):
        tiny_en(CLIP, [])
    with pytest.raises(ValueError, match=r"tokens are \[pos\] or \[batch, pos\]"):
        tiny_en(CLIP, torch.zeros(1, 1, 3, dtype=torch.long))
    for bad in (lambda: tiny_en.to_string([10**6]), lambda: tiny_en.to_str_tokens([10**6])):
        with pytest.raises(ValueError, match=r"token ids must lie in \[0, 51864\)"):
            bad()
    with pytest.raises(ValueError, match="pass initial_prompt= instead of prompt= or prefix="):
        tiny_en.transcribe(CLIP, prompt="earlier text")
    with pytest.raises(TypeError, match="unexpected keyword argument 'beams'"):
        tiny_en.transcribe(CLIP, beams=2)
    for temperature in ((0.0, -0.2), float("nan"), ()):
        with pytest.raises(ValueError, match="temperature must be"):
            tiny_en.transcribe(CLIP, temperature=temperature)


def test_unknown_language_is_reported_before_the_encoder_runs(small):
    calls = []
    assert "de" in small.special.languages  # a multilingual vocabulary
    with small.hooks(fwd_hooks=[("hook_mel", lambda x, hook: calls.append(1))]):
        with pytest.raises(ValueError, match="unknown language 'xx'"):
            small.transcribe(CLIP, language="xx")
    assert calls == []


def test_waveform_for_a_model_with_a_shorter_audio_context():
    model = HookedWhisper(
        HookedWhisperConfig(d_model=64, n_heads=1, n_encoder_layers=1, n_decoder_layers=1, n_audio_ctx=100)
    )
    with pytest.raises(ValueError, match=r"reads 200 mel frames.*pass a log-mel \[batch, 80, 200\]"):
        model.encode(np.zeros(16000, dtype=np.float32), sample_rate=16000)
    assert model.encode(torch.zeros(1, 80, 200)).shape == (1, 100, 64)


def test_a_ready_mel_holding_nan_is_refused(tiny_en):
    mel = log_mel_spectrogram(pad_or_trim(load_audio(CLIP)))[None]
    mel[0, 5, 7] = float("nan")
    with pytest.raises(ValueError, match="log-mel features hold 1 NaN or infinite values"):
        tiny_en.run_with_cache(mel)


def test_a_list_of_languages_and_out_of_vocabulary_ids_are_refused(small):
    with pytest.raises(ValueError, match=r"language is one code for every clip \(e.g. 'en'\), not list"):
        small.generate([CLIP, CLIP], language=["en", "fr"])
    n = small.cfg.d_vocab
    with pytest.raises(ValueError, match=rf"prompt holds token id {n}, outside this model's vocabulary of {n} ids"):
        small.generate(CLIP, prompt=[n])
    with pytest.raises(ValueError, match=rf"token id {n + 5} is outside this model's vocabulary of {n} ids"):
        small.run_with_cache(CLIP, [small.special.sot, n + 5])
