"""Greedy short-form decoding with a KV cache, following Hugging Face ``generate`` step for step:
fp32 logits of the last position, ``begin_suppress_tokens`` masked at the first generated step,
``suppress_tokens`` at every step, argmax, stop at end-of-text. Hooks fire at every step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from hooked_whisper.decoding.repetition import is_looping

if TYPE_CHECKING:
    from hooked_whisper.model import HookedWhisper


@dataclass
class Transcript:
    text: str
    tokens: list[int]  # the generated tokens, without prompt and end-of-text
    language: str | None = None
    prompt: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        return self.text


@dataclass
class GreedyOutput:
    tokens: torch.Tensor  # [batch, prompt + generated], padded with end-of-text
    prompt_length: int
    languages: list[str | None]

    def transcripts(self, model: HookedWhisper) -> list[Transcript]:
        eot = model.special.eot
        out = []
        for row, lang in zip(self.tokens.tolist(), self.languages):
            generated = row[self.prompt_length :]
            if eot in generated:
                generated = generated[: generated.index(eot)]
            out.append(
                Transcript(
                    model.tokenizer.decode(generated).strip() if model.tokenizer.has_text_vocabulary else "",
                    generated,
                    lang,
                    row[: self.prompt_length],
                )
            )
        return out


def detect_language(model: HookedWhisper, cache) -> list[str]:
    """The most likely language token after ``<|startoftranscript|>``, per clip."""
    from hooked_whisper.model import DecoderCache

    s = model.special
    if not s.languages:
        raise ValueError("this model is English-only; it has no language tokens to detect")
    probe = DecoderCache(cross_kv=cache.cross_kv, self_kv=[None] * model.cfg.n_decoder_layers)
    sot = torch.full((cache.cross_kv[0][0].shape[0], 1), s.sot, device=model.device)
    logits = model.decode(sot, cache=probe)[:, -1].float()
    lang_ids = torch.tensor(list(s.languages.values()), device=logits.device)
    best = lang_ids[logits[:, lang_ids].argmax(dim=-1)]
    return [model.tokenizer.language_code(int(t)) for t in best]


def greedy_generate(
    model: HookedWhisper,
    encoder_out: torch.Tensor,
    language: str | None = None,
    task: str = "transcribe",
    max_new_tokens: int | None = None,
    include_eot: bool = True,
    stop_on_loop: bool | Callable[[list[int]], bool] = False,
) -> GreedyOutput:
    """Greedy tokens for a batch of encoder outputs ``[batch, 1500, d_model]``. Rows that finish
    early are padded with end-of-text; with ``include_eot=False`` the result stops before the
    last row's end-of-text. ``stop_on_loop`` ends a row once ``is_looping`` (or the function
    given, called on the row's generated tokens) flags it."""
    s, gen = model.special, model.generation_config
    cache = model.new_decoder_cache(encoder_out)
    batch = encoder_out.shape[0]
    if model.cfg.is_multilingual and language is None:
        languages: list[str | None] = list(detect_language(model, cache))
    else:
        languages = [language if model.cfg.is_multilingual else "en"] * batch
    prompts = [model.prompt(lang if model.cfg.is_multilingual else None, task) for lang in languages]
    tokens = torch.tensor(prompts, device=model.device)
    prompt_length = tokens.shape[1]
    max_length = min(gen.max_length, model.cfg.n_text_ctx)
    if max_new_tokens is not None:
        max_length = min(max_length, prompt_length + max_new_tokens)

    suppress = torch.tensor(gen.suppress_tokens, dtype=torch.long, device=model.device)
    begin_suppress = torch.tensor(gen.begin_suppress_tokens, dtype=torch.long, device=model.device)
    done = torch.zeros(batch, dtype=torch.bool, device=model.device)
    step_input = tokens
    generated: list[torch.Tensor] = []
    while prompt_length + len(generated) < max_length:
        logits = model.decode(step_input, cache=cache)[:, -1].float()
        if not generated:
            logits[:, begin_suppress] = float("-inf")
        logits[:, suppress] = float("-inf")
        next_token = torch.where(done, s.eot, logits.argmax(dim=-1))
        generated.append(next_token)
        done |= next_token == s.eot
        if stop_on_loop:
            looping = stop_on_loop if callable(stop_on_loop) else is_looping
            rows = torch.stack(generated, dim=1).tolist()
            done |= torch.tensor([looping(r) for r in rows], device=done.device)
        if done.all():
            break
        step_input = next_token[:, None]
    out = torch.cat([tokens, torch.stack(generated, dim=1)], dim=1) if generated else tokens
    if not include_eot:
        # Drop the trailing end-of-text columns that every row has, so the last position of the
        # longest row is its last real token and predicts end-of-text.
        while out.shape[1] > prompt_length and bool((out[:, -1] == s.eot).all()):
            out = out[:, :-1]
    return GreedyOutput(out, prompt_length, languages)
