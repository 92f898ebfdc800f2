"""What ``HookedWhisper`` binds as ``generate``, ``detect_language`` and ``transcribe`` (the
openai-whisper idiom: the class holds the network, these functions the work around it). Each
takes audio as the model's ``to_mel`` does and one frozen ``DecodingOptions``, whose fields
keywords may override; none re-lists those fields."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int

from hooked_whisper.audio import AudioInput
from hooked_whisper.decoding.results import Transcript
from hooked_whisper.decoding.search import DecodingOptions, decode_window, language_probs, padded_tokens
from hooked_whisper.decoding.transcribe import long_form_options, transcribe
from hooked_whisper.hooked_audio_model import serialised
from hooked_whisper.inputs import is_one_clip, long_form_mels

if TYPE_CHECKING:
    from hooked_whisper.model import HookedWhisper


@torch.no_grad()
@serialised
def generate(
    model: HookedWhisper,
    audio: AudioInput,
    options: DecodingOptions | None = None,
    *,
    seed: int | None = None,
    fwd_hooks: list | None = None,
    sample_rate: int | None = None,
    **overrides: Any,
) -> Int[torch.Tensor, "batch pos"]:
    """Decode one 30 s window per clip; returns prompt + generated tokens ``[batch, pos]``,
    each row ending with end-of-text and padded with it, ready for ``run_with_cache``.

    ``options`` is a ``DecodingOptions``; keywords (``language``, ``beam_size``,
    ``temperature``, ``max_new_tokens``...) override its fields. Greedy by default (token for
    token what Hugging Face ``generate`` writes, with or without ``timestamps``); ``beam_size``
    runs openai-whisper's beam search, ``temperature > 0`` samples (``best_of`` samples, the
    most likely kept; ``seed`` makes it repeatable). ``fwd_hooks`` apply at every step; the
    language is detected per clip when not given.
    """
    options = DecodingOptions.merged(options, overrides)
    options.check(model)
    generator = None if seed is None else torch.Generator(model.device).manual_seed(seed)
    mel = model.to_mel(audio, sample_rate)
    with model.hooks(fwd_hooks=fwd_hooks or []):
        results = decode_window(model, model.encode(mel), options, generator)
    return padded_tokens(results, model.special.eot).to(model.device)


@torch.no_grad()
def greedy_tokens(model: HookedWhisper, encoder_out: torch.Tensor) -> Int[torch.Tensor, "batch pos"]:
    """The prompt plus each clip's greedy transcript, without the final end-of-text (so the last
    position predicts it): what ``run_with_cache(audio)`` runs the decoder on."""
    results = decode_window(model, encoder_out, DecodingOptions())
    return padded_tokens(results, model.special.eot, include_eot=False).to(model.device)


@torch.no_grad()
@serialised
def detect_language(
    model: HookedWhisper, audio: AudioInput, sample_rate: int | None = None
) -> dict[str, float] | list[dict[str, float]]:
    """P(language) for each clip (from its first 30 s), most likely first."""
    if not model.cfg.is_multilingual:
        raise ValueError("this English-only model has no language tokens to detect a language with")
    mel = model.to_mel(audio, sample_rate, allow_long=True)
    probs = language_probs(model, model.new_decoder_cache(model.encode(mel)))
    ranked = [dict(sorted(p.items(), key=lambda kv: -kv[1])) for p in probs]
    return ranked[0] if is_one_clip(model, audio) else ranked


@torch.no_grad()
@serialised
def transcribe_audio(
    model: HookedWhisper,
    audio: AudioInput,
    options: DecodingOptions | None = None,
    *,
    fwd_hooks: list | None = None,
    sample_rate: int | None = None,
    **settings: Any,
) -> Transcript | list[Transcript]:
    """Transcribe audio of any length, as openai-whisper's ``transcribe`` does (30 s windows
    in sequence, temperature fallback, no-speech skipping, previous text as prompt); see
    ``hooked_whisper.decoding.transcribe``. ``options`` and keywords naming its fields say how
    each window is decoded (``temperature`` may be the fallback schedule); other keywords
    (``word_timestamps``, ``batch_size``, ``fallback``, thresholds, ``initial_prompt``, ``seed``,
    ``progress``) are the long-form settings. ``fwd_hooks`` apply to every forward pass.
    Returns a ``Transcript`` for one clip, a list for several."""
    options, settings = long_form_options(options, settings)
    if options.language is not None or options.task != "transcribe":  # reported before any audio work
        model.prompt_tokens(options.language or "en", options.task)
    mels = long_form_mels(model, audio, sample_rate)
    with model.hooks(fwd_hooks=fwd_hooks or []):
        results = transcribe(model, mels, options, **settings)
    return results[0] if is_one_clip(model, audio) else results
