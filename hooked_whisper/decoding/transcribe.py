"""Transcription of audio of any length, following openai-whisper's ``transcribe``.

The audio is cut into 30 s windows one after another. Each window is decoded at temperature 0
first; when the result looks wrong (compressing better than 2.4, or averaging below -1.0 log-prob
per token, unless the window is probably silent) it is decoded again at the next temperature.
A window whose no-speech probability is above 0.6 (and whose text is not confident) is skipped.
With timestamps, the next window starts at the last complete segment's end ("seek"), and the
text written so far is given to the decoder as the previous text (unless a high temperature was
needed). One deliberate difference: the encoder runs once per window, not once per attempt.

Two choices go beyond openai's algorithm:

- ``fallback="loop-aware"`` (the default) stops an attempt as soon as its text loops and moves
  to the next temperature, where openai's decodes the loop to the 224-token cap first and then
  rejects it for compressing too well. A window whose last attempt still loops keeps the text
  up to the loop's first copy and is given up (the next window starts after it). Attempts that
  do not loop are decoded exactly as openai's; ``fallback="openai"`` runs its algorithm as is.
- Several clips decode together (``batch_size``): each keeps its own position, previous text and
  fallback, and clips leave the batch as they finish. Prompts of different lengths are
  left-padded and the padding is hidden from the decoder, so each clip gets the text it gets
  alone. Sampling draws from a generator per clip, window and attempt, so the same seed gives
  the same text whether a clip is decoded alone or in a batch, and in either fallback mode.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from hooked_whisper.audio import FRAMES_PER_SECOND, HOP_LENGTH, SAMPLE_RATE
from hooked_whisper.decoding.repetition import compression_ratio, loop_start
from hooked_whisper.decoding.results import Segment, Transcript, Window
from hooked_whisper.decoding.search import DecodingOptions, WindowResult, decode_window, detect_language
from hooked_whisper.decoding.timing import add_word_timestamps
from hooked_whisper.decoding_options import LONG_FORM_OPTIONS
from hooked_whisper.tokenizer import TIME_PRECISION

if TYPE_CHECKING:
    from hooked_whisper.model import HookedWhisper

N_FRAMES = 3000  # mel frames in one window
FRAMES_PER_TOKEN = 2  # mel frames per encoder position (and per timestamp step)


FALLBACKS = ("loop-aware", "openai")


@dataclass
class LongFormSettings:
    """What every window of every clip is decoded with (``transcribe``'s options)."""

    base: DecodingOptions
    temperatures: list[float]
    compression_ratio_threshold: float | None
    logprob_threshold: float | None
    no_speech_threshold: float | None
    condition_on_previous_text: bool
    word_timestamps: bool
    loop_aware: bool
    seed: int | None

    def attempt(self, model: HookedWhisper, index: int) -> DecodingOptions:
        """The options of attempt ``index``: beam search at temperature 0, sampling above; in
        loop-aware mode greedy and sampled attempts stop once they loop."""
        t = self.temperatures[index]
        options = replace(
            self.base,
            temperature=t,
            beam_size=self.base.beam_size if t == 0 else None,
            patience=self.base.patience if t == 0 else None,
            best_of=self.base.best_of if t > 0 else None,
        )
        if self.loop_aware and options.beam_size is None and not options.stop_on_loop:
            ts = model.special.timestamp_begin
            options = replace(options, stop_on_loop=lambda tokens: loop_start(tokens, ts) is not None)
        return options

    def needs_retry(self, result: WindowResult) -> bool:
        """openai's test for a failed attempt, plus: a loop cut short has failed."""
        too_repetitive = result.looped or (
            self.compression_ratio_threshold is not None and result.compression_ratio > self.compression_ratio_threshold
        )
        too_unlikely = self.logprob_threshold is not None and result.avg_logprob < self.logprob_threshold
        silent = self.no_speech_threshold is not None and result.no_speech_prob > self.no_speech_threshold
        return (too_repetitive or too_unlikely) and not (silent and too_unlikely)


class ClipTranscription:
    """One clip's long-form state: where its next window starts, what it has written so far,
    and which temperature its current window is being tried at."""

    def __init__(self, model: HookedWhisper, mel: torch.Tensor, settings: LongFormSettings, initial: list[int]):
        self.model, self.mel, self.settings = model, mel, settings
        self.content_frames = mel.shape[-1] - N_FRAMES
        self.language = settings.base.language if model.cfg.is_multilingual else "en"
        self.seek, self.all_tokens, self.n_initial = 0, list(initial), len(initial)
        self.prompt_reset_since, self.last_speech = 0, 0.0
        self.segments: list[Segment] = []
        self.windows: list[Window] = []
        self.encoder_out: torch.Tensor | None = None  # [1, 1500, d_model] of the current window
        self.attempt = 0
        self.size = 0

    @property
    def done(self) -> bool:
        return self.seek >= self.content_frames

    @property
    def time_offset(self) -> float:
        return self.seek * HOP_LENGTH / SAMPLE_RATE

    def window(self, seek: int | None = None, size: int | None = None) -> torch.Tensor:
        """The log-mel window ``[n_mels, 3000]`` starting at ``seek`` (default: the next one),
        zero-padded past ``size`` frames of content."""
        seek = self.seek if seek is None else seek
        size = min(N_FRAMES, self.content_frames - seek) if size is None else size
        part = self.mel[:, seek : seek + size]
        return torch.nn.functional.pad(part, (0, N_FRAMES - part.shape[-1]))

    def start_window(self, encoder_out: torch.Tensor) -> None:
        self.size = min(N_FRAMES, self.content_frames - self.seek)
        self.encoder_out, self.attempt = encoder_out, 0

    def previous_text(self) -> list[int]:
        return self.all_tokens[self.prompt_reset_since :]

    def generator(self) -> torch.Generator | None:
        """Its own draws for this window and attempt: the same whatever else shares the batch."""
        if self.settings.seed is None:
            return None
        seed = (self.settings.seed * 1_000_003 + self.seek) * 16 + self.attempt
        return torch.Generator(self.model.device).manual_seed(seed)

    def finish_attempt(self, result: WindowResult) -> int:
        """Keep ``result`` or ask for the next temperature; returns the frames the clip advanced."""
        if self.settings.needs_retry(result) and self.attempt + 1 < len(self.settings.temperatures):
            self.attempt += 1
            return 0
        previous_seek = self.seek
        self.keep(result)
        self.encoder_out = None
        return min(self.content_frames, self.seek) - previous_seek

    def keep(self, result: WindowResult) -> None:
        """Turn the window's kept attempt into segments and move to the next window."""

        model, settings, s = self.model, self.settings, self.model.special
        seek, size, time_offset = self.seek, self.size, self.time_offset
        skip = settings.no_speech_threshold is not None and result.no_speech_prob > settings.no_speech_threshold
        skip &= settings.logprob_threshold is None or result.avg_logprob <= settings.logprob_threshold
        if result.looped and not skip:
            result = _cut_loop(model, result)
        self.windows.append(
            Window(
                time_offset,
                (seek + size) * HOP_LENGTH / SAMPLE_RATE,
                result.no_speech_prob,
                result.avg_logprob,
                result.compression_ratio,
                result.temperature,
                skip,
                result.looped and not skip,
            )
        )
        if skip:
            self.seek += size  # silence: no segments from this window
            return

        current, self.seek = _split_segments(model, result, seek, size, time_offset)
        if settings.word_timestamps:
            assert self.encoder_out is not None
            self.last_speech = add_word_timestamps(model, current, self.encoder_out, size, result, self.last_speech)
            if current[-1].words is not None and not _single_timestamp_ending(result.tokens, s.timestamp_begin):
                ends = [w.end for seg in current for w in seg.words or []]
                if ends and ends[-1] > time_offset:
                    self.seek = round(ends[-1] * FRAMES_PER_SECOND)
        if result.looped:
            self.seek = seek + size  # the decoder was not reading this window: give it up
        for seg in current:
            if seg.start == seg.end or not seg.text.strip():
                seg.text, seg.tokens = "", []
                seg.words = [] if settings.word_timestamps else None
        for i, seg in enumerate(current, start=len(self.segments)):
            seg.id = i
        self.segments.extend(current)
        self.all_tokens.extend(t for seg in current for t in seg.tokens)
        if not settings.condition_on_previous_text or result.temperature > 0.5:
            self.prompt_reset_since = len(self.all_tokens)

    def transcript(self) -> Transcript:
        tokens = self.all_tokens[self.n_initial :]
        return Transcript(
            text=self.model.tokenizer.text(tokens),
            tokens=tokens,
            language=self.language or "en",
            segments=self.segments,
            windows=self.windows,
        )


def long_form_options(
    options: DecodingOptions | None, keywords: dict[str, Any]
) -> tuple[DecodingOptions, dict[str, Any]]:
    """Split ``transcribe``'s keywords: ``DecodingOptions`` fields are merged into ``options``
    (default ``LONG_FORM_OPTIONS``); the rest are the long-form settings ``transcribe`` takes."""
    names = {f.name for f in fields(DecodingOptions)}
    merged = DecodingOptions.merged(options or LONG_FORM_OPTIONS, {k: v for k, v in keywords.items() if k in names})
    if merged.prompt is not None or merged.prefix is not None:
        raise ValueError(
            "transcribe writes each window's prompt from the text before it: pass initial_prompt= instead of "
            "prompt= or prefix="
        )
    return merged, {k: v for k, v in keywords.items() if k not in names}


def transcribe(
    model: HookedWhisper,
    mels: list[torch.Tensor],
    options: DecodingOptions = LONG_FORM_OPTIONS,
    *,
    word_timestamps: bool = False,
    compression_ratio_threshold: float | None = 2.4,
    logprob_threshold: float | None = -1.0,
    no_speech_threshold: float | None = 0.6,
    condition_on_previous_text: bool = True,
    initial_prompt: str | None = None,
    fallback: str = "loop-aware",
    batch_size: int = 1,
    seed: int | None = 0,
    progress: bool | None = None,
) -> list[Transcript]:
    """Transcribe clips from their log-mels ``[n_mels, frames + 3000]`` each: the features of
    the whole waveform followed by 30 s of silence (``HookedWhisper.transcribe`` builds them).

    ``options`` says how each window is decoded (its ``temperature`` may be the fallback
    schedule); the keywords are the long-form settings: ``batch_size`` clips are decoded
    together; ``fallback`` is ``"loop-aware"`` or ``"openai"`` (see the module's docstring);
    ``seed`` seeds the sampling used by temperature fallback, so results repeat; ``progress``
    shows a bar (default: for more than one window)."""
    temperature = options.temperature
    temperatures = [temperature] if isinstance(temperature, (int, float)) else list(temperature)
    if not temperatures or any(not math.isfinite(t) or t < 0 for t in temperatures):
        raise ValueError(f"temperature must be one number >= 0 or a non-empty sequence of them, got {temperature!r}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    settings = LongFormSettings(
        base=replace(options, max_new_tokens=options.max_new_tokens or model.cfg.n_text_ctx // 2),
        temperatures=temperatures,
        compression_ratio_threshold=compression_ratio_threshold,
        logprob_threshold=logprob_threshold,
        no_speech_threshold=no_speech_threshold,
        condition_on_previous_text=condition_on_previous_text,
        word_timestamps=word_timestamps,
        loop_aware=fallback == "loop-aware",
        seed=seed,
    )
    for index in range(len(temperatures)):  # every attempt's options, checked before any audio is encoded
        settings.attempt(model, index).check(model)

    initial = _as_prompt(model, initial_prompt)
    clips = [ClipTranscription(model, mel, settings, initial) for mel in mels]
    # Longest first, so that the clips sharing a batch need about as many windows as each other
    # (results come back in the caller's order).
    waiting, active = sorted(clips, key=lambda c: c.content_frames), []
    total = sum(c.content_frames for c in clips)
    show = progress if progress is not None else total > N_FRAMES
    with tqdm(total=total, unit="frames", disable=not show) as bar:
        while waiting or active:
            while waiting and len(active) < batch_size:
                active.append(waiting.pop())
            _encode_next_windows(model, [c for c in active if c.encoder_out is None and not c.done])
            by_attempt: dict[int, list[ClipTranscription]] = defaultdict(list)
            for clip in active:
                if not clip.done:
                    by_attempt[clip.attempt].append(clip)
            for attempt, group in sorted(by_attempt.items()):
                if attempt > 0 and show:
                    where = ", ".join(f"{c.time_offset:.1f} s" for c in group)
                    bar.set_postfix_str(f"window at {where}: retrying at temperature {temperatures[attempt]}")
                results = decode_window(
                    model,
                    torch.cat([c.encoder_out for c in group]),  # type: ignore[misc]
                    settings.attempt(model, attempt),
                    previous=[c.previous_text() for c in group],
                    languages=[c.language for c in group],
                    generators=[c.generator() for c in group],
                )
                for clip, result in zip(group, results):
                    bar.update(clip.finish_attempt(result))
            active = [c for c in active if not c.done]
    return [c.transcript() for c in clips]


def _encode_next_windows(model: HookedWhisper, clips: list[ClipTranscription]) -> None:
    """Encode the next window of each of ``clips`` in one batch. A multilingual clip of unknown
    language first has it detected from its first 30 s of features as they are
    (silence-padded audio), which is also its first window when the audio fills it."""
    if not clips:
        return
    undetected = [c for c in clips if c.language is None]
    if undetected:
        first = model.encode(torch.stack([c.window(0, N_FRAMES) for c in undetected]))
        for i, language in enumerate(detect_language(model, model.new_decoder_cache(first))):
            undetected[i].language = language
            if undetected[i].content_frames >= N_FRAMES:  # that was its first window
                undetected[i].start_window(first[i : i + 1])
    fresh = [c for c in clips if c.encoder_out is None]
    if fresh:
        encoded = model.encode(torch.stack([c.window() for c in fresh]))
        for i, clip in enumerate(fresh):
            clip.start_window(encoded[i : i + 1])


def _cut_loop(model: HookedWhisper, result: WindowResult) -> WindowResult:
    """The looping attempt kept up to the end of the loop's first copy."""
    end = loop_start(result.tokens, model.special.timestamp_begin)
    tokens = result.tokens if end is None else result.tokens[:end]
    text = model.tokenizer.text(tokens).strip()
    return replace(result, tokens=tokens, text=text, compression_ratio=compression_ratio(text))


def _as_prompt(model: HookedWhisper, initial_prompt: str | None) -> list[int]:
    return model.tokenizer.encode(" " + initial_prompt.strip()) if initial_prompt else []


def _single_timestamp_ending(tokens: list[int], timestamp_begin: int) -> bool:
    return len(tokens) >= 2 and tokens[-2] < timestamp_begin <= tokens[-1]


def _split_segments(
    model: HookedWhisper, result: WindowResult, seek: int, size: int, time_offset: float
) -> tuple[list[Segment], int]:
    """Cut a window's tokens into segments at each pair of timestamps; return them and the
    next window's start (the last complete segment's end, or the end of this window)."""
    ts = model.special.timestamp_begin
    tokens = result.tokens
    is_ts = [t >= ts for t in tokens]
    # Positions right after two timestamps in a row: a segment ends and the next one begins.
    cuts = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    single_ending = _single_timestamp_ending(tokens, ts)

    def segment(part: list[int], start: float, end: float) -> Segment:
        text_tokens = [t for t in part if t < model.special.eot]
        text = model.tokenizer.text(text_tokens)
        return Segment(
            id=0,
            seek=seek,
            start=start,
            end=end,
            text=text,
            tokens=part,
            temperature=result.temperature,
            avg_logprob=result.avg_logprob,
            compression_ratio=result.compression_ratio,
            no_speech_prob=result.no_speech_prob,
        )

    if cuts:
        if single_ending:
            cuts.append(len(tokens))
        out, last = [], 0
        for cut in cuts:
            part = tokens[last:cut]
            start, end = ((t - ts) * TIME_PRECISION + time_offset for t in (part[0], part[-1]))
            out.append(segment(part, start, end))
            last = cut
        next_seek = seek + size if single_ending else seek + (tokens[last - 1] - ts) * FRAMES_PER_TOKEN
        return out, next_seek
    duration = size * HOP_LENGTH / SAMPLE_RATE
    stamps = [t for t in tokens if t >= ts]
    if stamps and stamps[-1] != ts:
        duration = (stamps[-1] - ts) * TIME_PRECISION
    return [segment(tokens, time_offset, time_offset + duration)], seek + size
