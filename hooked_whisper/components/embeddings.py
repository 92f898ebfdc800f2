"""What enters the two residual streams: the audio stem (two convolutions plus fixed sinusoidal
positions) for the encoder, token plus learned position embeddings for the decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import nn

from hooked_whisper.components.layout import LINEAR, keep_kernel_layouts, restore_kernel_layouts
from hooked_whisper.config import HookedQwen2AudioConfig, HookedWhisperConfig
from hooked_whisper.hook_layout import hook_point


def sinusoids(n_positions: int, d_model: int) -> Float[torch.Tensor, "pos d_model"]:
    """Whisper's encoder position table: sines then cosines, geometric timescales up to 10000.

    Computed on the CPU and moved to the default device: on the meta device (how
    ``from_pretrained`` builds the model) these ops would pull in torch's compiler stack,
    some 140 MiB of modules, for a table the checkpoint replaces anyway."""
    cpu = torch.device("cpu")
    step = -torch.log(torch.tensor(10000.0, device=cpu)) / (d_model // 2 - 1)
    inv_timescales = torch.exp(step * torch.arange(d_model // 2, device=cpu))
    t = torch.arange(n_positions, device=cpu)[:, None] * inv_timescales[None, :]
    return torch.cat([t.sin(), t.cos()], dim=1).to(torch.get_default_device())


class AudioEmbed(nn.Module):
    """Conv1d(k=3) -> GELU -> Conv1d(k=3, stride 2) -> GELU, plus positions.

    The conv hooks use the residual layout ``[batch, frames, d_model]`` like every other hook,
    so slicing by position works the same way everywhere.
    """

    def __init__(self, cfg: HookedWhisperConfig):
        super().__init__()
        d = cfg.d_model
        self.W_conv1 = nn.Parameter(torch.empty(d, cfg.n_mels, 3))
        self.b_conv1 = nn.Parameter(torch.zeros(d))
        self.W_conv2 = nn.Parameter(torch.empty(d, d, 3))
        self.b_conv2 = nn.Parameter(torch.zeros(d))
        # Stored, not recomputed: checkpoints carry the table (rounded to fp16 in the originals).
        self.W_pos = nn.Parameter(sinusoids(cfg.n_audio_ctx, d))
        self.hook_conv1 = hook_point(unit="mel_frame")  # [batch, 2 * n_audio_ctx, d_model], after GELU
        # Their sum is the encoder's residual stream: each writes to it.
        self.hook_conv2 = hook_point(writes_residual=True)  # [batch, n_audio_ctx, d_model], after GELU
        self.hook_pos_embed = hook_point(writes_residual=True)  # [batch, n_audio_ctx, d_model]

    def forward(self, mel: Float[torch.Tensor, "batch n_mels frames"]) -> Float[torch.Tensor, "batch pos d_model"]:
        x = self.hook_conv1(F.gelu(F.conv1d(mel, self.W_conv1, self.b_conv1, padding=1)).transpose(1, 2))
        x = F.gelu(F.conv1d(x.transpose(1, 2), self.W_conv2, self.b_conv2, stride=2, padding=1))
        x = self.hook_conv2(x.transpose(1, 2))
        return x + self.hook_pos_embed(self.W_pos.expand(x.shape[0], -1, -1))


def unembedding_order(W_E: torch.Tensor) -> tuple[int, ...]:
    return (1, 0) if W_E.dtype in (torch.float32, torch.float64) else (0, 1)


class TokenEmbed(nn.Module):
    def __init__(self, cfg: HookedWhisperConfig | HookedQwen2AudioConfig, tied: bool = True):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        # Tied to the unembedding (Whisper): in float32 stored column-major, so W_E.T is then a
        # contiguous matrix (twice as fast to multiply by one token at a time), and looking up
        # rows costs the same. Half-precision kernels want it row-major (nn.Linear's order), ten
        # times faster. An untied embedding is only looked up: left as it comes.
        keep_kernel_layouts(self, {"W_E": unembedding_order} if tied else {})

    def _apply(self, fn, recurse=True):  # .to(dtype) and friends: the order follows the dtype
        out = super()._apply(fn, recurse)
        restore_kernel_layouts(self)
        return out

    def forward(self, tokens: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch pos d_model"]:
        return F.embedding(tokens, self.W_E)


class Unembed(nn.Module):
    """An untied unembedding (the audio LLM's language-model head): ``W_U[d_model, d_vocab]``,
    stored as nn.Linear stores it."""

    def __init__(self, cfg: HookedQwen2AudioConfig):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        keep_kernel_layouts(self, {"W_U": LINEAR})

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_vocab"]:
        return x @ self.W_U


class PosEmbed(nn.Module):
    def __init__(self, cfg: HookedWhisperConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_text_ctx, cfg.d_model))

    def forward(
        self,
        tokens: Int[torch.Tensor, "batch pos"],
        offset: int = 0,
        positions: Int[torch.Tensor, "batch pos"] | None = None,
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        """Positions ``offset ..`` for every row, or each row's own ``positions`` (left-padded
        rows, whose positions are never beyond the slots ``offset ..``)."""
        n_positions = tokens.shape[1]
        if offset + n_positions > self.W_pos.shape[0]:
            raise ValueError(
                f"the decoder holds at most {self.W_pos.shape[0]} text positions; got {offset + n_positions}"
            )
        if positions is not None:
            return self.W_pos[positions]
        return self.W_pos[offset : offset + n_positions].expand(tokens.shape[0], -1, -1)
