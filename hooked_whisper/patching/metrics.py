"""Metrics: functions of the logits ``[batch, pos, vocab]`` giving one value per batch row."""

from __future__ import annotations

from collections.abc import Callable

import torch

Metric = Callable[[torch.Tensor], torch.Tensor]  # logits [batch, pos, vocab] -> [batch]


def per_row(metric: Metric, logits: torch.Tensor) -> torch.Tensor:
    """``metric(logits)``, checked to give one value (or one tensor) per batch row, rows first:
    sweeps run one site per row, so a metric that reduced over rows would mix the sites."""
    values = metric(logits)
    if not isinstance(values, torch.Tensor) or values.ndim == 0 or values.shape[0] != logits.shape[0]:
        got = f"shape {tuple(values.shape)}" if isinstance(values, torch.Tensor) else f"a {type(values).__name__}"
        raise ValueError(
            f"the metric returned {got} for logits of {logits.shape[0]} rows; a metric gives one value per batch "
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
