"""Lenses as pictures: the decoder logit lens as a layers x positions map (each cell the top-1
token at that layer and its probability; framed, the saturation layer from which the top-1 stays
the model's final prediction), and the encoder lens as one transcript per encoder layer."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hooked_whisper.hooked_audio_model import HookedAudioModel
from hooked_whisper.lens import EncoderLensRow, LogitLens
from hooked_whisper.views.page import Axis, Heatmap, Page, document


def logit_lens_view(model: HookedAudioModel, lens: LogitLens, tokens: torch.Tensor, batch_index: int = 0) -> Heatmap:
    """``lens`` from ``logit_lens(model, cache)``; ``tokens`` the ids the cache read (``[pos]`` or
    ``[batch, pos]``), which label the columns. Colour: the top-1 token's probability."""
    row = tokens[batch_index] if tokens.ndim == 2 else tokens
    n_layers, _, n_positions, _ = lens.top_tokens.shape
    if len(row) != n_positions:
        raise ValueError(
            f"tokens have {len(row)} positions but the lens has {n_positions}: pass the tokens the cache read"
        )
    top = lens.top_tokens[:, batch_index, :, 0]
    words = [model.to_str_tokens(top[layer]) for layer in range(n_layers)]
    saturation = lens.saturation_layer[batch_index].tolist()
    return Heatmap(
        lens.top_probs[:, batch_index, :, 0].float().cpu().numpy().astype(np.float32),
        rows=Axis("layer", list(lens.labels)),
        cols=Axis("position (token read)", [f"{p}:{t}" for p, t in enumerate(model.to_str_tokens(row))]),
        title="decoder logit lens: top-1 token per layer (framed: saturation layer)",
        value_name="top-1 probability",
        cell_text=[list(w) for w in words],
        outlined=[(layer + 1, p) for p, layer in enumerate(saturation)],  # row 0 is the embedding
    )


@dataclass
class EncoderLensView(Page):
    rows: list[EncoderLensRow]

    def lines(self) -> list[tuple[str, str]]:
        return [
            (
                f"layer {r.layer}  WER vs final {r.wer_vs_final:.2f}" + ("  (looped)" if r.loop.looping else ""),
                r.text.strip(),
            )
            for r in self.rows
        ]

    def page(self) -> str:
        body = "".join(
            f"<tr><td>{html.escape(head)}</td><td>{html.escape(text)}</td></tr>" for head, text in self.lines()
        )
        table = f"<h3>encoder lens: the transcript the decoder reads from each encoder layer</h3><table>{body}</table>"
        return document("encoder lens", [], body=table)

    def png(self, path: str | Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        lines = self.lines()
        fig = plt.figure(figsize=(10, 0.45 * len(lines) + 0.6))
        fig.suptitle("encoder lens: the transcript read from each encoder layer", fontsize=10)
        for i, (head, text) in enumerate(lines):
            y = 1 - (i + 1) / (len(lines) + 1)
            fig.text(0.01, y, head, fontsize=8, weight="bold")
            fig.text(0.3, y, text[:110] + ("..." if len(text) > 110 else ""), fontsize=8)
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return Path(path)


def encoder_lens_view(rows: list[EncoderLensRow]) -> EncoderLensView:
    """``rows`` from ``encoder_lens(model, audio)`` (Whisper only: that lens reads a decoder
    through cross-attention)."""
    if not rows:
        raise ValueError("no encoder-lens rows: pass what encoder_lens(model, audio) returns")
    return EncoderLensView(list(rows))
