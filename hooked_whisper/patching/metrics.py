"""Metrics: functions of the logits ``[batch, pos, vocab]`` giving one value per batch row."""

from __future__ import annotations

from collections.abc import Callable

import torch

Metric = Callable[[torch.Tensor], torch.Tensor]  # logits [batch, pos, vocab] -> [batch]


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
