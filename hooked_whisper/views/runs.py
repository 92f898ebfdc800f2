"""One clip through either family, as the views read it: its waveform, its log-mel strip, the
tokens the decoder (or the audio LLM's language model) read, where the generated text starts,
and the cache of the hooks a view asked for."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hooked_whisper.audio import SAMPLE_RATE, audio_clips
from hooked_whisper.hooked_audio_model import HookedAudioModel
from hooked_whisper.inputs import AudioFeatures
from hooked_whisper.views.page import mel_strip


@dataclass
class ClipRun:
    wave: torch.Tensor  # [samples] at 16 kHz
    mel: np.ndarray  # [n_mels, frames]: the clip's log-mel, padding cut off
    tokens: torch.Tensor  # [pos]: prompt, then the generated text
    first_text: int  # position of the first generated token
    cache: Any  # the family's activation cache

    @property
    def seconds(self) -> float:
        return self.wave.shape[0] / SAMPLE_RATE

    def text_positions(self) -> range:
        """The positions that predict each generated token (one before it)."""
        return range(self.first_text - 1, len(self.tokens) - 1)


def run_clip(
    model: HookedAudioModel,
    audio,
    tokens=None,
    sample_rate: int | None = None,
    names_filter: Callable[[str], bool] | None = None,
) -> ClipRun:
    """Run one clip with a cache of the hooks ``names_filter`` keeps. Without ``tokens`` the
    model's own greedy transcript is read (Whisper: prompt + transcript; an audio LLM: the
    transcription chat prompt + its greedy answer)."""
    wave, features, mel = one_window(model, audio, sample_rate)
    keep = names_filter or (lambda name: True)
    if model.has_cross_attention:
        _, cache = model.run_with_cache(
            wave, tokens, names_filter=lambda n: keep(n) or n == "hook_tokens", sample_rate=SAMPLE_RATE
        )
        read = cache["hook_tokens"][0]
        first_text = model.prompt_length(read)
    else:
        prompt = model.tokens_for(features, None)[0]
        # A caller's tokens laid out as the model reads them: one row, its audio slot expanded to the clip.
        read = (
            model.generate(wave, sample_rate=SAMPLE_RATE)[0]
            if tokens is None
            else model.tokens_for(features, tokens)[0]
        )
        if len(read) >= len(prompt) and torch.equal(read[: len(prompt)], prompt):
            first_text = len(prompt)
        else:  # a prompt of the caller's: the text starts after the audio (and its closing token)
            first_text = int(model.audio_slot(read).nonzero().max()) + 2
        _, cache = model.run_with_cache(wave, read[None], names_filter=keep, sample_rate=SAMPLE_RATE)
    if first_text >= len(read):
        raise ValueError("the tokens hold no generated text after the prompt: nothing to show per token")
    return ClipRun(wave, mel, read.cpu(), first_text, cache)


def one_window(
    model: HookedAudioModel, audio, sample_rate: int | None = None
) -> tuple[torch.Tensor, AudioFeatures, np.ndarray]:
    """One clip of at most 30 s: its waveform, the model's features of it and its log-mel strip."""
    waves = audio_clips(audio, sample_rate)
    if len(waves) != 1:
        raise ValueError(f"a view reads one clip at a time, got {len(waves)}: pass one path or one waveform")
    wave = waves[0]
    if wave.shape[0] > 30 * SAMPLE_RATE:
        raise ValueError("a view reads one 30 s window: cut the clip to its first 30 s (or the part to look at)")
    features = model.to_mel(wave, SAMPLE_RATE)
    return wave, features, mel_strip(features.mel[0], wave.shape[0] / SAMPLE_RATE)


def checked_layers(model: HookedAudioModel, stack: str, layers: Sequence[int] | None) -> list[int]:
    n = model.layer_count(stack)
    layers = list(range(n)) if layers is None else list(layers)
    if not layers or any(not 0 <= l < n for l in layers):
        raise ValueError(f"layers must be a non-empty list of {stack} layers in 0..{n - 1}, got {layers}")
    return layers
