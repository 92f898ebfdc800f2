"""Feature dashboards: one self-contained HTML file per autoencoder (no server, nothing fetched:
audio, images and data are embedded), showing for each chosen latent

- its activation density over the corpus (share of frames where it fires) and the histogram of
  its nonzero activations;
- its top-activating moments (the strongest position of each of the clips where it peaks
  highest), each as a playable audio snippet (16-bit WAV, base64), the log-mel spectrogram of
  the snippet and the latent's activation trace over it;
- for a decoder hook of the model's width, the tokens its decoder direction promotes
  (``W_dec[i] @ W_U``).

The numbers behind the page are also embedded as JSON (``<script id="dashboard-data">``).
"""

from __future__ import annotations

import base64
import html
import json
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from hooked_whisper.audio import SAMPLE_RATE, audio_clips, wav_base64
from hooked_whisper.saes.sae import SparseAutoencoder

if TYPE_CHECKING:
    from hooked_whisper.hooked_audio_model import HookedAudioModel
    from hooked_whisper.model import TokensInput

MEL_PER_SECOND = 100


@dataclass
class Moment:
    clip: int  # index into the corpus
    position: int  # in the hook's positions (audio positions or decoder tokens)
    activation: float


def _clip_name(clip, index: int) -> str:
    return Path(clip).name if isinstance(clip, (str, Path)) else f"clip {index}"


def latent_activations(
    model: HookedAudioModel,
    sae: SparseAutoencoder,
    clips: Sequence,
    sample_rate: int | None = None,
    progress: bool = True,
    tokens: TokensInput | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Per clip, the latents ``[real positions, d_sae]`` at the autoencoder's hook (spliced in
    with its error term, so the model runs as it would without it), and for a decoder hook the
    tokens read: ``tokens`` (one row for every clip) or each clip's greedy transcript."""
    hook = sae.hook_name
    if hook is None:
        raise ValueError("the autoencoder carries no hook_name: set sae.hook_name to the hook it reads")
    layout = model.hook_layout(hook)
    acts_name = model.sae_hook_name(hook)
    acts, read = [], []
    waves = audio_clips(list(clips), sample_rate)
    with torch.no_grad(), model.saes({hook: sae}, use_error_term=True):
        for wave_ in tqdm(waves, desc="latents over the corpus", disable=not progress, unit="clip"):
            if layout.unit == "token":
                names = [acts_name, "hook_tokens"]
                _, cache = model.run_with_cache(wave_, tokens, names_filter=names, sample_rate=SAMPLE_RATE)
                row = cache["hook_tokens"][0] if tokens is None else model.check_tokens(tokens)[0]
                acts.append(cache[acts_name][0, : model.real_length(row)].cpu())
                read.append(row.cpu())
            else:
                kept: list[torch.Tensor] = []
                with model.hooks(fwd_hooks=[(acts_name, lambda x, hook, kept=kept: kept.append(x))]):
                    model.encode(model.to_mel(wave_, SAMPLE_RATE))
                n = min(math.ceil(wave_.shape[0] / SAMPLE_RATE * layout.positions_per_second), kept[0].shape[1])
                acts.append(kept[0][0, :n].cpu())
                read.append(None)
    return acts, read


def feature_dashboard(
    model: HookedAudioModel,
    sae: SparseAutoencoder,
    clips: Sequence,
    out: str | Path,
    latents: Sequence[int] | None = None,
    n_latents: int = 12,
    top: int = 6,
    context_s: float = 0.6,
    sample_rate: int | None = None,
    progress: bool = True,
    tokens: TokensInput | None = None,
) -> Path:
    """Write the dashboard of ``sae`` over ``clips`` (paths or waveforms) to ``out`` (an .html
    file). ``latents`` defaults to the ``n_latents`` with the largest total activation; for a
    decoder hook the decoder reads ``tokens`` (one row for every clip), or each clip's greedy
    transcript."""
    hook = sae.hook_name
    acts, tokens = latent_activations(model, sae, clips, sample_rate, progress, tokens)
    layout = model.hook_layout(hook)  # type: ignore[arg-type]
    frames = torch.cat(acts).float()
    density = (frames > 0).float().mean(0)
    if latents is None:
        latents = frames.sum(0).topk(min(n_latents, sae.d_sae)).indices.tolist()
    bad = [i for i in latents if not 0 <= i < sae.d_sae]
    if bad:
        raise ValueError(f"latents {bad} out of range: the autoencoder has latents 0..{sae.d_sae - 1}")
    waves = audio_clips(list(clips), sample_rate)
    promotes = layout.unit == "token" and sae.d_in == model.W_U.shape[0]
    summary = {
        "hook": hook,
        "d_sae": sae.d_sae,
        "architecture": sae.architecture,
        "clips": len(acts),
        "frames": len(frames),
        "l0": float((frames > 0).sum(1).float().mean()),
        "dead_fraction": float((density == 0).float().mean()),
    }
    sections, data = [], []
    for latent in latents:
        column = [a[:, latent] for a in acts]
        peaks = [Moment(c, int(col.argmax()), float(col.max())) for c, col in enumerate(column) if len(col)]
        moments = [m for m in sorted(peaks, key=lambda m: -m.activation)[:top] if m.activation > 0]
        entry = {
            "latent": latent,
            "density": float(density[latent]),
            "max_activation": max((m.activation for m in moments), default=0.0),
            "moments": [
                {"clip": _clip_name(clips[m.clip], m.clip), "position": m.position, "activation": m.activation}
                for m in moments
            ],
        }
        if promotes:
            logits = sae.W_dec.detach()[latent].to(model.W_U) @ model.W_U
            top_tokens = logits.topk(10).indices.tolist()
            entry["promoted_tokens"] = [model.to_str_tokens([t])[0] for t in top_tokens]
        data.append(entry)
        rows = [_moment_row(model, layout, waves, tokens, column, m, clips, context_s) for m in moments]
        sections.append(_section(entry, frames[:, latent], rows))
    page = _PAGE.format(
        title=html.escape(f"Latents of the autoencoder at {hook}"),
        summary=html.escape(json.dumps(summary)),
        summary_rows="".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items()
        ),
        density=_histogram(torch.log10(density[density > 0]), "log10 activation density of the latents that fire"),
        sections="\n".join(sections),
        data=json.dumps({"summary": summary, "latents": data}).replace("</", "<\\/"),
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out


def _moment_row(model, layout, waves, tokens, column, moment: Moment, clips, context_s: float) -> str:
    wave_ = waves[moment.clip]
    trace = column[moment.clip]
    label = html.escape(f"{_clip_name(clips[moment.clip], moment.clip)}")
    if layout.unit == "token":
        row_tokens = tokens[moment.clip]
        start, end = max(0, moment.position - 6), moment.position + 3
        words = model.to_str_tokens(row_tokens[start:end])
        text = "".join(
            f"<b>{html.escape(w)}</b>" if start + i == moment.position else html.escape(w) for i, w in enumerate(words)
        )
        where, audio, picture, trace_part = f"token {moment.position}", wave_, "", trace
    else:
        rate = layout.positions_per_second
        centre = moment.position / rate
        start_s, end_s = max(0.0, centre - context_s), min(wave_.shape[0] / SAMPLE_RATE, centre + context_s)
        audio = wave_[int(start_s * SAMPLE_RATE) : int(end_s * SAMPLE_RATE)]
        mel = model.to_mel(wave_, SAMPLE_RATE).mel[0, :, int(start_s * MEL_PER_SECOND) : int(end_s * MEL_PER_SECOND)]
        picture = f'<img class="spec" alt="log-mel spectrogram" src="data:image/png;base64,{_png(mel.flip(0))}">'
        trace_part = trace[int(start_s * rate) : math.ceil(end_s * rate)]
        where, text = f"{start_s:.2f}-{end_s:.2f} s (peak {centre:.2f} s)", ""
    return (
        f"<tr><td>{label}<br>{where}</td><td>{moment.activation:.3g}</td>"
        f'<td><audio controls src="data:audio/wav;base64,{wav_base64(audio)}"></audio>{picture}'
        f"{_trace(trace_part)}{text}</td></tr>"
    )


def _section(entry: dict, values: torch.Tensor, rows: list[str]) -> str:
    promoted = entry.get("promoted_tokens")
    tokens = f"<p>promotes: {html.escape(' | '.join(promoted))}</p>" if promoted else ""
    histogram = _histogram(values[values > 0], "nonzero activations")
    return (
        f'<section class="latent" id="latent-{entry["latent"]}"><h2>latent {entry["latent"]}</h2>'
        f"<p>density {entry['density']:.3%}, max activation {entry['max_activation']:.3g}</p>{tokens}{histogram}"
        f"<table><tr><th>moment</th><th>activation</th><th>audio, spectrogram, activation</th></tr>"
        f"{''.join(rows) or '<tr><td colspan=3>never fires on this corpus</td></tr>'}</table></section>"
    )


def _png(image: torch.Tensor) -> str:
    """A greyscale PNG of a 2-D tensor (scaled to its own range), written with zlib alone."""
    lo, hi = image.min(), image.max()
    pixels = ((image - lo) / (hi - lo + 1e-12) * 255).to(torch.uint8)
    height, width = pixels.shape
    raw = b"".join(b"\x00" + bytes(row.tolist()) for row in pixels)  # filter type 0 per row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def _trace(values: torch.Tensor, width: int = 300, height: int = 40) -> str:
    if len(values) == 0:
        return ""
    top = float(values.max()) or 1.0
    step = width / max(len(values) - 1, 1)
    points = " ".join(f"{i * step:.1f},{height - float(v) / top * height:.1f}" for i, v in enumerate(values))
    return f'<svg class="trace" width="{width}" height="{height}"><polyline points="{points}"/></svg>'


def _histogram(values: torch.Tensor, title: str, bins: int = 30, width: int = 300, height: int = 60) -> str:
    if len(values) == 0:
        return f"<p>{html.escape(title)}: none</p>"
    counts = torch.histc(values.float(), bins=bins)
    lo, hi = float(values.min()), float(values.max())
    bar = width / bins
    rects = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - float(c) / float(counts.max()) * height:.1f}" '
        f'width="{bar - 1:.1f}" height="{float(c) / float(counts.max()) * height:.1f}"/>'
        for i, c in enumerate(counts)
    )
    return (
        f'<figure><svg class="histogram" width="{width}" height="{height}">{rects}</svg>'
        f"<figcaption>{html.escape(title)} ({lo:.3g} to {hi:.3g})</figcaption></figure>"
    )


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} table {{ border-collapse: collapse; }}
td, th {{ border-top: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }}
.spec {{ display: block; height: 80px; width: 300px; image-rendering: pixelated; }}
.trace polyline {{ fill: none; stroke: #c33; stroke-width: 1.5; }} .histogram rect {{ fill: #36c; }}
section.latent {{ margin-top: 2em; }}
</style></head><body>
<h1>{title}</h1>
<table class="summary" data-summary="{summary}">{summary_rows}</table>
{density}
{sections}
<script type="application/json" id="dashboard-data">{data}</script>
</body></html>
"""
