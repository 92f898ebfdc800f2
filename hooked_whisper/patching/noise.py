"""Noise references: a run on noise as the source of a patch.

``Noise("white")`` (or pink, babble, speech-shaped, silence) stands wherever a source clip
does (``activation_patch``, ``path_patch``, ``ablate(kind="resample")``, ``reference_hooks``
for generation); it is made for the target clip it patches: the same number of samples and the
same RMS loudness, so only the content differs. Patching an encoder component toward noise with
``alpha`` between 0 and 1 asks how much of what it carries the rest of the model needs.

- white: flat power spectrum (0 dB per octave);
- pink: power falling as 1/f (-3 dB per octave), the slope of many natural sounds;
- speech_shaped: the clip's own amplitude spectrum with random phases (its long-term spectrum,
  no words), or that of ``speech`` clips when given;
- babble: ``talkers`` of the given ``speech`` clips summed at equal loudness from random starts;
- silence: zeros (its loudness is not matched, by definition).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from hooked_whisper.audio import SAMPLE_RATE, audio_clips, load_audio

KINDS = ("white", "pink", "speech_shaped", "babble", "silence")


@dataclass(frozen=True)
class Noise:
    """A noise reference, made per target clip by ``like``. ``speech`` (paths or 16 kHz
    waveforms) feeds babble (required) and speech-shaped noise (optional)."""

    kind: str = "white"
    seed: int = 0
    speech: tuple = ()
    talkers: int = 6

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown noise kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.kind == "babble" and not self.speech:
            raise ValueError("babble noise is made of speech: pass Noise('babble', speech=(clip, clip, ...))")

    @property
    def name(self) -> str:
        return f"{self.kind} noise" if self.kind != "silence" else "silence"

    def like(self, clip, sample_rate: int | None = None) -> torch.Tensor:
        """A 16 kHz waveform with as many samples and the same RMS as ``clip`` (any one clip
        ``audio_clips`` takes)."""
        clips = audio_clips(clip, sample_rate)
        if len(clips) != 1:
            raise ValueError(f"a noise reference is made for one clip at a time; got {len(clips)}")
        return noise_like(clips[0], self.kind, self.seed, self.speech, self.talkers)


def noise_like(
    clip: torch.Tensor, kind: str = "white", seed: int = 0, speech: Sequence = (), talkers: int = 6
) -> torch.Tensor:
    """``kind`` noise as long and as loud (RMS) as the 16 kHz waveform ``clip``."""
    clip = torch.as_tensor(clip, dtype=torch.float32)
    n = clip.shape[-1]
    generator = torch.Generator().manual_seed(seed)
    if kind == "silence":
        return torch.zeros(n)
    if kind in ("white", "pink"):
        x = torch.randn(n, generator=generator)
        if kind == "pink":  # amplitude ~ f^-1/2, so power ~ 1/f; nothing at 0 Hz (no offset)
            f = torch.fft.rfftfreq(n)
            gain = torch.zeros_like(f)
            gain[1:] = f[1:].rsqrt()
            x = torch.fft.irfft(torch.fft.rfft(x) * gain, n)
    elif kind == "speech_shaped":
        voice = _fit_length(_voices(speech)[0], n, generator) if speech else clip
        spectrum = torch.fft.rfft(voice).abs()
        phase = 2 * math.pi * torch.rand(spectrum.shape, generator=generator)
        phase[0] = 0.0  # the 0 Hz bin (and the Nyquist bin of an even length) must stay real
        if n % 2 == 0:
            phase[-1] = 0.0
        x = torch.fft.irfft(torch.polar(spectrum, phase), n)
    elif kind == "babble":
        voices = _voices(speech)
        picks = torch.randint(len(voices), (talkers,), generator=generator).tolist()
        x = torch.zeros(n)
        for i in picks:
            part = _fit_length(voices[i], n, generator)
            x = x + part / part.pow(2).mean().sqrt().clamp_min(1e-12)
    else:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {', '.join(KINDS)}")
    return x * (rms(clip) / rms(x).clamp_min(1e-12))


def _voices(speech: Sequence) -> list[torch.Tensor]:
    """Speech clips: paths at their own rate, arrays at 16 kHz."""
    return [load_audio(s) if isinstance(s, (str, Path)) else load_audio(s, SAMPLE_RATE) for s in speech]


def rms(x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32).pow(2).mean().sqrt()


def _fit_length(x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` samples of ``x`` from a random start, looping it when it is shorter."""
    reps = math.ceil(n / len(x)) + 1
    start = int(torch.randint(len(x), (1,), generator=generator))
    return x.repeat(reps)[start : start + n]


def spectral_slope(
    x: torch.Tensor, sample_rate: int = SAMPLE_RATE, band: tuple[float, float] = (100.0, 6000.0)
) -> float:
    """dB per octave of the power spectrum of ``x`` within ``band`` Hz: a least-squares line
    through Welch's estimate (Hann windows of 2048 samples, half overlapping) against log2 f.
    White noise gives 0, pink -3.01."""
    x = torch.as_tensor(x, dtype=torch.float64)
    size = 2048
    if len(x) < 2 * size:
        raise ValueError(f"a spectral slope needs at least {2 * size} samples; got {len(x)}")
    segments = x.unfold(0, size, size // 2)
    power = torch.fft.rfft(segments * torch.hann_window(size, dtype=x.dtype), dim=-1).abs().pow(2).mean(0)
    f = torch.fft.rfftfreq(size, 1 / sample_rate, dtype=x.dtype)
    keep = (f >= band[0]) & (f <= band[1])
    octaves, level = f[keep].log2(), 10 * power[keep].log10()
    octaves = octaves - octaves.mean()
    return float((octaves * (level - level.mean())).sum() / octaves.pow(2).sum())
