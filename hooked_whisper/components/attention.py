"""Multi-head attention, used for encoder self-attention, decoder causal self-attention and
decoder cross-attention. Weights are stored per head, as in TransformerLens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import nn
from transformer_lens import FactoredMatrix

from hooked_whisper.components.layout import HEADS_IN, HEADS_OUT, keep_kernel_layouts
from hooked_whisper.config import HookedWhisperConfig
from hooked_whisper.hook_layout import hook_point

KeyValue = tuple[torch.Tensor, torch.Tensor]  # (k, v), each [batch, key_pos, head, d_head]


def heads_side_by_side(W: Float[torch.Tensor, "head d_model d_head"]) -> Float[torch.Tensor, "d_model head_x_d_head"]:
    """All heads' projections as one ``[d_model, n_heads * d_head]`` matrix: a view of the
    parameter's own memory in its kernel layout (``components.layout.HEADS_IN``: the transpose
    of nn.Linear's contiguous ``[n_heads * d_head, d_model]``), a copy otherwise."""
    n_heads, d_model, d_head = W.shape
    return W.permute(1, 0, 2).reshape(d_model, n_heads * d_head)


def project(
    x: Float[torch.Tensor, "batch pos d_model"] | Float[torch.Tensor, "batch pos head d_model"],
    W: Float[torch.Tensor, "head d_model d_head"],
    b: Float[torch.Tensor, "head d_head"] | None = None,
) -> Float[torch.Tensor, "batch pos head d_head"]:
    """Apply a per-head projection to a shared input or to per-head input copies."""
    if x.ndim == 4:
        out = torch.einsum("bphd,hdk->bphk", x, W)
    else:
        out = (x @ heads_side_by_side(W)).unflatten(-1, W.shape[::2])
    return out if b is None else out + b


class Attention(nn.Module):
    """Scaled dot-product attention with a hook on every intermediate.

    Whisper's key projection has no bias, so there is no ``b_K``. The query is scaled by
    ``d_head ** -0.5`` after its bias, as the reference implementation does, which keeps the
    result bit-identical to it; ``hook_q`` shows the unscaled projection and
    ``hook_attn_scores`` the scaled, masked scores.
    """

    def __init__(self, cfg: HookedWhisperConfig, causal: bool = False):
        super().__init__()
        self.cfg = cfg
        self.causal = causal
        h, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, dh))
        self.b_Q = nn.Parameter(torch.zeros(h, dh))
        self.W_K = nn.Parameter(torch.empty(h, d, dh))
        self.W_V = nn.Parameter(torch.empty(h, d, dh))
        self.b_V = nn.Parameter(torch.zeros(h, dh))
        self.W_O = nn.Parameter(torch.empty(h, dh, d))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.scale = dh**-0.5

        # Queries are on the stream; keys count what this attention reads (the audio, for cross-attention).
        self.hook_q = hook_point(head_axis=2)  # [batch, query_pos, head, d_head]
        self.hook_k = hook_point(unit="keys", head_axis=2)  # [batch, key_pos, head, d_head]
        self.hook_v = hook_point(unit="keys", head_axis=2)  # [batch, key_pos, head, d_head]
        self.hook_attn_scores = hook_point(
            pos_axis=2, head_axis=1, key_unit="keys"
        )  # [batch, head, query_pos, key_pos]
        self.hook_pattern = hook_point(pos_axis=2, head_axis=1, key_unit="keys")  # [batch, head, query_pos, key_pos]
        self.hook_z = hook_point(head_axis=2)  # [batch, query_pos, head, d_head]
        self.hook_result = hook_point(head_axis=2)  # [batch, query_pos, head, d_model]; cfg.use_attn_result
        # Stored as nn.Linear stores them, so that all heads project in one matrix product that
        # reads the weights in the order every kernel (half precision on the CPU too) reads fast.
        keep_kernel_layouts(self, {"W_Q": HEADS_IN, "W_K": HEADS_IN, "W_V": HEADS_IN, "W_O": HEADS_OUT})

    @property
    def OV(self) -> FactoredMatrix:
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    def compute_kv(
        self,
        key_input: Float[torch.Tensor, "batch key_pos d_model"] | Float[torch.Tensor, "batch key_pos head d_model"],
        value_input: Float[torch.Tensor, "batch key_pos d_model"] | Float[torch.Tensor, "batch key_pos head d_model"],
    ) -> KeyValue:
        """Keys and values, through their hooks. Cross-attention calls this once per audio."""
        return self.hook_k(project(key_input, self.W_K)), self.hook_v(project(value_input, self.W_V, self.b_V))

    def _pattern_is_observed(self) -> bool:
        return self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks()

    def forward(
        self,
        query_input: Float[torch.Tensor, "batch query_pos d_model"]
        | Float[torch.Tensor, "batch query_pos head d_model"],
        key_input: torch.Tensor | None = None,
        value_input: torch.Tensor | None = None,
        *,
        kv: KeyValue | None = None,
        past_kv: KeyValue | None = None,
        key_mask: Bool[torch.Tensor, "batch key_pos"] | Bool[torch.Tensor, "batch query_pos key_pos"] | None = None,
    ) -> tuple[Float[torch.Tensor, "batch query_pos d_model"], KeyValue]:
        """Attend from ``query_input`` to keys and values.

        Keys and values come from ``key_input``/``value_input``, or ready-made from ``kv``
        (cross-attention during generation). ``past_kv`` holds the keys and values of earlier
        positions (self-attention during generation); the hooks on k and v then see only the
        new positions. ``key_mask`` (True = attend) hides padding keys, as audio encoders that
        read clips shorter than their window do; a ``[batch, query_pos, key_pos]`` mask says it
        per query (left-padded decoder rows). Returns the output and the full (k, v) for the
        next step.
        """
        q = self.hook_q(project(query_input, self.W_Q, self.b_Q))
        if kv is None:
            assert key_input is not None and value_input is not None
            k, v = self.compute_kv(key_input, value_input)
            if past_kv is not None:
                k, v = torch.cat([past_kv[0], k], dim=1), torch.cat([past_kv[1], v], dim=1)
        else:
            k, v = kv
        q_len, k_len = q.shape[1], k.shape[1]
        # A causal mask is only needed when several queries are processed at once; a query at
        # absolute position past + i sees keys 0 .. past + i.
        mask = None
        if self.causal and q_len > 1:
            mask = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
        if key_mask is not None:
            keys = key_mask[:, None] if key_mask.ndim == 3 else key_mask[:, None, None, :]  # [batch, head, query, key]
            mask = keys if mask is None else mask & keys

        q_heads, k_heads, v_heads = (q * self.scale).transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self._pattern_is_observed():
            scores = q_heads @ k_heads.transpose(-1, -2)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            pattern = self.hook_pattern(self.hook_attn_scores(scores).softmax(dim=-1))
            z = pattern @ v_heads
        else:
            # Nothing reads the pattern, so the fused kernel may skip materialising it.
            z = F.scaled_dot_product_attention(q_heads, k_heads, v_heads, attn_mask=mask, scale=1.0)
        z = self.hook_z(z.transpose(1, 2))

        if self.cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bqhd,hdm->bqhm", z, self.W_O))
            out = result.sum(dim=-2) + self.b_O
        else:
            out = torch.addmm(self.b_O, z.flatten(2).flatten(0, 1), self.W_O.flatten(0, 1)).view(z.shape[0], q_len, -1)
        return out, (k, v)
