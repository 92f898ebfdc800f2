"""Word timestamps from cross-attention, as openai-whisper computes them.

A few decoder heads (the checkpoint's ``alignment_heads``) attend to the audio frames being
spoken. Their cross-attention over a teacher-forced pass of the transcript, normalised per frame
and median-filtered, is averaged into a [token, frame] matrix; dynamic time warping finds the
monotonic path through it, and each word starts where the path first reaches its first token.
``word_alignment`` returns that matrix too, since it is an attention pattern worth plotting.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from hooked_whisper.audio import HOP_LENGTH, SAMPLE_RATE
from hooked_whisper.decoding.results import Segment, Word
from hooked_whisper.tokenizer import TIME_PRECISION

if TYPE_CHECKING:
    from hooked_whisper.decoding.search import WindowResult
    from hooked_whisper.model import HookedWhisper

PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"
NO_SPACE_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}


@dataclass
class WordTiming:
    word: str
    tokens: list[int]
    start: float  # seconds from the window start
    end: float
    probability: float  # mean probability of its tokens under teacher forcing


@dataclass
class WordAlignment:
    words: list[WordTiming]
    matrix: torch.Tensor  # [text tokens + 1, frames]: normalised alignment-head attention
    heads: list[tuple[int, int]]  # (decoder layer, head) averaged into the matrix


def alignment_heads(model: HookedWhisper) -> list[tuple[int, int]]:
    """The checkpoint's alignment heads, or (when it names none) every head of the upper half
    of the decoder, openai-whisper's default."""
    if model.generation_config.alignment_heads:
        return [tuple(h) for h in model.generation_config.alignment_heads]  # type: ignore[misc]
    n = model.layer_count("decoder")
    return [(layer, head) for layer in range(n // 2, n) for head in range(model.head_count("decoder"))]


def word_alignment(
    model: HookedWhisper,
    encoder_out: torch.Tensor,
    text_tokens: list[int],
    num_frames: int,
    language: str | None = None,
    task: str = "transcribe",
    median_width: int = 7,
) -> WordAlignment:
    """Align ``text_tokens`` (no timestamps) to one window's ``encoder_out [1, 1500, d_model]``,
    of which the first ``num_frames`` mel frames hold audio."""
    s = model.special
    heads = alignment_heads(model)
    prompt = model.prompt_tokens(language if model.cfg.is_multilingual else None, task)
    tokens = torch.tensor([prompt + list(text_tokens) + [s.eot]], device=model.device)
    scores: dict[int, torch.Tensor] = {}

    def keep(tensor: torch.Tensor, hook) -> None:
        scores[hook.layer()] = tensor[0]

    layers = sorted({layer for layer, _ in heads})
    hooks = [(model.hook_name("decoder", layer, "cross_attn.hook_attn_scores"), keep) for layer in layers]
    with torch.no_grad():
        with model.hooks(fwd_hooks=hooks):
            logits = model.decode(tokens, encoder_out)[0]
    start = len(prompt) - 1  # the <|notimestamps|> position predicts the first text token
    probs = logits[start : start + len(text_tokens), : s.eot].float().softmax(dim=-1)
    rows = torch.arange(len(text_tokens), device=probs.device)
    token_probs = probs[rows, torch.tensor(text_tokens, dtype=torch.long, device=probs.device)].tolist()

    weights = torch.stack([scores[layer][head] for layer, head in heads]).float()  # [heads, tokens, 1500]
    weights = weights[:, :, : num_frames // 2].softmax(dim=-1)
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = median_filter((weights - mean) / std, median_width)
    matrix = weights.mean(dim=0)[start:-1]  # rows predicting each text token, then end-of-text

    text_index, time_index = dtw(-matrix.double().cpu().numpy())  # DTW runs on the host, in NumPy
    words, word_tokens = split_words(model, list(text_tokens) + [s.eot], language)
    if len(word_tokens) <= 1:
        return WordAlignment([], matrix, heads)
    boundaries = np.concatenate([[0], np.cumsum([len(t) for t in word_tokens[:-1]])])
    first_visit = np.concatenate([[True], np.diff(text_index) > 0])
    times = time_index[first_visit] * TIME_PRECISION
    timings = [
        WordTiming(word, toks, float(times[a]), float(times[b]), float(np.mean(token_probs[a:b])))
        for word, toks, a, b in zip(words[:-1], word_tokens[:-1], boundaries[:-1], boundaries[1:])
    ]
    return WordAlignment(timings, matrix, heads)


def median_filter(x: torch.Tensor, width: int) -> torch.Tensor:
    """Median over a sliding window of ``width`` frames along the last axis (reflect-padded)."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    # Reflect padding takes [batch, channel, length]: fold any leading axes into one and back.
    flat = x.reshape(-1, 1, x.shape[-1])
    padded = torch.nn.functional.pad(flat, (pad, pad), mode="reflect")
    return padded.unfold(-1, width, 1).median(dim=-1).values.reshape(x.shape)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cheapest monotonic path through ``cost [N, M]`` from (0, 0) to (N-1, M-1), moving down,
    right or diagonally; returns its row and column indices. Cells on one anti-diagonal do not
    depend on each other, so each diagonal is filled at once."""
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    total[0, 0] = 0
    move = np.full((n + 1, m + 1), -1, dtype=np.int8)  # 0 diagonal, 1 down, 2 right
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        diag, up, left = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
        # Ties go to "right", then "down", as in the reference implementation.
        step = np.where((diag < up) & (diag < left), 0, np.where((up < diag) & (up < left), 1, 2))
        total[i, j] = cost[i - 1, j - 1] + np.choose(step, [diag, up, left])
        move[i, j] = step
    move[0, :], move[:, 0] = 2, 1
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = move[i, j]
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    rows, cols = np.array(path[::-1]).T
    return rows, cols


def split_words(model: HookedWhisper, tokens: list[int], language: str | None) -> tuple[list[str], list[list[int]]]:
    """Group tokens into words: at spaces and punctuation, or at every whole character for
    languages written without spaces. A token that ends mid-character joins the next one."""
    decode = model.tokenizer.decode
    full = decode(tokens, skip_special=False)
    pieces, piece_tokens, current, offset = [], [], [], 0
    for token in tokens:
        current.append(token)
        text = decode(current, skip_special=False)
        if "\ufffd" not in text or full[offset + text.index("\ufffd")] == "\ufffd":
            pieces.append(text)
            piece_tokens.append(current)
            current, offset = [], offset + len(text)
    if language in NO_SPACE_LANGUAGES:
        return pieces, piece_tokens
    words: list[str] = []
    word_tokens: list[list[int]] = []
    for piece, toks in zip(pieces, piece_tokens):
        starts_word = toks[0] >= model.special.eot or piece.startswith(" ") or piece.strip() in string.punctuation
        if starts_word or not words:
            words.append(piece)
            word_tokens.append(list(toks))
        else:
            words[-1] += piece
            word_tokens[-1].extend(toks)
    return words, word_tokens


def merge_punctuation(words: list[WordTiming]) -> None:
    """Attach opening punctuation to the next word and closing punctuation to the previous one."""
    following = len(words) - 1
    for i in range(len(words) - 2, -1, -1):
        prev, nxt = words[i], words[following]
        if prev.word.startswith(" ") and prev.word.strip() in PREPEND_PUNCTUATION:
            nxt.word, nxt.tokens = prev.word + nxt.word, prev.tokens + nxt.tokens
            prev.word, prev.tokens = "", []
        else:
            following = i
    previous = 0
    for j in range(1, len(words)):
        prev, nxt = words[previous], words[j]
        if not prev.word.endswith(" ") and nxt.word in APPEND_PUNCTUATION:
            prev.word, prev.tokens = prev.word + nxt.word, prev.tokens + nxt.tokens
            nxt.word, nxt.tokens = "", []
        else:
            previous = j


def add_word_timestamps(
    model: HookedWhisper,
    segments: list[Segment],
    encoder_out: torch.Tensor,
    num_frames: int,
    result: WindowResult,
    last_speech: float,
) -> float:
    """Fill ``segment.words`` for one window's segments and tighten the segment bounds to them;
    returns the end of the last word (where speech last ended)."""
    if not segments:
        return last_speech
    eot = model.special.eot
    per_segment = [[t for t in seg.tokens if t < eot] for seg in segments]
    text_tokens = [t for toks in per_segment for t in toks]
    task = "translate" if model.special.translate in result.prompt else "transcribe"
    timings = word_alignment(model, encoder_out, text_tokens, num_frames, result.language, task).words
    durations = np.array([w.end - w.start for w in timings])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    if len(durations):
        # A word next to a sentence end often absorbs the pause: cut it to twice the median.
        for prev, word in zip(timings, timings[1:]):
            if word.end - word.start > longest:
                if word.word in ".。!！?？":
                    word.end = word.start + longest
                elif prev.word in ".。!！?？":
                    word.start = word.end - longest
    merge_punctuation(timings)

    offset = segments[0].seek * HOP_LENGTH / SAMPLE_RATE
    index = 0
    for seg, toks in zip(segments, per_segment):
        used, words = 0, []
        while index < len(timings) and used < len(toks):
            timing = timings[index]
            if timing.word:
                start, end = round(offset + timing.start, 2), round(offset + timing.end, 2)
                words.append(Word(timing.word, start, end, timing.probability))
            used += len(timing.tokens)
            index += 1
        if words:
            first, last = words[0], words[-1]
            # After a long pause, a first word stretched over it is cut to a plausible length.
            if first.end - last_speech > median * 4 and (
                first.end - first.start > longest or (len(words) > 1 and words[1].end - first.start > longest * 2)
            ):
                if len(words) > 1 and words[1].end - words[1].start > longest:
                    boundary = max(words[1].end / 2, words[1].end - longest)
                    first.end = words[1].start = boundary
                first.start = max(0.0, first.end - longest)
            if seg.start < first.end and seg.start - 0.5 > first.start:
                first.start = max(0.0, min(first.end - median, seg.start))
            else:
                seg.start = first.start
            if seg.end > last.start and seg.end + 0.5 < last.end:
                last.end = max(last.start + median, seg.end)
            else:
                seg.end = last.end
            last_speech = seg.end
        seg.words = words
    return last_speech
