"""Cross-attention over time: each generated token (rows, at the position that predicted it)
against audio seconds (columns), per layer and head, over the clip's log-mel strip with the
word timestamps marked.

Whisper: the decoder's cross-attention to the encoder output (50 positions per second). An audio
LLM (HookedQwen2Audio) has no cross-attention: its language model reads the audio as embeddings
at the placeholder positions of its prompt, so the same view shows the language model's
self-attention from the generated tokens to those positions (25 per second). Columns cover the
clip; Whisper's padding up to 30 s is left out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hooked_whisper.hook_layout import POSITIONS_PER_SECOND
from hooked_whisper.hooked_audio_model import HookedAudioModel
from hooked_whisper.views.page import MAX_PAGE_CELLS, Axis, Heatmap, bin_time, numbered, time_bins
from hooked_whisper.views.runs import ClipRun, checked_layers, run_clip


def cross_attention_view(
    model: HookedAudioModel,
    audio,
    tokens=None,
    sample_rate: int | None = None,
    word_timestamps: bool = True,
    max_cells: int = MAX_PAGE_CELLS,
    layers: Sequence[int] | None = None,
) -> Heatmap:
    """Run ``model`` on one clip (its greedy transcript, or ``tokens``) and draw the attention
    from the text to the audio in every layer (or ``layers``). A page over ``max_cells`` values
    averages neighbouring audio positions into bins (``binned`` says how many): fewer layers
    keep finer bins."""
    layers = checked_layers(model, "decoder", layers)
    run = run_clip(model, audio, tokens, sample_rate, audio_reading_hooks(model, layers).__contains__)
    return cross_attention_heatmap(model, run, word_timestamps, max_cells, layers)


def audio_reading_hooks(model: HookedAudioModel, layers: Sequence[int]) -> list[str]:
    """The attention patterns of the heads that read the audio in ``layers`` (and Whisper's
    encoder output, for word timing)."""
    kind = "cross_attn" if model.has_cross_attention else "attn"
    names = [model.hook_name("decoder", l, f"{kind}.hook_pattern") for l in layers]
    return names + (["hook_encoder_out"] if model.has_cross_attention else [])


def cross_attention_heatmap(
    model: HookedAudioModel,
    run: ClipRun,
    word_timestamps: bool = True,
    max_cells: int = MAX_PAGE_CELLS,
    layers: Sequence[int] | None = None,
) -> Heatmap:
    rows = list(run.text_positions())
    layers = checked_layers(model, "decoder", layers)
    names = audio_reading_hooks(model, layers)[: len(layers)]
    if model.has_cross_attention:
        unit = "audio_position"
        audio_keys = torch.arange(model.real_position_count(unit, run.wave.shape[0]))
    else:
        unit = "audio_token"
        audio_keys = model.audio_slot(run.tokens).nonzero().flatten()  # not placeholders it generated
    patterns = np.stack([run.cache[name][0][:, rows][:, :, audio_keys].float().cpu().numpy() for name in names])
    factor = time_bins(patterns.shape[0] * patterns.shape[1], len(rows), len(audio_keys), 1, max_cells)
    labels = model.to_str_tokens(run.tokens[run.first_text :])
    which = "cross-attention" if model.has_cross_attention else "language-model attention to the audio positions"
    return Heatmap(
        bin_time(patterns, factor, axis=-1).astype(np.float32),
        rows=Axis("token", list(labels)),
        cols=Axis("audio (s)", seconds_per_step=factor / POSITIONS_PER_SECOND[unit]),
        selectors=[Axis("layer", [str(l) for l in layers]), Axis("head", numbered(patterns.shape[1]))],
        title=which,
        value_name="attention",
        marks=word_marks(model, run) if word_timestamps else [],
        mel=run.mel,
        binned=factor,
    )


def word_marks(model: HookedAudioModel, run: ClipRun) -> list[tuple[float, float, str]]:
    """Word timestamps from the alignment heads (Whisper); an audio LLM has none to give."""
    if not model.has_cross_attention:
        return []
    from hooked_whisper.decoding.timing import word_alignment

    text = [int(t) for t in run.tokens[run.first_text :] if t < model.special.eot]
    if not text:
        return []
    language = model.tokenizer.language_code(int(run.tokens[1])) if model.cfg.is_multilingual else None
    frames = run.mel.shape[1]
    alignment = word_alignment(model, run.cache["hook_encoder_out"], text, frames, language)
    return [(w.start, w.end, w.word.strip()) for w in alignment.words]
