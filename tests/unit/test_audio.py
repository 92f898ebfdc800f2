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


def test_every_array_without_a_rate_is_warned_about():
    from hooked_whisper.audio import audio_clips

    for seconds in (1, 2):  # a second array, at another rate, is not silent
        with pytest.warns(UserWarning, match=rf"array of {seconds:.2f} s at that rate was given without sample_rate"):
            audio_clips(np.full(16000 * seconds, 0.1, dtype=np.float32))


def test_float_arrays_holding_integer_pcm_are_refused():
    raw, _ = soundfile.read(CLIP, dtype="int16")
    for bad in (raw.astype(np.float32), np.full(16000, 65504.0, dtype=np.float16), np.full(16000, 1e30)):
        with pytest.raises(ValueError, match=r"float audio lies in \[-1, 1\].*Divide by 32768"):
            load_audio(bad, sample_rate=16000)
    assert torch.allclose(load_audio(raw.astype(np.float32) / 32768, sample_rate=16000), load_audio(CLIP))


def test_a_float_wav_file_with_integer_range_samples_is_refused(tmp_path):
    raw, _ = soundfile.read(CLIP, dtype="int16")
    soundfile.write(tmp_path / "f.wav", raw.astype(np.float32), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"f.wav holds float samples up to \d+"):
        load_audio(tmp_path / "f.wav")


def test_a_mel_that_overflows_or_holds_nan_is_refused():
    from hooked_whisper.audio import check_mel, log_mel_spectrogram, pad_or_trim

    loud = pad_or_trim(torch.full((16000,), 3e38))  # finite, but its power overflows float32
    with pytest.raises(ValueError, match="log-mel features hold .* NaN or infinite values"):
        log_mel_spectrogram(loud)
    mel = log_mel_spectrogram(pad_or_trim(load_audio(CLIP)))
    assert check_mel(mel) is mel
    mel[0, 3] = float("nan")
    with pytest.raises(ValueError, match="hold 1 NaN or infinite values"):
        check_mel(mel)


def test_a_truncated_wav_is_refused_naming_the_file(tmp_path):
    cut = tmp_path / "cut.wav"
    cut.write_bytes(CLIP.read_bytes()[:-1000])
    with pytest.raises(
        ValueError, match=r"cut.wav is truncated: its header says \d+ bytes of samples but the file holds"
    ):
        load_audio(cut)
    streamed = bytearray(CLIP.read_bytes())  # a streaming writer's unknown size is not truncation
    at = streamed.index(b"data") + 4
    streamed[at : at + 4] = b"\xff\xff\xff\xff"
    (tmp_path / "streamed.wav").write_bytes(bytes(streamed))
    assert load_audio(tmp_path / "streamed.wav").shape == load_audio(CLIP).shape


def test_channel_axes_follow_one_rule_whatever_their_count():
    """The longer axis is time: [samples, channels] is one clip for 2 channels or 16 (a
    microphone array), never one clip per sample; [k, samples] for 2 <= k <= 8 is refused."""
    from hooked_whisper.audio import audio_clips

    mono = load_audio(CLIP)
    for channels in (2, 9, 16):
        mic = mono[:, None].repeat(1, channels)
        clips = audio_clips(mic, sample_rate=16000)
        assert len(clips) == 1 and torch.allclose(clips[0], mono, atol=1e-6)
    with pytest.raises(ValueError, match=r"could be 4 clips or one clip with 4 channels.*list\(x\).*x.mean\(0\)"):
        audio_clips(mono[None].repeat(4, 1), sample_rate=16000)
    assert len(audio_clips(mono[None].repeat(9, 1), sample_rate=16000)) == 9  # [batch, samples]
