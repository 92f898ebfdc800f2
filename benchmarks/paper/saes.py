"""Sparse autoencoders on tiny.en's encoder residual stream, one per layer, trained on real
multilingual speech (a subset of VoxLingua107's development set): FVU, L0 and the share of dead
latents on held-out clips, the cost of splicing each in (next-token loss and WER of the greedy
transcripts of held-out English clips), and training throughput.

    .venv/bin/python benchmarks/paper/saes.py --data ../shared/data/voxlingua107-dev-subset

The data folder holds ``clips.tsv`` (``path``, ``language``, ``video``) and the clips. Every
``held_out_every``-th clip (by table row) is held out from training: the metrics and the splice
cost are measured on those. Writes ``results/saes.{md,json}`` and ``results/saes.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from hooked_whisper import HookedWhisper
from hooked_whisper.probing import extract_activations
from hooked_whisper.saes import TrainConfig, matched_latents, splice_cost, train_sae
from hooked_whisper.saes.training import FrameStream

HERE = Path(__file__).parent


def read_clips(data: Path, per_language: int, max_seconds: float) -> tuple[list[dict], list[dict]]:
    """The first ``per_language`` clips of each language that fit one 30 s window (for training
    and the held-out metrics), and the English clips after them (never trained on: the splice cost)."""
    with open(data / "clips.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or not {"path", "language", "video"} <= set(rows[0]):
        raise ValueError(f"{data / 'clips.tsv'} needs path, language and video columns")
    taken: dict[str, int] = {}
    chosen, spare_english = [], []
    for row in rows:
        if float(row.get("seconds", 0)) > max_seconds:
            continue
        if taken.get(row["language"], 0) < per_language:
            taken[row["language"]] = taken.get(row["language"], 0) + 1
            chosen.append(row)
        elif row["language"] == "en":
            spare_english.append(row)
    return chosen, spare_english


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="folder with clips.tsv and the clips")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--clips-per-language", type=int, default=15)
    parser.add_argument("--expansion-factor", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument(
        "--lr", type=float, default=2e-3, help="Adam's rate (sparsify's default is lower, for long runs)"
    )
    parser.add_argument("--held-out-every", type=int, default=5)
    parser.add_argument(
        "--splice-clips", type=int, default=8, help="English clips, never trained on, for the splice cost"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--stability-seeds", type=int, nargs="*", default=[1, 2], help="more seeds for the last layer")
    args = parser.parse_args()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    torch.manual_seed(0)
    model = HookedWhisper.from_pretrained(args.model)
    rows, spare_english = read_clips(args.data, args.clips_per_language, 29.5)
    clips = [str(args.data / r["path"]) for r in rows]
    hooks = [model.hook_name("encoder", l, "hook_resid_post") for l in range(model.layer_count("encoder"))]
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="sae_frames_"))
    store = extract_activations(model, clips, hooks, pooling="none", out_dir=folder)
    extraction_s = time.perf_counter() - started
    held_out = [i for i in range(len(clips)) if i % args.held_out_every == args.held_out_every - 1]
    english = [str(args.data / r["path"]) for r in spare_english[: args.splice_clips]]
    config = TrainConfig(
        expansion_factor=args.expansion_factor,
        k=args.k,
        batch_frames=1024,
        epochs=args.epochs,
        held_out_every=args.held_out_every,
        dead_after_frames=50_000,
        lr=args.lr,
    )
    results, saes = [], {}
    for hook in hooks:
        run = train_sae(store, hook, config)
        saes[hook] = run.sae
        cost = splice_cost(model, run.sae, english, max_new_tokens=args.max_new_tokens)
        results.append(
            {"hook": hook, "layer": model.hook_layout(hook).layer, **asdict(run.metrics),
             "dead_in_training": run.dead_in_training, "steps": run.steps, "trained_frames": run.frames,
             "train_seconds": run.seconds, "frames_per_second": run.frames_per_second,
             "loss_clean": cost.loss_clean, "loss_spliced": cost.loss_spliced, "delta_loss": cost.delta_loss,
             "wer_vs_clean": cost.wer_vs_clean, "splice_clips": cost.clips, "splice_tokens": cost.tokens}
        )  # fmt: skip
        print(results[-1], flush=True)
    # Stability across seeds (AudioSAE's measure): the share of the first run's latents that a run
    # from another seed also found, by decoder cosine > 0.7; over all latents and over those that
    # fire on the held-out frames.
    last, stability = hooks[-1], []
    with torch.no_grad():
        alive = torch.zeros(config.expansion_factor * model.cfg.d_model, dtype=torch.bool)
        for chunk in FrameStream(store, last, config).held_out_frames():
            alive |= (saes[last].encode(chunk) > 0).any(0)
    for seed in args.stability_seeds:
        matched = matched_latents(saes[last], train_sae(store, last, replace(config, seed=seed)).sae)
        stability.append(
            {
                "seed": seed,
                "matched": float(matched.float().mean()),
                "matched_alive": float(matched[alive].float().mean()),
            }
        )
        print(stability[-1], flush=True)
    languages = sorted({r["language"] for r in rows})
    header = [
        f"Sparse autoencoders on {args.model}'s encoder residual stream (hook_resid_post of every block).",
        f"{len(clips)} VoxLingua107 dev clips ({args.clips_per_language} per language: {', '.join(languages)}), "
        f"{len(held_out)} held out; extraction {extraction_s:.0f} s. TopK (sparsify SparseCoder + AuxK), "
        f"{args.expansion_factor}x latents, k={args.k}, {args.epochs} epochs, batch 1024 frames, "
        f"Adam at lr {args.lr:g}; "
        "a latent silent for 50k frames counts as dead in training; "
        f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s).",
        f"Splice cost: next-token loss (nats/token) of the clean greedy transcripts of {len(english)} English clips "
        f"never trained on (at most {args.max_new_tokens} new tokens) with the reconstruction in place of the "
        "activation, and the WER of the transcripts generated that way against the clean ones.",
        "",
        "| layer | FVU | L0 | dead (held out) | dead (training) | frames trained | frames/s | loss clean | "
        "loss spliced | WER vs clean |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines = header + [
        f"| {r['layer']} | {r['fvu']:.3f} | {r['l0']:.1f} | {r['dead_fraction']:.3f} | {r['dead_in_training']:.3f} | "
        f"{r['trained_frames']} | {r['frames_per_second']:.0f} | {r['loss_clean']:.3f} | {r['loss_spliced']:.3f} | "
        f"{r['wer_vs_clean']:.3f} |"
        for r in results
    ]
    lines += ["", f"Stability on layer {model.hook_layout(last).layer} (seed {config.seed} against others; "
              f"{int(alive.sum())} of {len(alive)} latents fire on the held-out frames):", ""]  # fmt: skip
    lines += [
        f"- seed {s['seed']}: {s['matched']:.1%} of all latents, {s['matched_alive']:.1%} of the live ones matched"
        for s in stability
    ]
    summary = {"args": {**vars(args), "data": str(args.data)}, "results": results, "stability": stability}
    (out / "saes.json").write_text(json.dumps(summary, indent=1))
    (out / "saes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results, out / "saes.png")


def plot(results: list[dict], path: Path) -> None:
    """FVU, dead latents and splice cost per layer (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    layers = [r["layer"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    axes[0].plot(layers, [r["fvu"] for r in results], "o-")
    axes[0].set(title="FVU (held out)", xlabel="encoder layer", ylim=(0, None))
    axes[1].plot(layers, [r["dead_fraction"] for r in results], "o-", label="held out")
    axes[1].plot(layers, [r["dead_in_training"] for r in results], "s--", label="training")
    axes[1].set(title="dead latents", xlabel="encoder layer", ylim=(0, 1))
    axes[1].legend()
    axes[2].plot(layers, [r["delta_loss"] for r in results], "o-", label="next-token loss increase")
    axes[2].plot(layers, [r["wer_vs_clean"] for r in results], "s--", label="WER vs clean")
    axes[2].set(title="splice cost", xlabel="encoder layer")
    axes[2].legend()
    for ax in axes:
        ax.set_xticks(layers)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
