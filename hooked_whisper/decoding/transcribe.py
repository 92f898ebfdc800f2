"""Transcription of audio of any length, following openai-whisper's ``transcribe``.

The audio is cut into 30 s windows one after another. Each window is decoded at temperature 0
first; when the result looks wrong (compressing better than 2.4, or averaging below -1.0 log-prob
per token, unless the window is probably silent) it is decoded again at the next temperature.
A window whose no-speech probability is above 0.6 (and whose text is not confident) is skipped.
With timestamps, the next window starts at the last complete segment's end ("seek"), and the
text written so far is given to the decoder as the previous text (unless a high temperature was
needed). One deliberate difference: the encoder runs once per window, not once per attempt.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from hooked_whisper.audio import FRAMES_PER_SECOND, HOP_LENGTH, SAMPLE_RATE
from hooked_whisper.decoding.search import DecodingOptions, WindowResult, decode_window, detect_language
from hooked_whisper.tokenizer import TIME_PRECISION

if TYPE_CHECKING:
    from hooked_whisper.model import HookedWhisper

N_FRAMES = 3000  # mel frames in one window
FRAMES_PER_TOKEN = 2  # mel frames per encoder position (and per timestamp step)
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class Word:
    word: str
    start: float
    end: float
    probability: float


@dataclass
class Segment:
    id: int
    seek: int  # mel frame where its window started
    start: float  # seconds
    end: float
    text: str
    tokens: list[int]  # text and timestamp tokens
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] | None = None


@dataclass
class Window:
    """One decoded 30 s window, kept whether or not it produced segments."""

    start: float  # seconds
    end: float
    no_speech_prob: float
    avg_logprob: float
    compression_ratio: float
    temperature: float  # of the attempt that was kept
    skipped: bool  # judged silent: no segments were made from it


@dataclass
class Transcript:
    text: str
    tokens: list[int]  # every segment's tokens in order (timestamps included when predicted)
    language: str | None = None
    segments: list[Segment] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict:
        return asdict(self)


def transcribe(
    model: HookedWhisper,
    mel: torch.Tensor,
    *,
    language: str | None = None,
    task: str = "transcribe",
    timestamps: bool = True,
    word_timestamps: bool = False,
    temperature: float | Sequence[float] = TEMPERATURES,
    compression_ratio_threshold: float | None = 2.4,
    logprob_threshold: float | None = -1.0,
    no_speech_threshold: float | None = 0.6,
    condition_on_previous_text: bool = True,
    initial_prompt: str | None = None,
    beam_size: int | None = None,
    patience: float | None = None,
    best_of: int | None = None,
    length_penalty: float | None = None,
    max_new_tokens: int | None = None,
    stop_on_loop: bool | Callable[[list[int]], bool] = False,
    seed: int | None = 0,
    progress: bool | None = None,
) -> Transcript:
    """Transcribe one clip from its log-mel ``[n_mels, frames + 3000]``: the features of the
    whole waveform followed by 30 s of silence (``HookedWhisper.transcribe`` builds it).

    ``seed`` seeds the sampling used by temperature fallback, so results repeat; ``progress``
    shows a bar (default: for audio longer than one window)."""
    from hooked_whisper.decoding.timing import add_word_timestamps

    s = model.special
    content_frames = mel.shape[-1] - N_FRAMES
    temperatures = [temperature] if isinstance(temperature, (int, float)) else list(temperature)
    if not temperatures or any(not math.isfinite(t) or t < 0 for t in temperatures):
        raise ValueError(f"temperature must be one number >= 0 or a non-empty sequence of them, got {temperature!r}")
    generator = None if seed is None else torch.Generator(model.device).manual_seed(seed)
    base_options = DecodingOptions(
        language=language,
        task=task,
        timestamps=timestamps,
        beam_size=beam_size,
        patience=patience,
        best_of=best_of,
        length_penalty=length_penalty,
        max_new_tokens=max_new_tokens or model.cfg.n_text_ctx // 2,
        stop_on_loop=stop_on_loop,
    )

    def attempt_options(t: float, prompt: list[int] | None = None) -> DecodingOptions:
        """The options of the attempt at temperature ``t``: beam search at 0, sampling above."""
        return replace(
            base_options,
            temperature=t,
            prompt=prompt,
            beam_size=base_options.beam_size if t == 0 else None,
            patience=base_options.patience if t == 0 else None,
            best_of=base_options.best_of if t > 0 else None,
        )

    for t in temperatures:  # every attempt's options, checked before any audio is encoded
        attempt_options(t).check(model)

    def window(seek: int, size: int) -> torch.Tensor:
        part = mel[:, seek : seek + size]
        return torch.nn.functional.pad(part, (0, N_FRAMES - part.shape[-1]))[None]

    # Language detection reads the first 30 s of features as they are (silence-padded audio);
    # when the audio fills that window it is also the first window decoded, so it is encoded once.
    first_window: torch.Tensor | None = None
    if model.cfg.is_multilingual and language is None:
        first_window = model.encode(window(0, N_FRAMES))
        base_options.language = detect_language(model, model.new_decoder_cache(first_window))[0]

    def decode_with_fallback(encoder_out: torch.Tensor, prompt: list[int]) -> WindowResult:
        result = None
        for attempt, t in enumerate(temperatures):
            if show and attempt > 0:
                bar.set_postfix_str(f"window at {time_offset:.1f} s: retrying at temperature {t}")
            result = decode_window(model, encoder_out, attempt_options(t, prompt), generator)[0]
            too_repetitive = (
                compression_ratio_threshold is not None and result.compression_ratio > compression_ratio_threshold
            )
            too_unlikely = logprob_threshold is not None and result.avg_logprob < logprob_threshold
            silent = no_speech_threshold is not None and result.no_speech_prob > no_speech_threshold
            if not (too_repetitive or too_unlikely) or (silent and too_unlikely):
                break
        assert result is not None
        return result

    seek, all_tokens, segments, windows = 0, _as_prompt(model, initial_prompt), [], []
    n_initial = len(all_tokens)
    prompt_reset_since = 0
    last_speech = 0.0
    show = progress if progress is not None else content_frames > N_FRAMES
    with tqdm(total=content_frames, unit="frames", disable=not show) as bar:
        while seek < content_frames:
            time_offset = seek * HOP_LENGTH / SAMPLE_RATE
            size = min(N_FRAMES, content_frames - seek)
            mel_window = window(seek, size)
            reuse = seek == 0 and size == N_FRAMES and first_window is not None
            encoder_out = first_window if reuse else model.encode(mel_window)
            result = decode_with_fallback(encoder_out, all_tokens[prompt_reset_since:])
            previous_seek = seek
            skip = no_speech_threshold is not None and result.no_speech_prob > no_speech_threshold
            skip &= logprob_threshold is None or result.avg_logprob <= logprob_threshold
            windows.append(
                Window(
                    time_offset,
                    (seek + size) * HOP_LENGTH / SAMPLE_RATE,
                    result.no_speech_prob,
                    result.avg_logprob,
                    result.compression_ratio,
                    result.temperature,
                    skip,
                )
            )
            if skip:
                seek += size  # silence: no segments from this window
                bar.update(min(content_frames, seek) - previous_seek)
                continue

            current, seek = _split_segments(model, result, seek, size, time_offset)
            if word_timestamps:
                last_speech = add_word_timestamps(model, current, encoder_out, size, result, last_speech)
                if current[-1].words is not None and not _single_timestamp_ending(result.tokens, s.timestamp_begin):
                    ends = [w.end for seg in current for w in seg.words or []]
                    if ends and ends[-1] > time_offset:
                        seek = round(ends[-1] * FRAMES_PER_SECOND)
            for seg in current:
                if seg.start == seg.end or not seg.text.strip():
                    seg.text, seg.tokens = "", []
                    seg.words = [] if word_timestamps else None
            for i, seg in enumerate(current, start=len(segments)):
                seg.id = i
            segments.extend(current)
            all_tokens.extend(t for seg in current for t in seg.tokens)
            if not condition_on_previous_text or result.temperature > 0.5:
                prompt_reset_since = len(all_tokens)
            bar.update(min(content_frames, seek) - previous_seek)

    tokens = all_tokens[n_initial:]
    text = model.tokenizer.text(tokens)
    language = base_options.language or "en"
    return Transcript(text=text, tokens=tokens, language=language, segments=segments, windows=windows)


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
