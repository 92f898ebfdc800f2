"""The sparse autoencoder at inference: encoder, sparsifying activation, decoder, in
sae-lens' parameter shapes (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``).

Training uses EleutherAI's ``sparsify.SparseCoder`` (TopK with the AuxK loss,
``hooked_whisper.saes.training``); its weights are read into this module, which also holds the
architectures checkpoints from elsewhere use at inference (BatchTopK's threshold, JumpReLU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import nn

if TYPE_CHECKING:
    from sparsify import SparseCoder

# topk: the k largest ReLU pre-activations per frame. batchtopk: trained with a top-k over the
# whole batch, run with one learnt threshold. jumprelu: a threshold per latent. relu: plain ReLU.
ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "relu")


class SparseAutoencoder(nn.Module):
    """``acts = activation((x - b_dec) @ W_enc + b_enc)``, ``x_hat = acts @ W_dec + b_dec``.

    ``hook_name`` is the hook it reads, in this library's names; ``k`` the latents kept per
    frame (topk); ``threshold`` the per-latent cut (batchtopk, jumprelu); ``apply_b_dec_to_input``
    whether ``b_dec`` is subtracted before encoding (true for sparsify, sae-lens' TopK and the
    dictionary-learning checkpoints; false for Gemma Scope's JumpReLU).
    """

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        architecture: str = "topk",
        k: int | None = None,
        hook_name: str | None = None,
        apply_b_dec_to_input: bool = True,
        metadata: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
    ):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, not {architecture!r}")
        if architecture == "topk" and not (isinstance(k, int) and 0 < k <= d_sae):
            raise ValueError(f"a topk autoencoder needs k, the latents kept per frame, in 1..{d_sae}; got {k!r}")
        self.d_in, self.d_sae, self.architecture, self.k = d_in, d_sae, architecture, k
        self.hook_name = hook_name
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.metadata = dict(metadata or {})  # where it came from: model, training run, source format
        kw = dict(dtype=dtype, device=device)
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))
        self.register_buffer("threshold", torch.zeros(d_sae, **kw))
        nn.init.kaiming_uniform_(self.W_dec)
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)
            self.W_enc.copy_(self.W_dec.T)

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.k is not None else ""
        return f"{self.hook_name!r}, d_in={self.d_in}, d_sae={self.d_sae}, {self.architecture}{k}"

    def pre_acts(self, x: Float[torch.Tensor, "... d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: Float[torch.Tensor, "... d_sae"]) -> Float[torch.Tensor, "... d_sae"]:
        if self.architecture == "topk":
            values, indices = pre.relu().topk(self.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter(-1, indices, values)
        if self.architecture == "batchtopk":
            post = pre.relu()
            return post * (post > self.threshold)
        if self.architecture == "jumprelu":
            return pre.relu() * (pre > self.threshold)
        return pre.relu()

    def encode(self, x: Float[torch.Tensor, "... d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        return self.activate(self.pre_acts(x))

    def decode(self, acts: Float[torch.Tensor, "... d_sae"]) -> Float[torch.Tensor, "... d_in"]:
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: Float[torch.Tensor, "... d_in"]) -> Float[torch.Tensor, "... d_in"]:
        return self.decode(self.encode(x))

    @classmethod
    def from_sparse_coder(cls, coder: SparseCoder, hook_name: str | None = None, **metadata: Any) -> SparseAutoencoder:
        """The inference module of a trained ``sparsify.SparseCoder`` (a TopK autoencoder)."""
        cfg = coder.cfg
        if cfg.activation != "topk" or cfg.transcode or coder.W_skip is not None or coder.W_dec is None:
            raise ValueError(
                "only a plain TopK sparsify autoencoder (activation='topk', no transcoder, no skip connection) "
                "can be read; train with those settings"
            )
        sae = cls(coder.d_in, coder.num_latents, "topk", cfg.k, hook_name, True, metadata, coder.dtype, coder.device)
        with torch.no_grad():
            sae.W_enc.copy_(coder.encoder.weight.T)
            sae.b_enc.copy_(coder.encoder.bias)
            sae.W_dec.copy_(coder.W_dec)
            sae.b_dec.copy_(coder.b_dec)
        return sae

    def config(self) -> dict[str, Any]:
        """What rebuilds the module around its tensors (the native format's ``config.json``)."""
        return {
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "architecture": self.architecture,
            "k": self.k,
            "hook_name": self.hook_name,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "dtype": str(self.W_enc.dtype).removeprefix("torch."),
            "metadata": self.metadata,
        }
