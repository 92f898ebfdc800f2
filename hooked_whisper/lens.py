"""Reading tools on the residual stream: the decoder logit lens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from hooked_whisper.cache import WhisperActivationCache
    from hooked_whisper.model import HookedWhisper


@dataclass
class LogitLens:
    """Per residual-stream snapshot (``labels``: the embedding, then the output of each decoder
    block; the last one is what the logits read), at every position: the top-k tokens and their probabilities, and the
    probability and rank of the model's own final prediction."""

    labels: list[str]
    top_tokens: torch.Tensor  # [layer, batch, pos, k]
    top_probs: torch.Tensor  # [layer, batch, pos, k]
    final_token: torch.Tensor  # [batch, pos]: the model's top-1 prediction
    final_prob: torch.Tensor  # [layer, batch, pos]
    final_rank: torch.Tensor  # [layer, batch, pos], 0 = top-1
    saturation_layer: torch.Tensor  # [batch, pos]: first layer index from which top-1 stays final

    def table(self, model: HookedWhisper, batch_index: int = 0) -> list[str]:
        """One line per layer: that layer's top-1 token at every position."""
        width = max(len(label) for label in self.labels)
        lines = []
        for label, tokens in zip(self.labels, self.top_tokens[:, batch_index, :, 0]):
            lines.append(f"{label:>{width}} | " + " ".join(repr(t)[1:-1] for t in model.to_str_tokens(tokens)))
        return lines


def logit_lens(model: HookedWhisper, cache: WhisperActivationCache, k: int = 5) -> LogitLens:
    """Project each decoder layer's accumulated residual stream through ``decoder_ln_final`` and
    the unembedding. Needs the decoder's ``hook_resid_pre``/``hook_resid_post`` in the cache."""
    with torch.no_grad():
        resid, labels = cache.decoder.accumulated_resid(apply_ln=True, return_labels=True)  # type: ignore[misc]
        if not cache.has_batch_dim:
            resid = resid.unsqueeze(1)
        probs = (resid @ model.W_U).float().softmax(dim=-1)  # [layer, batch, pos, vocab]
    top_probs, top_tokens = probs.topk(k, dim=-1)
    final_token = top_tokens[-1, ..., 0]
    final_prob = probs.gather(-1, final_token.expand(probs.shape[0], *final_token.shape)[..., None])[..., 0]
    final_rank = (probs > final_prob[..., None]).sum(-1)
    # Saturation: the earliest layer after which the top-1 token never changes again.
    agrees = top_tokens[..., 0] == final_token
    stays = agrees.flip(0).cumprod(0).flip(0)
    saturation = stays.shape[0] - stays.sum(0)
    n_blocks = len(labels) - 1  # entries: the embedding, then the output of each block
    names = ["embed"] + [f"block {l}" for l in range(n_blocks)]
    return LogitLens(names, top_tokens, top_probs, final_token, final_prob, final_rank, saturation)
