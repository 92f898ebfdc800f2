"""Metrics: functions of the logits ``[batch, pos, vocab]`` giving one value per batch row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from hooked_whisper.hooked_audio_model import HookedAudioModel

Metric = Callable[[torch.Tensor], torch.Tensor]  # logits [batch, pos, vocab] -> [batch]


def per_row(metric: Metric, logits: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """``metric(logits)``, checked to give one value (or one tensor) per patched run, rows first:
    sweeps run one site per row, so a metric that reduced over rows would mix the sites. ``rows``:
    how many runs ``logits`` holds when each reads several token rows (``WordContrast``)."""
    values = metric(logits)
    rows = logits.shape[0] if rows is None else rows
    if not isinstance(values, torch.Tensor) or values.ndim == 0 or values.shape[0] != rows:
        got = f"shape {tuple(values.shape)}" if isinstance(values, torch.Tensor) else f"a {type(values).__name__}"
        raise ValueError(
            f"the metric returned {got} for logits of {rows} rows; a metric gives one value per batch "
            "row (a tensor of shape [batch], or [batch, ...]): reduce over positions and vocabulary, not over rows "
            "(e.g. logits[:, -1, token], not logits[:, -1, token].mean())"
        )
    return values


def logit_diff(correct: int, incorrect: int, position: int = -1) -> Metric:
    """logit[correct] - logit[incorrect] at one decoder position."""
    return lambda logits: logits[:, position, correct] - logits[:, position, incorrect]


def target_log_prob(tokens: torch.Tensor, start: int) -> Metric:
    """Summed log-probability of ``tokens[start:]`` under teacher forcing (e.g. of a transcript
    after its prompt): each position predicts the next token."""
    tokens = torch.as_tensor(tokens).reshape(-1)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        logp = logits[:, start - 1 : len(tokens) - 1].float().log_softmax(-1)
        return logp.gather(-1, tokens[start:].to(logits.device).expand(len(logits), -1)[..., None])[..., 0].sum(-1)

    return metric


def kl_divergence(reference_logits: torch.Tensor) -> Metric:
    """Mean over positions of KL(reference || patched)."""
    ref = reference_logits.float().log_softmax(-1)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        logp = logits.float().log_softmax(-1)
        return (ref.exp() * (ref - logp)).sum(-1).mean(-1)

    return metric


@dataclass(frozen=True)
class WordContrast:
    """log p(acoustic word) - log p(contextual word) after the same text, teacher-forced.

    ``tokens`` holds two rows: the prompt, the text before the word, then the acoustic word's
    tokens (row 0) or the contextual word's (row 1), the shorter padded at the end (causal
    attention keeps padding from reaching the word). A word of several tokens scores the sum of
    their log-probabilities, each read with the word's earlier tokens forced. Pass ``tokens=``
    this object to ``activation_patch`` (each site's run decodes both rows) and it as the metric;
    on logits of one forward of ``tokens`` it returns one value.
    """

    tokens: torch.Tensor  # [2, pos]
    words: tuple[tuple[int, ...], tuple[int, ...]]  # the acoustic word's ids, the contextual word's

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[0] % 2:
            raise ValueError(f"a word contrast reads pairs of rows (acoustic, contextual); got {logits.shape[0]} rows")
        logits = logits.reshape(-1, 2, *logits.shape[1:])
        # Read from the end: an audio LLM's prompt grows with the clip, the words stay last.
        start = logits.shape[2] - max(len(w) for w in self.words)
        scores = []
        for row, word in enumerate(self.words):
            logp = logits[:, row, start - 1 : start - 1 + len(word)].float().log_softmax(-1)
            ids = torch.tensor(word, device=logits.device).expand(len(logp), -1)
            scores.append(logp.gather(-1, ids[..., None])[..., 0].sum(-1))
        return scores[0] - scores[1]


def word_contrast(model: HookedAudioModel, before: str, acoustic: str, contextual: str, prompt=None) -> WordContrast:
    """The contrast of ``acoustic`` against ``contextual`` as the word after the transcript text
    ``before`` (Whisper writes a space before each word: " The chef cooked white"; an audio LLM's
    answer starts without one). ``prompt`` defaults to ``model.prompt_tokens()`` (a multilingual Whisper
    needs ``model.prompt_tokens("en")``; on Qwen2-Audio the chat prompt, its placeholder expanded per clip)."""
    head = model.check_tokens(model.prompt_tokens() if prompt is None else prompt)[0].tolist()
    encode = model.tokenizer.encode
    text_ids = encode(before) if before.strip() else []
    words = []
    for word in (acoustic, contextual):
        if not word.strip():
            raise ValueError("the acoustic and the contextual word must not be empty")
        joined = before + word if not before.strip() or before.endswith(" ") else f"{before} {word}"
        ids = encode(joined)
        if ids[: len(text_ids)] != text_ids or len(ids) == len(text_ids):
            raise ValueError(
                f"{word!r} does not tokenize apart from {before!r} (its tokens merge with the text before it); "
                "end the text at a word boundary"
            )
        words.append(tuple(ids[len(text_ids) :]))
    if words[0] == words[1]:
        raise ValueError(f"{acoustic!r} and {contextual!r} give the same tokens: nothing to contrast")
    pad = head[-1]  # any id serves: nothing after a word reaches its log-probability
    width = max(len(w) for w in words)
    rows = [head + text_ids + list(w) + [pad] * (width - len(w)) for w in words]
    return WordContrast(torch.tensor(rows, device=model.device), (words[0], words[1]))
