"""What a caller passes, turned into what a model reads, for both families: token ids checked
and laid out one row per clip, clips checked against the 30 s window one pass sees, waveforms
into log-mel windows. Every error says what was wrong and what to do instead."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float, Int

from hooked_whisper.audio import (
    HOP_LENGTH,
    N_SAMPLES,
    SAMPLE_RATE,
    AudioInput,
    audio_clips,
    check_mel,
    is_single_clip,
    log_mel_spectrogram,
    pad_or_trim,
)

if TYPE_CHECKING:
    from hooked_whisper.model import HookedWhisper

TokensInput = torch.Tensor | Sequence[int] | Sequence[Sequence[int]] | str


@dataclass(frozen=True)
class AudioFeatures:
    """Log-mel windows and how many frames of each are audio (the rest is padding up to the
    window): what ``to_mel`` returns on every family, and what ``encode``, ``forward`` and
    ``tokens_for`` take as their audio. Whisper's encoder reads the padding too; Qwen2-Audio's
    hides it from self-attention, so there the frame count changes the result."""

    mel: Float[torch.Tensor, "batch n_mels frames"]
    n_frames: Int[torch.Tensor, " batch"]

    @property
    def shape(self) -> torch.Size:
        """The log-mel's shape, ``[batch, n_mels, frames]``."""
        return self.mel.shape

    def expand(self, batch: int, *_: int) -> AudioFeatures:
        """The same clip repeated ``batch`` times (as ``Tensor.expand`` on a mel)."""
        return AudioFeatures(self.mel.expand(batch, -1, -1), self.n_frames.expand(batch))

    def to(self, *args: Any, **kwargs: Any) -> AudioFeatures:
        """The log-mel moved or cast as ``Tensor.to`` does; the frame counts follow to its device."""
        mel = self.mel.to(*args, **kwargs)
        return AudioFeatures(mel, self.n_frames.to(mel.device))

    @property
    def n_audio_tokens(self) -> Int[torch.Tensor, " batch"]:
        """Audio positions each clip gives an audio LLM's language model (Qwen2-Audio): one per
        two encoder positions, counting only positions whose frames are audio."""
        return (encoder_positions(self.n_frames) - 2) // 2 + 1


def encoder_positions(n_frames: torch.Tensor) -> torch.Tensor:
    """Encoder positions (after the stride-2 convolution) that cover ``n_frames`` mel frames."""
    return (n_frames - 1) // 2 + 1


def check_tokens(
    tokens: TokensInput, d_vocab: int, device: torch.device, to_tokens: Callable[[str], torch.Tensor]
) -> Int[torch.Tensor, "batch pos"]:
    """Token ids (or text, through ``to_tokens``) as a ``[batch, pos]`` tensor on ``device``."""
    if isinstance(tokens, str):
        return to_tokens(tokens)
    empty = "tokens are empty: give at least the prompt's first token (model.prompt_tokens())"
    if isinstance(tokens, (list, tuple)) and len(tokens) == 0:
        raise ValueError(empty)
    tokens = torch.as_tensor(tokens, device=device)
    if tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"tokens must be integer ids, got {tokens.dtype}")
    if tokens.ndim not in (1, 2):
        raise ValueError(f"tokens are [pos] or [batch, pos]; got shape {tuple(tokens.shape)}")
    if tokens.shape[-1] == 0:
        raise ValueError(empty)
    outside = (tokens < 0) | (tokens >= d_vocab)
    if outside.any():
        raise ValueError(
            f"token id {int(tokens[outside][0])} is outside this model's vocabulary of {d_vocab} ids (0..{d_vocab - 1})"
        )
    return tokens if tokens.ndim == 2 else tokens.unsqueeze(0)


def rows_per_clip(tokens: Int[torch.Tensor, "batch pos"], n_clips: int) -> Int[torch.Tensor, "batch pos"]:
    """One row of ``tokens`` per clip: a single row serves every clip; any other count must match."""
    if tokens.shape[0] == 1 and n_clips > 1:
        tokens = tokens.expand(n_clips, -1)
    if tokens.shape[0] != n_clips:
        raise ValueError(f"{n_clips} clips but {tokens.shape[0]} token sequences")
    return tokens


def check_window(waveforms: Sequence[torch.Tensor], allow_long: bool = False, allow_empty: bool = True) -> None:
    """Refuse (never truncate) a clip longer than the 30 s one forward pass sees, unless
    ``allow_long`` asks for its first 30 s; and an empty clip unless ``allow_empty``."""
    for i, w in enumerate(waveforms):
        if w.shape[-1] > N_SAMPLES and not allow_long:
            raise ValueError(
                f"clip {i} lasts {w.shape[-1] / SAMPLE_RATE:.2f} s, over the 30 s window one forward pass sees; "
                "use model.transcribe() for long audio (HookedWhisper), or cut it into 30 s pieces (nothing is "
                "truncated silently)"
            )
        if w.shape[-1] == 0 and not allow_empty:
            raise ValueError(f"clip {i} is empty: this model reads 0-30 s of audio per clip")


def window_mels(
    waveforms: Sequence[torch.Tensor], n_mels: int, device: torch.device, dtype: torch.dtype
) -> Float[torch.Tensor, "batch n_mels 3000"]:
    """Each clip zero-padded (or cut) to 30 s in the audio domain, as log-mel features."""
    batch = torch.stack([pad_or_trim(w) for w in waveforms]).to(device)
    return log_mel_spectrogram(batch, n_mels).to(dtype)


def ready_mel(model: HookedWhisper, audio: AudioInput) -> Float[torch.Tensor, "batch n_mels frames"] | None:
    """``audio`` as a ``[batch, n_mels, n_frames]`` log-mel if it is one, else None. A 3-D array,
    or a 2-D one shaped like a mel of either official width, must fit the model."""
    if isinstance(audio, AudioFeatures):
        return audio.mel
    if not isinstance(audio, (np.ndarray, torch.Tensor)):
        return None
    shape, (n_mels, n_frames) = tuple(audio.shape), (model.cfg.n_mels, model.cfg.n_frames)
    looks_like_mel = len(shape) == 3 or (len(shape) == 2 and shape[1] == n_frames and shape[0] in (80, 128))
    if not looks_like_mel:
        return None
    if shape[-2:] != (n_mels, n_frames):
        other = {80: 128, 128: 80}.get(n_mels)
        raise ValueError(
            f"a log-mel input for this model is [batch, {n_mels}, {n_frames}]; got shape {shape}"
            + (f" (this model takes {n_mels} mel bins)" if shape[-2] == other else "")
        )
    mel = check_mel(torch.as_tensor(audio))
    return (mel if mel.ndim == 3 else mel.unsqueeze(0)).to(model.device, model.dtype)


def window_features(
    model: HookedWhisper, audio: AudioInput | AudioFeatures, sample_rate: int | None, allow_long: bool = False
) -> AudioFeatures:
    """Whisper's input: features as they are; a ready ``[batch, n_mels, n_frames]`` log-mel as
    all audio; else one 30 s window of log-mel per clip (over 30 s refused unless ``allow_long``
    asks for the first 30 s) with the frames its audio fills."""
    if isinstance(audio, AudioFeatures):
        return audio.to(model.device, model.dtype)
    mel = ready_mel(model, audio)
    if mel is not None:
        return AudioFeatures(mel, torch.full((mel.shape[0],), mel.shape[-1], device=mel.device))
    if model.cfg.n_frames != N_SAMPLES // HOP_LENGTH:
        raise ValueError(
            f"this model's encoder reads {model.cfg.n_frames} mel frames, not the 3000 of a 30 s waveform; "
            f"pass a log-mel [batch, {model.cfg.n_mels}, {model.cfg.n_frames}] instead of audio"
        )
    waveforms = audio_clips(audio, sample_rate)
    check_window(waveforms, allow_long)
    n_frames = [min(math.ceil(w.shape[-1] / HOP_LENGTH), model.cfg.n_frames) for w in waveforms]
    mel = window_mels(waveforms, model.cfg.n_mels, model.device, model.dtype)
    return AudioFeatures(mel, torch.tensor(n_frames, device=model.device))


def is_one_clip(model: HookedWhisper, audio: AudioInput) -> bool:
    """A path, a 1-D waveform, one multi-channel clip or one 2-D mel is one clip (results come
    unwrapped); lists and batched arrays are batches."""
    mel_shape = (model.cfg.n_mels, model.cfg.n_frames)
    if isinstance(audio, (np.ndarray, torch.Tensor)) and tuple(audio.shape) == mel_shape:
        return True
    return is_single_clip(audio)


def long_form_mels(model: HookedWhisper, audio: AudioInput, sample_rate: int | None) -> list[torch.Tensor]:
    """Per clip, the log-mel of the whole waveform followed by 30 s of silence (openai's
    long-form features); a ready 30 s mel gets ``n_frames`` zero frames appended instead."""
    mel = ready_mel(model, audio)
    if mel is not None:
        return [torch.nn.functional.pad(m, (0, model.cfg.n_frames)) for m in mel]
    return [
        log_mel_spectrogram(torch.nn.functional.pad(w.to(model.device), (0, N_SAMPLES)), model.cfg.n_mels).to(
            model.dtype
        )
        for w in audio_clips(audio, sample_rate)
    ]
