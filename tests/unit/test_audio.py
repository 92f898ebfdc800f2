"""Reading audio: files, integer and stereo samples, sample rates, and the log-mel front end, without a model."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from hooked_whisper import load_audio
from tests.support import DATA

CLIP = DATA / "goforward.wav"


def test_file_is_read_as_float_mono_16k():
    audio = load_audio(CLIP)
    raw, rate = soundfile.read(CLIP, dtype="int16")
    assert rate == 16000 and audio.dtype == torch.float32 and audio.ndim == 1
    assert torch.allclose(audio, torch.from_numpy(raw / 32768.0).float())


def test_int16_scaled_and_stereo_averaged():
    raw, _ = soundfile.read(CLIP, dtype="int16")
    assert torch.allclose(load_audio(raw, sample_rate=16000), load_audio(CLIP))
    float_audio = load_audio(CLIP)
    stereo = torch.stack([float_audio, 0.5 * float_audio])  # [channels, samples]
    assert torch.allclose(load_audio(stereo, sample_rate=16000), 0.75 * float_audio)
    assert torch.allclose(load_audio(stereo.T.numpy(), sample_rate=16000), 0.75 * float_audio)  # [samples, channels]


def test_resampling_from_other_rates(tmp_path):
    t = torch.arange(44100) / 44100
    tone = torch.sin(2 * torch.pi * 440 * t)
    soundfile.write(tmp_path / "tone.wav", tone.numpy(), 44100)
    audio = load_audio(tmp_path / "tone.wav")
    assert abs(audio.shape[0] - 16000) <= 1
    spectrum = torch.fft.rfft(audio).abs()
    assert abs(int(spectrum.argmax()) - 440) <= 1  # still a 440 Hz tone


def test_missing_or_wrong_sample_rate():
    audio = np.zeros(16000, dtype=np.float32) + 0.1
    with pytest.raises(ValueError, match="needs its sample rate"):
        load_audio(audio)
    with pytest.raises(ValueError, match="positive whole number"):
        load_audio(audio, sample_rate=0)
    with pytest.raises(ValueError, match="says its sample rate is 16000 Hz but sample_rate=8000"):
        load_audio(CLIP, sample_rate=8000)
