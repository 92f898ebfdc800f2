"""The audio front end: loading and checking waveforms, and Whisper's log-mel spectrogram."""

from __future__ import annotations

import base64
import io
import math
import warnings
import wave
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS  # 480000 samples: one 30 s window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames, 50 encoder positions per second

MAX_CHANNELS = 8  # [k, samples] with 2 <= k <= this could be k clips or k channels: refused
MAX_FLOAT_AMPLITUDE = 1.5  # float audio lives in [-1, 1]; beyond this it is integer PCM read as float

AudioLike = str | Path | np.ndarray | torch.Tensor
AudioInput = AudioLike | Sequence[AudioLike]


def load_audio(audio: AudioLike, sample_rate: int | None = None) -> Float[torch.Tensor, " samples"]:
    """Return ``audio`` as a float32 mono waveform at 16 kHz.

    ``audio`` is a path to a sound file (wav, flac, ogg, mp3: anything libsndfile reads) or an
    array of samples. For a file the rate is read from its header; for an array it is
    ``sample_rate``, which must then be given. Other rates are resampled with torchaudio. Stereo
    (or any multi-channel) input is averaged to mono; integer PCM is scaled to [-1, 1]. Float
    samples beyond +-1.5 are refused (integer PCM converted to float without scaling: divide by
    32768). An array may be ``[samples]`` or ``[samples, channels]``/``[channels, samples]`` (the
    shorter axis is taken as channels).
    """
    if isinstance(audio, (str, Path)):
        waveform, file_rate = _read_file(Path(audio))
        if sample_rate is not None and sample_rate != file_rate:
            raise ValueError(
                f"{audio} says its sample rate is {file_rate} Hz but sample_rate={sample_rate} was "
                "passed; leave sample_rate out for files, the header is used"
            )
        sample_rate = file_rate
    elif isinstance(audio, (np.ndarray, torch.Tensor)):
        if sample_rate is None:
            raise ValueError(
                "an array of samples needs its sample rate: pass sample_rate=<Hz> (Whisper runs at "
                f"{SAMPLE_RATE} Hz; other rates are resampled)"
            )
        x = torch.as_tensor(audio)
        _check_float_range(x, "the audio array")
        waveform = _to_float_mono(x)
    else:
        raise TypeError(f"audio must be a path, a numpy array or a torch tensor, not {type(audio).__name__}")

    if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive whole number of Hz, got {sample_rate!r}")
    check_waveform(waveform)
    if sample_rate != SAMPLE_RATE:
        import torchaudio.functional

        waveform = torchaudio.functional.resample(waveform, sample_rate, SAMPLE_RATE)
    return waveform.contiguous()


def audio_clips(audio: AudioInput, sample_rate: int | None = None) -> list[Float[torch.Tensor, " samples"]]:
    """The audio contract of every method that takes audio: each clip as a 16 kHz mono waveform.

    - a path: one clip, at the rate its header gives (a different ``sample_rate`` is an error);
    - a 1-D array ``[samples]``: one clip;
    - a 2-D array: the longer axis is time. ``[samples, channels]`` (more rows than columns:
      what ``soundfile.read`` returns, whatever the channel count, a microphone array's too) is
      one clip, its channels averaged. ``[batch, samples]`` is one clip per row when the rows are
      unmistakably clips (more than ``MAX_CHANNELS`` of them, or one). ``[k, samples]`` with
      2 <= k <= 8 could be k clips or k channels, so it is refused: pass a list of 1-D waveforms
      for a batch, or average the channels first;
    - a list of paths and/or arrays: one clip each (a 2-D item is one multi-channel clip).

    Arrays are at ``sample_rate`` Hz; without it they are taken as 16 kHz, Whisper's rate, and a
    warning says so each time (naming the length that rate implies). Other rates are resampled.
    """
    if isinstance(audio, (str, Path)):
        return [load_audio(audio, sample_rate)]
    if isinstance(audio, (np.ndarray, torch.Tensor)):
        x = torch.as_tensor(audio)
        rate = array_rate(sample_rate, x)
        if x.ndim == 1 or (x.ndim == 2 and _is_multichannel(tuple(x.shape))):
            return [load_audio(x, rate)]
        if x.ndim == 2:
            return [load_audio(row, rate) for row in x]
        raise ValueError(
            f"an audio array is [samples], [batch, samples] or [samples, channels]; got shape {tuple(x.shape)}"
        )
    if isinstance(audio, Sequence) and not isinstance(audio, (str, bytes)):
        if len(audio) == 0:
            raise ValueError("no audio given: the list of clips is empty")
        return [
            audio_clips(a, sample_rate)[0] if isinstance(a, (str, Path)) else _one_array(a, sample_rate) for a in audio
        ]
    raise TypeError(f"cannot read audio from {type(audio).__name__}: pass a path, an array or a list of them")


def is_single_clip(audio: AudioInput) -> bool:
    """Whether ``audio_clips(audio)`` holds one clip given as such (not a batch of one)."""
    if isinstance(audio, (str, Path)):
        return True
    if isinstance(audio, (np.ndarray, torch.Tensor)):
        return audio.ndim == 1 or (audio.ndim == 2 and _is_multichannel(tuple(audio.shape)))
    return False


def _is_multichannel(shape: tuple[int, ...]) -> bool:
    """For a 2-D array: True for ``[samples, channels]``, False for a batch of clips; refuses
    the shapes that could be either."""
    rows, cols = shape
    if rows > cols:  # the longer axis is time: [samples, channels], whatever the channel count
        return True
    if 1 < rows <= MAX_CHANNELS:
        raise ValueError(
            f"an audio array of shape {shape} could be {rows} clips or one clip with {rows} channels; "
            f"for a batch pass a list of 1-D waveforms (list(x)), for one multi-channel clip average "
            f"the channels first (x.mean(0)), or use load_audio(x, sample_rate)"
        )
    return False


def _one_array(x: np.ndarray | torch.Tensor, sample_rate: int | None) -> torch.Tensor:
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise TypeError(f"a list of clips holds paths or arrays, not {type(x).__name__}")
    if x.ndim not in (1, 2):
        raise ValueError(f"each clip in a list is [samples] or [samples, channels]; got shape {tuple(x.shape)}")
    return load_audio(x, array_rate(sample_rate, x))


def array_rate(sample_rate: int | None, x: np.ndarray | torch.Tensor | None = None) -> int:
    """``sample_rate``, or 16 kHz with a warning each time an array comes without one (the
    warning names the array's length at 16 kHz, so that each differing array is shown)."""
    if sample_rate is None:
        length = f" of {max(x.shape) / SAMPLE_RATE:.2f} s at that rate" if x is not None and x.ndim else ""
        warnings.warn(
            f"an audio array{length} was given without sample_rate=; it is taken to be {SAMPLE_RATE} Hz "
            "(pass sample_rate=<Hz> to have other rates resampled)",
            stacklevel=4,
        )
        return SAMPLE_RATE
    return sample_rate


def _check_float_range(x: torch.Tensor, what: str) -> None:
    """Refuse float samples far outside [-1, 1]: integer PCM converted to float unscaled."""
    if not x.is_floating_point() or x.numel() == 0:
        return
    peak = float(x.detach().abs().nan_to_num(0.0, 0.0, 0.0).max())
    if peak > MAX_FLOAT_AMPLITUDE:
        raise ValueError(
            f"{what} holds float samples up to {peak:.6g}, but float audio lies in [-1, 1]: it looks like "
            "integer PCM converted to float without scaling. Divide by 32768 for 16-bit samples "
            "(2147483648 for 32-bit), or pass the integer array itself"
        )


def _read_file(path: Path) -> tuple[torch.Tensor, int]:
    import soundfile

    if not path.exists():
        raise FileNotFoundError(f"no audio file at {path}")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for unreadable files
        raise ValueError(f"could not read {path} as audio ({err}); use wav, flac, ogg or mp3") from err
    _check_wav_length(path)
    _check_float_range(torch.from_numpy(data), str(path))
    return torch.from_numpy(data.mean(axis=1)), int(rate)


def _check_wav_length(path: Path) -> None:
    """Refuse a WAV file shorter than its header says (a cut download or copy): libsndfile
    reads what is there without a word, so the clip would silently lose its end."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return
        order = "little" if head[:4] == b"RIFF" else "big"
        size = path.stat().st_size
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return
            length = int.from_bytes(chunk[4:8], order)
            if chunk[:4] == b"data":
                if length in (0, 0xFFFFFFFF, 0x7FFFFFFF):  # left unknown by a streaming writer
                    return
                present = size - f.tell()
                if present < length:
                    raise ValueError(
                        f"{path} is truncated: its header says {length} bytes of samples but the file holds "
                        f"{present} ({present / length:.0%}); copy or download it again (or rewrite its header "
                        "to keep the part that is there)"
                    )
                return
            f.seek(length + (length & 1), 1)


def _to_float_mono(x: torch.Tensor) -> torch.Tensor:
    if x.dtype in (torch.int16, torch.int32, torch.int8, torch.uint8):
        bits = {torch.int8: 8, torch.uint8: 8, torch.int16: 16, torch.int32: 32}[x.dtype]
        offset = 128.0 if x.dtype == torch.uint8 else 0.0  # 8-bit WAV is unsigned
        x = (x.double() - offset) / 2 ** (bits - 1)
    elif not x.is_floating_point():
        raise TypeError(f"unsupported sample type {x.dtype}: use float or integer PCM")
    x = x.float()
    if x.ndim == 2:
        channel_axis = 0 if x.shape[0] <= x.shape[1] else 1
        x = x.mean(dim=channel_axis)
    elif x.ndim != 1:
        raise ValueError(f"a waveform is [samples] or [channels, samples]; got shape {tuple(x.shape)}")
    return x


def check_waveform(waveform: torch.Tensor) -> None:
    """Refuse what cannot be transcribed; warn about digital silence, a known hallucination trigger."""
    if waveform.numel() == 0:
        raise ValueError("the audio is empty (0 samples)")
    if not torch.isfinite(waveform).all():
        raise ValueError("the audio contains NaN or infinite samples")
    if not waveform.abs().max() > 0:
        warnings.warn(
            "the audio is digital silence (all samples are 0); Whisper tends to hallucinate text on it",
            stacklevel=3,
        )


@lru_cache(maxsize=4)
def mel_filters(n_mels: int, device: str = "cpu") -> Float[torch.Tensor, "n_freqs n_mels"]:
    """Slaney-scale, Slaney-normalised triangular filters over the 201 STFT bins up to 8 kHz.

    Built in float64 then cast, like the reference feature extractor.
    """
    n_freqs = N_FFT // 2 + 1
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, n_freqs)

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        # Slaney: linear below 1 kHz, logarithmic above.
        min_log_hz, min_log_mel, logstep = 1000.0, 15.0, 27.0 / math.log(6.4)
        mel = 3.0 * hz / 200.0
        return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) * logstep, mel)

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        min_log_hz, min_log_mel, logstep = 1000.0, 15.0, math.log(6.4) / 27.0
        hz = 200.0 * mel / 3.0
        return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), hz)

    mel_edges = np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(SAMPLE_RATE / 2)), n_mels + 2)
    hz_edges = mel_to_hz(mel_edges)
    widths = np.diff(hz_edges)
    slopes = hz_edges[None, :] - fft_freqs[:, None]  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0, np.minimum(down, up))
    filters *= 2.0 / (hz_edges[2 : n_mels + 2] - hz_edges[:n_mels])  # equal area per filter
    return torch.from_numpy(filters).float().to(device)


def pad_or_trim(waveform: torch.Tensor, length: int = N_SAMPLES) -> torch.Tensor:
    """Zero-pad (or cut) the last axis to ``length`` samples."""
    n = waveform.shape[-1]
    if n > length:
        return waveform[..., :length]
    return torch.nn.functional.pad(waveform, (0, length - n))


def log_mel_spectrogram(
    waveform: Float[torch.Tensor, "*batch samples"], n_mels: int = 80
) -> Float[torch.Tensor, "*batch n_mels frames"]:
    """Whisper's features for waveforms already padded to the window (``pad_or_trim``).

    STFT (400-point Hann window, hop 160, reflect-padded centre), power, mel filters, log10
    floored at 1e-10, dynamic range cut to 8 (80 dB) below each example's peak, then scaled to
    roughly [-1, 1]. The last STFT frame is dropped so 30 s give exactly 3000 frames.
    """
    window = torch.hann_window(N_FFT, device=waveform.device, dtype=waveform.dtype)
    stft = torch.stft(waveform, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = (stft[..., :-1].abs() ** 2).contiguous()
    mel = mel_filters(n_mels, str(waveform.device)).to(power.dtype).T @ power
    log_spec = mel.clamp(min=1e-10).log10()
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return check_mel((log_spec + 4.0) / 4.0)


def check_mel(mel: torch.Tensor) -> torch.Tensor:
    """Refuse a log-mel holding NaN or infinity (an amplitude so large its power overflows, or a
    damaged ready-made mel): every activation computed from it would be NaN. Returns ``mel``."""
    if not torch.isfinite(mel).all():
        bad = int((~torch.isfinite(mel)).sum())
        raise ValueError(
            f"the log-mel features hold {bad} NaN or infinite values: the audio's amplitude overflowed the "
            "spectrogram (scale it into [-1, 1]) or the mel given was damaged; nothing finite can be computed from it"
        )
    return mel


def wav_base64(samples: torch.Tensor) -> str:
    """A 16 kHz mono clip as a base64 16-bit WAV file, for an ``<audio>`` element."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes((samples.clamp(-1, 1) * 32767).to(torch.int16).cpu().numpy().tobytes())
    return base64.b64encode(buffer.getvalue()).decode()
