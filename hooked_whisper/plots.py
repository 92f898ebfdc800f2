"""Figures for the lens and probing results (matplotlib: ``pip install "hooked-whisper[plots]"``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hooked_whisper.hook_layout import in_conv_stem

if TYPE_CHECKING:
    from hooked_whisper.hooked_audio_model import HookedAudioModel
    from hooked_whisper.lens import EncoderLensRow, LogitLens
    from hooked_whisper.probing import ProbeReport


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError('plots need matplotlib: pip install "hooked-whisper[plots]"') from err
    return plt


def _save(fig, path: str | Path | None):
    if path is not None:
        fig.savefig(path, dpi=130, bbox_inches="tight")
    return fig


def plot_logit_lens(lens: LogitLens, model: HookedAudioModel, path: str | Path | None = None, batch_index: int = 0):
    """Heatmap, layer x position: the probability of the model's final prediction, with each
    layer's top-1 token written in its cell."""
    plt = _pyplot()
    probs = lens.final_prob[:, batch_index].cpu().numpy()
    n_layers, n_pos = probs.shape
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * n_pos), 0.6 * n_layers + 1.5))
    image = ax.imshow(probs, aspect="auto", cmap="Blues", vmin=0, vmax=1)
    for layer in range(n_layers):
        for pos, text in enumerate(model.to_str_tokens(lens.top_tokens[layer, batch_index, :, 0])):
            ax.text(
                pos,
                layer,
                text.strip()[:8],
                ha="center",
                va="center",
                fontsize=7,
                color="white" if probs[layer, pos] > 0.6 else "black",
            )
    final = model.to_str_tokens(lens.final_token[batch_index])
    ax.set_xticks(range(n_pos), [t.strip()[:8] for t in final], rotation=60, fontsize=7)
    ax.set_yticks(range(n_layers), lens.labels)
    ax.set_xlabel("position (labelled with the model's final prediction there)")
    ax.set_title("decoder logit lens: top-1 token per layer; colour = p(final prediction)")
    fig.colorbar(image, ax=ax, fraction=0.03)
    return _save(fig, path)


def plot_encoder_lens(rows: list[EncoderLensRow], path: str | Path | None = None, title: str = "encoder lens"):
    """WER by encoder layer (against the final transcript, and the reference when known), with
    each layer's transcript beside its point and loops marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    layers = [r.layer for r in rows]
    ax.plot([min(r.wer_vs_final, 1.5) for r in rows], layers, "o-", label="WER vs final transcript")
    if all(r.wer_vs_reference is not None for r in rows):
        ax.plot([min(r.wer_vs_reference, 1.5) for r in rows], layers, "s--", label="WER vs reference")
    for r in rows:
        note = ("[loop] " if r.loop.looping else "") + (r.text[:60] or "(empty)")
        ax.annotate(
            note,
            (min(r.wer_vs_final, 1.5), r.layer),
            xytext=(8, 0),
            textcoords="offset points",
            fontsize=7,
            va="center",
        )
    ax.set_xlim(-0.05, 3.2)
    ax.set_yticks(layers)
    ax.invert_yaxis()
    ax.set_xlabel("word error rate (capped at 1.5)")
    ax.set_ylabel("encoder layer read by the decoder")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_probes(
    reports: dict[str, ProbeReport],
    path: str | Path | None = None,
    title: str = "linear probes",
    chance: float | None = None,
):
    """Balanced accuracy by relative depth (0: the input, 1: the last layer), one line per report,
    with its 95% group-bootstrap interval, the control task (dotted, when it was run) and the
    permuted-label score (dashed) drawn in the same colour; ``chance`` as a grey line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, (name, report) in enumerate(reports.items()):
        rows = report.results
        depth = [_depth(r, report) for r in rows]
        color = f"C{i}"
        ax.plot(depth, [r.balanced_accuracy for r in rows], color=color, marker="o", label=name)
        ax.fill_between(depth, [r.ci_low for r in rows], [r.ci_high for r in rows], color=color, alpha=0.15)
        if all(r.control is not None for r in rows):
            ax.plot(depth, [r.control for r in rows], color=color, linestyle=":", alpha=0.8)
        ax.plot(depth, [r.shuffled for r in rows], color=color, linestyle="--", alpha=0.5)
    if chance is not None:
        ax.axhline(chance, color="grey", linewidth=0.8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("relative depth (input = 0, last layer = 1; conv stem in between)")
    ax.set_ylabel("held-out balanced accuracy")
    ax.set_title(title + "\n(band: 95% interval; dotted: control task; dashed: permuted labels)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _depth(result, report: ProbeReport) -> float:
    """Where a probed hook sits: 0 for the log-mel input, 0.5 / n for the conv stem, (l + 1) / n
    for block l of n."""
    if result.layer is not None and report.n_layers:
        return (result.layer + 1) / report.n_layers
    if in_conv_stem(result.hook) and report.n_layers:
        return 0.5 / report.n_layers
    return 0.0
