"""Decoding one 30 s window: greedy, sampling (best of n) and beam search over a KV cache.

Every step goes through ``model.decode``, so every hook fires at every step. The search follows
openai-whisper's ``DecodingTask`` (the same rules Hugging Face ``generate`` applies for greedy
short-form decoding): the prompt is ``[<|startofprev|>, previous text...]`` (when given), then
``[sot, language, task]``, ``<|notimestamps|>`` unless timestamps are predicted, then a prefix.
Beam search has openai's ``beam_size``/``patience`` semantics: each step keeps the ``beam_size``
best unfinished continuations, finished sequences are collected until ``beam_size * patience``
exist, and candidates are ranked by summed log-probability over length.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from hooked_whisper.decoding.repetition import compression_ratio, is_looping
from hooked_whisper.decoding.rules import LogitRules
from hooked_whisper.decoding_options import DecodingOptions
from hooked_whisper.kv_cache import DecoderCache

if TYPE_CHECKING:
    from hooked_whisper.model import HookedWhisper


@dataclass
class WindowResult:
    """What decoding one window produced for one clip."""

    tokens: list[int]  # generated tokens (timestamps included), without end-of-text
    prompt: list[int]  # the tokens the decoder was given first
    language: str | None
    text: str
    sum_logprob: float
    avg_logprob: float  # sum over (tokens + end-of-text)
    no_speech_prob: float  # P(<|nospeech|>) at the start-of-transcript position
    temperature: float
    compression_ratio: float
    finished: bool  # ended with end-of-text (rather than at the length cap)
    looped: bool = False  # stopped by ``stop_on_loop``: the tokens end in a loop


def language_probs(model: HookedWhisper, cache: DecoderCache) -> list[dict[str, float]]:
    """P(language) per clip, from the decoder's prediction after ``<|startoftranscript|>``."""

    s = model.special
    if not s.languages:
        raise ValueError("this model is English-only; it has no language tokens to detect")
    probe = DecoderCache(cross_kv=cache.cross_kv, self_kv=[None] * model.cfg.n_decoder_layers)
    sot = torch.full((cache.cross_kv[0][0].shape[0], 1), s.sot, device=model.device)
    logits = model.decode(sot, cache=probe)[:, -1].float()
    codes = list(s.languages)
    language_ids = torch.tensor(list(s.languages.values()), device=logits.device)
    probs = logits[:, language_ids].softmax(dim=-1).tolist()
    return [dict(zip(codes, row)) for row in probs]


def detect_language(model: HookedWhisper, cache: DecoderCache) -> list[str]:
    """The most likely language per clip."""
    return [max(p, key=p.__getitem__) for p in language_probs(model, cache)]


def initial_tokens(model: HookedWhisper, language: str | None, options: DecodingOptions) -> list[int]:
    tokens = model.prompt_tokens(language if model.cfg.is_multilingual else None, options.task, options.timestamps)
    if options.prefix:
        tokens += _as_tokens(model, options.prefix)
    if options.prompt:
        previous = _as_tokens(model, options.prompt)[-(model.cfg.n_text_ctx // 2 - 1) :]
        tokens = [model.special.sot_prev, *previous, *tokens]
    return tokens


def _as_tokens(model: HookedWhisper, text_or_tokens: str | list[int]) -> list[int]:
    if isinstance(text_or_tokens, str):
        return model.tokenizer.encode(" " + text_or_tokens.strip())
    return list(text_or_tokens)


class Sampler:
    """Greedy decoding (temperature 0) or sampling; rows that reach end-of-text keep emitting it.

    ``generators`` holds one random generator per clip (its ``group`` rows draw from it in turn),
    so what a clip samples does not depend on which other clips share the batch."""

    def __init__(
        self, temperature: float, eot: int, rows: int, device, generators: list[torch.Generator | None], group: int
    ):
        self.temperature, self.eot, self.generators, self.group = temperature, eot, generators, group
        self.done = torch.zeros(rows, dtype=torch.bool, device=device)

    def update(self, tokens, logits, sum_logprobs):
        if self.temperature == 0:
            next_tokens = logits.argmax(dim=-1)
        else:
            probs = (logits / self.temperature).softmax(dim=-1)
            next_tokens = torch.cat(
                [
                    torch.multinomial(probs[row : row + 1], 1, generator=self.generators[row // self.group])[0]
                    for row in range(probs.shape[0])
                ]
            )
        logprob = logits.log_softmax(dim=-1).gather(1, next_tokens[:, None]).squeeze(1)
        sum_logprobs += torch.where(self.done, 0.0, logprob)
        next_tokens = torch.where(self.done, self.eot, next_tokens)
        self.done |= next_tokens == self.eot
        return torch.cat([tokens, next_tokens[:, None]], dim=1), bool(self.done.all()), None

    def candidates(self, tokens, sum_logprobs, n_audio: int) -> list[list[tuple[list[int], float]]]:
        rows, scores = tokens.tolist(), sum_logprobs.tolist()
        group = len(rows) // n_audio
        return [[(rows[i], scores[i]) for i in range(a * group, (a + 1) * group)] for a in range(n_audio)]


class BeamSearch:
    def __init__(self, beam_size: int, eot: int, n_audio: int, patience: float | None):
        self.beam_size, self.eot = beam_size, eot
        self.max_finished = round(beam_size * (patience or 1.0))
        self.finished: list[dict[tuple[int, ...], float]] = [{} for _ in range(n_audio)]

    def update(self, tokens, logits, sum_logprobs):
        beam = self.beam_size
        top_logprobs, top_tokens = logits.log_softmax(dim=-1).topk(beam + 1, dim=-1)
        # float32 sums, as the running scores are kept in float32
        scores_all = (sum_logprobs[:, None] + top_logprobs).tolist()
        top_tokens, rows = top_tokens.tolist(), tokens.tolist()
        kept, sources, kept_scores = [], [], []
        for audio, finished in enumerate(self.finished):
            scores: dict[tuple[int, ...], float] = {}
            source: dict[tuple[int, ...], int] = {}
            for row in range(audio * beam, (audio + 1) * beam):
                for token, score in zip(top_tokens[row], scores_all[row]):
                    sequence = (*rows[row], token)
                    scores[sequence], source[sequence] = score, row
            newly_finished: dict[tuple[int, ...], float] = {}
            for sequence in sorted(scores, key=scores.__getitem__, reverse=True):
                if sequence[-1] == self.eot:
                    newly_finished[sequence] = scores[sequence]
                    continue
                kept.append(sequence)
                sources.append(source[sequence])
                kept_scores.append(scores[sequence])
                if len(kept) == (audio + 1) * beam:
                    break
            for sequence in sorted(newly_finished, key=newly_finished.__getitem__, reverse=True):
                if len(finished) >= self.max_finished:
                    break
                finished[sequence] = newly_finished[sequence]
        sum_logprobs.copy_(torch.tensor(kept_scores, dtype=sum_logprobs.dtype))
        completed = all(len(f) >= self.max_finished for f in self.finished)
        device = tokens.device
        return torch.tensor(kept, device=device), completed, torch.tensor(sources, device=device)

    def candidates(self, tokens, sum_logprobs, n_audio: int) -> list[list[tuple[list[int], float]]]:
        rows, scores = tokens.tolist(), sum_logprobs.tolist()
        out = []
        for audio, finished in enumerate(self.finished):
            found = dict(finished)
            if len(found) < self.beam_size:  # ran out of length: fall back on the live beams
                live = range(audio * self.beam_size, (audio + 1) * self.beam_size)
                for row in sorted(live, key=lambda r: scores[r], reverse=True):
                    found[(*rows[row], self.eot)] = scores[row]
                    if len(found) >= self.beam_size:
                        break
            out.append([(list(seq), score) for seq, score in found.items()])
        return out


def decode_window(
    model: HookedWhisper,
    encoder_out: torch.Tensor,
    options: DecodingOptions,
    generator: torch.Generator | None = None,
    *,
    previous: list[list[int]] | None = None,
    languages: list[str | None] | None = None,
    generators: list[torch.Generator | None] | None = None,
) -> list[WindowResult]:
    """Decode ``encoder_out [n_audio, 1500, d_model]`` (one window per clip).

    Per clip, optionally: ``previous`` text tokens (instead of ``options.prompt``), its
    ``languages`` (instead of ``options.language`` or detection) and its own random generator
    (instead of the shared ``generator``). Prompts of different lengths are left-padded, and
    the padding is hidden from the decoder (``DecoderCache.pad``)."""
    options.check(model)
    s = model.special
    n_audio = encoder_out.shape[0]
    cache = model.new_decoder_cache(encoder_out)  # cross-attention K/V hooks fire here, once
    if languages is None and model.cfg.is_multilingual and options.language is None:
        languages = list(detect_language(model, cache))
    elif languages is None:
        languages = [options.language if model.cfg.is_multilingual else "en"] * n_audio
    prompts = [
        initial_tokens(model, lang, options if previous is None else replace(options, prompt=previous[audio]))
        for audio, lang in enumerate(languages)
    ]
    sample_begin = max(map(len, prompts))
    pads = [sample_begin - len(p) for p in prompts]
    sot_index = [pad + p.index(s.sot) for pad, p in zip(pads, prompts)]
    room = model.cfg.n_text_ctx - sample_begin
    if room < 1:
        raise ValueError(
            f"the prompt has {sample_begin} tokens, leaving no room in the {model.cfg.n_text_ctx}-token context"
        )
    max_new = min(room, options.max_new_tokens or room)

    group = options.beam_size or options.best_of or 1
    if group > 1:
        cache.select(torch.arange(n_audio, device=model.device).repeat_interleave(group))  # `group` rows per clip
    if any(pads):
        cache.pad = torch.tensor(pads, device=model.device).repeat_interleave(group)
    padded = [[s.eot] * pad + p for pad, p in zip(pads, prompts)]
    tokens = torch.tensor(padded, device=model.device).repeat_interleave(group, dim=0)
    rows = tokens.shape[0]
    rules = LogitRules(model, sample_begin, options.timestamps, options.max_initial_timestamp)
    if options.beam_size is not None:
        search: Sampler | BeamSearch = BeamSearch(options.beam_size, s.eot, n_audio, options.patience)
    else:
        search = Sampler(options.temperature, s.eot, rows, model.device, generators or [generator] * n_audio, group)
    looping = options.stop_on_loop if callable(options.stop_on_loop) else is_looping
    looped = [False] * rows

    sum_logprobs = torch.zeros(rows, device=model.device)
    no_speech = [float("nan")] * n_audio
    step_input = tokens
    for step in range(max_new):
        logits = model.decode(step_input, cache=cache)
        if step == 0:
            first_rows = torch.arange(0, rows, group, device=logits.device)  # one row per clip
            at_sot = logits[first_rows, torch.tensor(sot_index, device=logits.device)]
            no_speech = at_sot.float().softmax(dim=-1)[:, s.no_speech].tolist()
        logits = logits[:, -1].float()
        rules(logits, tokens)
        tokens, completed, source = search.update(tokens, logits, sum_logprobs)
        if source is not None:
            cache.select(source, cross=False)
        if options.stop_on_loop and isinstance(search, Sampler):
            live = (~search.done).nonzero().flatten().tolist()
            generated = tokens[:, sample_begin:].tolist()
            for row in live:
                if looping(generated[row]):
                    search.done[row] = True  # the next token written for this row is end-of-text
                    looped[row] = True
        if completed:
            break
        step_input = tokens[:, -1:]

    results = []
    for audio, candidates in enumerate(search.candidates(tokens, sum_logprobs, n_audio)):
        ranked = [_rank(seq[sample_begin:], score, s.eot, options.length_penalty) for seq, score in candidates]
        # A sample stopped in a loop is cut short, so its score says nothing: it wins only alone.
        loops = looped[audio * group : (audio + 1) * group] if isinstance(search, Sampler) else [False] * len(ranked)
        best = max(range(len(ranked)), key=lambda i: (not loops[i], ranked[i][0], -i))
        _, generated, finished, score = ranked[best]
        text = model.tokenizer.text(generated).strip()
        results.append(
            WindowResult(
                tokens=generated,
                prompt=prompts[audio],
                language=languages[audio],
                text=text,
                sum_logprob=score,
                avg_logprob=score / (len(generated) + 1),
                no_speech_prob=no_speech[audio],
                temperature=options.temperature,
                compression_ratio=compression_ratio(text),
                finished=finished,
                looped=loops[best],
            )
        )
    return results


def _rank(sampled: list[int], score: float, eot: int, length_penalty: float | None):
    """(ranking score, tokens before end-of-text, whether it ended, summed log-probability)."""
    finished = eot in sampled
    tokens = sampled[: sampled.index(eot)] if finished else sampled
    length = len(tokens)
    penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
    return score / max(penalty, 1e-9), tokens, finished, score


def padded_tokens(results: list[WindowResult], eot: int, include_eot: bool = True) -> torch.Tensor:
    """Prompt + generated tokens per clip as one ``[batch, pos]`` tensor, padded with
    end-of-text. With ``include_eot=False`` the longest row stops at its last real token, so its
    last position predicts end-of-text."""
    rows = [r.prompt + r.tokens + ([eot] if include_eot and r.finished else []) for r in results]
    width = max(map(len, rows))
    return torch.tensor([row + [eot] * (width - len(row)) for row in rows])
