"""The constraints applied to the logits before every decoding step, in the order Whisper's
reference decoders apply them: no blank or end-of-text as the first token, the checkpoint's
suppressed tokens, then (when timestamps are predicted) the timestamp grammar."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from hooked_whisper.tokenizer import TIME_PRECISION

if TYPE_CHECKING:
    from hooked_whisper.model import HookedWhisper


class LogitRules:
    """Masks ``logits [rows, vocab]`` in place given the ``tokens [rows, pos]`` decoded so far,
    whose first ``sample_begin`` columns are the prompt.

    Timestamp grammar: timestamps come in pairs (a segment's end, then the next one's start),
    except just before end-of-text; they never go backwards; the first token is a timestamp no
    later than ``max_initial_timestamp`` seconds; and whenever the timestamps together are more
    likely than the best text token, a timestamp is forced.
    """

    def __init__(
        self,
        model: HookedWhisper,
        sample_begin: int,
        timestamps: bool,
        max_initial_timestamp: float | None = 1.0,
    ):
        s, gen = model.special, model.generation_config
        self.sample_begin = sample_begin
        self.timestamps = timestamps
        self.eot, self.no_timestamps, self.timestamp_begin = s.eot, s.no_timestamps, s.timestamp_begin
        self.suppress = torch.tensor(gen.suppress_tokens, dtype=torch.long, device=model.device)
        self.begin_suppress = torch.tensor(gen.begin_suppress_tokens, dtype=torch.long, device=model.device)
        self.max_initial_index = (
            None if max_initial_timestamp is None else round(max_initial_timestamp / TIME_PRECISION)
        )

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        first_step = tokens.shape[1] == self.sample_begin
        if first_step:
            logits[:, self.begin_suppress] = float("-inf")
        logits[:, self.suppress] = float("-inf")
        if self.timestamps:
            self._timestamp_grammar(logits, tokens, first_step)

    def _timestamp_grammar(self, logits: torch.Tensor, tokens: torch.Tensor, first_step: bool) -> None:
        ts = self.timestamp_begin
        logits[:, self.no_timestamps] = float("-inf")
        for row, sampled in enumerate(tokens[:, self.sample_begin :].tolist()):
            last_is_ts = len(sampled) >= 1 and sampled[-1] >= ts
            penultimate_is_ts = len(sampled) < 2 or sampled[-2] >= ts
            if last_is_ts:
                if penultimate_is_ts:
                    logits[row, ts:] = float("-inf")  # a pair just closed: text (or eot) next
                else:
                    logits[row, : self.eot] = float("-inf")  # a segment just ended: timestamp or eot
            stamps = [t for t in sampled if t >= ts]
            if stamps:
                # Never go back in time, and a segment that just opened must not close at once.
                floor = stamps[-1] if last_is_ts and not penultimate_is_ts else stamps[-1] + 1
                logits[row, ts:floor] = float("-inf")
        if first_step:
            logits[:, :ts] = float("-inf")
            if self.max_initial_index is not None:
                logits[:, ts + self.max_initial_index + 1 :] = float("-inf")
        logprobs = logits.float().log_softmax(dim=-1)
        timestamp_mass = logprobs[:, ts:].logsumexp(dim=-1)
        best_text = logprobs[:, :ts].max(dim=-1).values
        logits[timestamp_mass > best_text, :ts] = float("-inf")
