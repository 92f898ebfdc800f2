"""Sparse autoencoders on the encoder residual stream (hook_resid_post of every block), trained on
real multilingual speech (a subset of VoxLingua107's development set) plus real non-speech
(music tracks and sound effects), and what they are good for:

- per layer: FVU, L0 and the share of dead latents on held-out clips, the cost of splicing the
  autoencoder in (next-token loss and WER of the greedy transcripts of English clips never trained
  on), training throughput, and stability across seeds (the share of one run's latents another
  seed finds again by decoder cosine > 0.7, AudioSAE's measure; over all latents and the live ones);
- the latents that tell speech from non-speech (per-clip mean activation, AUROC on training clips);
- steering: the decoder directions of the ``--steer-latents`` most non-speech latents of the last
  layer, weighted by their mean activation on training non-speech and scaled (the scale picked on
  training clips), added at every frame while ``transcribe`` runs on held-out non-speech (whose
  sources were never trained on or used for the choice). Outcome: the transcript is non-empty (the
  no-speech skipping rule let words through), a hallucination. Its cost: the WER of held-out
  English speech transcribed under the same steering, against its clean transcript. Controls: as
  many random live latents with the same weights, and a random direction of the steering vector's
  norm. Intervals: bootstrap over sources (a music track, a group of sound files; a video for
  speech); paired cluster permutation tests against each control, Holm-adjusted.

    .venv/bin/python benchmarks/paper/saes.py --data ../shared/data/voxlingua107-dev-subset --sounds /tmp/sounds

``--data`` holds ``clips.tsv`` (``path``, ``language``, ``video``) and the clips. ``--sounds`` is a
folder of non-speech sound files (wav, ogg, oga, flac; searched recursively): files longer than
30 s are music tracks (several pieces are cut from each), shorter ones are sound effects (grouped
four at a time per folder, each group played in sequence with short gaps). The study's folder is
six Debian packages unpacked into one folder::

    apt-get download asterisk-moh-opsound-wav sound-icons oxygen-sounds chromium-bsu-data \\
        tuxpaint-data extremetuxracer-data
    for f in *.deb; do dpkg -x "$f" /tmp/sounds; done

(tuxpaint's spoken prompts are skipped by name.) Writes ``results/saes.{md,json}`` and
``results/saes.png`` for tiny.en, ``results/saes_{model}.*`` for another model (``--name`` chooses).
``--layers`` trains on some encoder layers only (steering uses the last one given): with
``--layers 3 --stability-seeds`` and another ``--scales`` grid, tiny.en's steering is rerun without
the rest of the study.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import torch

from hooked_whisper import HookedWhisper, load_audio
from hooked_whisper.metrics import adjust_p_values, cluster_permutation_p, word_error_rate
from hooked_whisper.probing import extract_activations
from hooked_whisper.saes import TrainConfig, matched_latents, splice_cost, steering_hooks, train_sae
from hooked_whisper.saes.training import FrameStream

HERE = Path(__file__).parent
SR = 16_000
SOUND_SUFFIXES = {".wav", ".ogg", ".oga", ".flac"}
SPOKEN = {"areyousure", "youcannot", "giggle", "tuxok", "prompt"}  # tuxpaint's voice prompts: speech


def read_clips(data: Path, per_language: int, max_seconds: float) -> tuple[list[dict], list[dict]]:
    """The first ``per_language`` clips of each language that fit one 30 s window (for training),
    and the English clips after them (never trained on: splice cost and steering's WER)."""
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


def non_speech_clips(folder: Path, pieces_per_track: int, seed: int) -> list[dict]:
    """Non-speech clips (``audio``, ``source``, ``kind``): pieces of 5-25 s of each track, and
    3-15 s of each group of four sound effects played in a random order with 0.1-0.5 s gaps;
    loudness (RMS) log-uniform in 0.003-0.1."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SOUND_SUFFIXES and p.stem.lower() not in SPOKEN)
    if not files:
        raise ValueError(f"no wav/ogg/oga/flac files under {folder}: unpack the sound packages there (see --help)")
    gen = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=gen))

    def loudness(x: torch.Tensor) -> torch.Tensor:
        rms = 10 ** uniform(-2.5, -1.0)
        return x * rms / x.pow(2).mean().sqrt().clamp(min=1e-8)

    clips, effects = [], defaultdict(list)
    for path in files:
        audio = load_audio(path)
        if audio.pow(2).mean() < 1e-10:
            continue
        if audio.shape[0] > 30 * SR:
            for _ in range(pieces_per_track):
                n = int(uniform(5, 25) * SR)
                start = int(torch.randint(0, audio.shape[0] - n, (1,), generator=gen))
                clips.append({"audio": loudness(audio[start : start + n]), "source": path.stem, "kind": "music"})
        else:
            effects[path.parent].append(audio)
    for parent, sounds in sorted(effects.items()):
        for g in range(0, len(sounds), 4):
            group, n, parts, length = sounds[g : g + 4], int(uniform(3, 15) * SR), [], 0
            while length < n:
                sound = group[int(torch.randint(len(group), (1,), generator=gen))]
                gap = torch.zeros(int(uniform(0.1, 0.5) * SR))
                parts += [sound, gap]
                length += sound.shape[0] + gap.shape[0]
            source = f"{parent.name}/{g // 4}"
            clips.append({"audio": loudness(torch.cat(parts)[:n]), "source": source, "kind": "sounds"})
    return clips


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Per column: the chance a row of ``positive`` exceeds a row of ``negative`` (ties count half)."""
    above = (positive[:, None] > negative[None]).float().mean((0, 1))
    tied = (positive[:, None] == negative[None]).float().mean((0, 1))
    return above + tied / 2


def group_interval(values: list[float], groups: list, statistic, repeats: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile interval of ``statistic(values)`` resampling whole groups."""
    names = sorted(set(groups), key=str)
    members = {name: [i for i, g in enumerate(groups) if g == name] for name in names}
    gen = torch.Generator().manual_seed(seed)
    draws = []
    for pick in torch.randint(len(names), (repeats, len(names)), generator=gen).tolist():
        idx = [i for j in pick for i in members[names[j]]]
        draws.append(statistic([values[i] for i in idx], idx))
    t = torch.tensor(draws, dtype=torch.float64)
    return [float(t.nanquantile(0.025)), float(t.nanquantile(0.975))]


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def transcripts(model: HookedWhisper, audio: list[torch.Tensor], hooks: list, desc: str) -> list[str]:
    print(desc, flush=True)
    out = model.transcribe(audio, sample_rate=SR, fwd_hooks=hooks, batch_size=8, progress=True)
    return [t.text.strip() for t in out]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="folder with clips.tsv and the clips")
    parser.add_argument("--sounds", type=Path, required=True, help="folder of non-speech sound files (see --help)")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--layers", type=int, nargs="+", help="encoder layers (default: every one)")
    parser.add_argument("--name", help="results file stem (default: saes for tiny.en, saes_{model} otherwise)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clips-per-language", type=int, default=10)
    parser.add_argument("--pieces-per-track", type=int, default=2)
    parser.add_argument("--expansion-factor", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--lr", type=float, default=2e-3, help="Adam's rate (sparsify's default is lower, for long runs)"
    )
    parser.add_argument("--held-out-every", type=int, default=5)
    parser.add_argument("--english-clips", type=int, default=16, help="English clips never trained on")
    parser.add_argument("--splice-clips", type=int, default=8, help="of those, for the splice cost")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--stability-seeds", type=int, nargs="*", default=[1, 2], help="more seeds, every layer")
    parser.add_argument("--steer-latents", type=int, default=8)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0, 9.0])
    parser.add_argument(
        "--max-wer", type=float, default=0.1, help="the largest WER a scale may cost on training speech"
    )
    parser.add_argument("--permutations", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    args.name = args.name or ("saes" if args.model == "tiny.en" else f"saes_{args.model}")
    args.out.mkdir(exist_ok=True)
    # The frames store runs to hundreds of MB: it lives only as long as the run, even one that fails.
    with tempfile.TemporaryDirectory(prefix="sae_frames_") as frames:
        study(args, Path(frames))


def study(args: argparse.Namespace, frames_dir: Path) -> None:
    torch.manual_seed(args.seed)
    model = HookedWhisper.from_pretrained(args.model)
    rows, spare_english = read_clips(args.data, args.clips_per_language, 29.5)
    english_rows = spare_english[: args.english_clips]
    english = [load_audio(args.data / r["path"]) for r in english_rows]
    sounds = non_speech_clips(args.sounds, args.pieces_per_track, args.seed)
    sources = sorted({c["source"] for c in sounds})
    steer_held_out = set(sources[1::2])  # half the sources, never trained on nor used to choose
    ns_train = [c for c in sounds if c["source"] not in steer_held_out]
    ns_test = [c for c in sounds if c["source"] in steer_held_out]
    speech = [load_audio(args.data / r["path"]) for r in rows]
    clips = speech + [c["audio"] for c in ns_train]
    is_speech = torch.tensor([True] * len(speech) + [False] * len(ns_train))
    if args.layers is None:
        args.layers = list(range(model.layer_count("encoder")))
    hooks = [model.hook_name("encoder", l, "hook_resid_post") for l in args.layers]
    started = time.perf_counter()
    store = extract_activations(model, clips, hooks, pooling="none", sample_rate=SR, out_dir=frames_dir)
    extraction_s = time.perf_counter() - started
    config = TrainConfig(
        expansion_factor=args.expansion_factor,
        k=args.k,
        batch_frames=1024,
        epochs=args.epochs,
        held_out_every=args.held_out_every,
        dead_after_frames=50_000,
        lr=args.lr,
        seed=args.seed,
    )
    results, saes, means = [], {}, {}
    for hook in hooks:
        run = train_sae(store, hook, config)
        sae = saes[hook] = run.sae
        cost = splice_cost(model, sae, english[: args.splice_clips], sample_rate=SR, max_new_tokens=args.max_new_tokens)
        with torch.no_grad():
            alive = torch.zeros(sae.d_sae, dtype=torch.bool)
            for chunk in FrameStream(store, hook, config).held_out_frames():
                alive |= (sae.encode(chunk) > 0).any(0)
            # per clip, each latent's mean activation over the clip's real frames
            means[hook] = torch.stack([sae.encode(frames.float()).mean(0) for frames in store.rows(hook)])
        auc = auroc(means[hook][~is_speech], means[hook][is_speech])
        stability = []
        for seed in args.stability_seeds:
            other = train_sae(store, hook, replace(config, seed=seed)).sae
            matched = matched_latents(sae, other)
            stability.append(
                {
                    "seed": seed,
                    "matched": float(matched.float().mean()),
                    "matched_alive": float(matched[alive].float().mean()),
                }
            )
        results.append(
            {"hook": hook, "layer": model.hook_layout(hook).layer, **asdict(run.metrics),
             "dead_in_training": run.dead_in_training, "alive_held_out": int(alive.sum()), "steps": run.steps,
             "trained_frames": run.frames, "train_seconds": run.seconds, "frames_per_second": run.frames_per_second,
             "loss_clean": cost.loss_clean, "loss_spliced": cost.loss_spliced, "delta_loss": cost.delta_loss,
             "wer_vs_clean": cost.wer_vs_clean, "splice_clips": cost.clips, "splice_tokens": cost.tokens,
             "best_non_speech_auroc": float(auc.max()), "latents_auroc_above_0.95": int((auc > 0.95).sum()),
             "speech_latents_auroc_below_0.05": int((auc < 0.05).sum()), "stability": stability}
        )  # fmt: skip
        print({k: v for k, v in results[-1].items()}, flush=True)
    steering = steer(
        model,
        args,
        hooks[-1],
        saes[hooks[-1]],
        means[hooks[-1]],
        is_speech,
        speech,
        rows,
        ns_train,
        ns_test,
        english,
        english_rows,
    )
    summary = {
        "args": {**vars(args), "data": str(args.data), "sounds": str(args.sounds), "out": str(args.out)},
        "data": {"speech_clips": len(speech), "non_speech_train": len(ns_train), "non_speech_held_out": len(ns_test),
                 "non_speech_sources": len(sources), "held_out_sources": sorted(steer_held_out),
                 "extraction_seconds": extraction_s, "cpu": platform.processor() or platform.machine(),
                 "threads": torch.get_num_threads()},
        "results": results,
        "steering": steering,
    }  # fmt: skip
    (args.out / f"{args.name}.json").write_text(json.dumps(summary, indent=1))
    lines = report(summary, args, model)
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results, steering, args.out / f"{args.name}.png")


def steer(
    model, args, hook, sae, clip_means, is_speech, speech, rows, ns_train, ns_test, english, english_rows
) -> dict:
    """Choose the non-speech latents and the scale on training clips; measure on held-out ones."""
    auc = auroc(clip_means[~is_speech], clip_means[is_speech])
    gap = clip_means[~is_speech].mean(0) - clip_means[is_speech].mean(0)
    chosen = sorted(range(sae.d_sae), key=lambda i: (-float(auc[i]), -float(gap[i])))[: args.steer_latents]
    weight_of = clip_means[~is_speech].mean(0)
    weights = {i: float(weight_of[i]) for i in chosen}
    with torch.no_grad():
        vector = sum(w * sae.W_dec[i].float() for i, w in weights.items())
    gen = torch.Generator().manual_seed(args.seed + 1)
    live = [i for i in range(sae.d_sae) if float(clip_means[:, i].max()) > 0 and i not in chosen]
    random_latents = [live[i] for i in torch.randperm(len(live), generator=gen)[: len(chosen)].tolist()]
    random_direction = torch.randn(vector.shape[0], generator=gen)
    random_direction = random_direction * vector.norm() / random_direction.norm()

    def conditions(scale: float) -> dict[str, list]:
        return {
            "none": [],
            "sae latents": steering_hooks(model, hook, sae=sae, latents=weights, scale=scale),
            "random latents": steering_hooks(
                model, hook, sae=sae, latents=dict(zip(random_latents, weights.values())), scale=scale
            ),
            "random direction": steering_hooks(model, hook, direction=random_direction, scale=scale),
        }

    # The scale: on training clips (English speech and non-speech sources never held out), the one
    # that leaves the fewest non-empty transcripts of non-speech among those costing at most
    # --max-wer on the speech.
    train_english = [a for a, r in zip(speech, rows) if r["language"] == "en"]
    clean_train = transcripts(model, train_english, [], "clean training speech")
    tuning = []
    for scale in args.scales:
        hooks = conditions(scale)["sae latents"]
        texts = transcripts(model, train_english, hooks, f"scale {scale:g} speech")
        wer = mean(word_error_rate(c, t) for c, t in zip(clean_train, texts))
        rate = mean(
            bool(t) for t in transcripts(model, [c["audio"] for c in ns_train], hooks, f"scale {scale:g} non-speech")
        )
        tuning.append({"scale": scale, "train_wer_vs_clean": wer, "train_hallucination": rate})
        print(tuning[-1], flush=True)
    allowed = [t for t in tuning if t["train_wer_vs_clean"] <= args.max_wer] or tuning[:1]
    scale = min(allowed, key=lambda t: (t["train_hallucination"], t["scale"]))["scale"]
    # Held out: non-speech sources and English clips never trained on.
    ns_groups = [c["source"] for c in ns_test]
    sp_groups = [r["video"] for r in english_rows]
    clean = transcripts(model, english, [], "clean held-out speech")
    outcome, wer, texts_of = {}, {}, {}
    for name, hooks in conditions(scale).items():
        texts = transcripts(model, [c["audio"] for c in ns_test], hooks, f"{name}: non-speech")
        outcome[name] = [float(bool(t)) for t in texts]
        wer[name] = [
            word_error_rate(c, t) for c, t in zip(clean, transcripts(model, english, hooks, f"{name}: speech"))
        ]
        texts_of[name] = texts
    base = outcome["none"]

    def cut(values, idx):
        b = mean(base[i] for i in idx)
        return 1 - mean(values) / b if b > 0 else float("nan")

    table = {}
    for name in outcome:
        table[name] = {
            "hallucination": mean(outcome[name]),
            "hallucination_ci": group_interval(outcome[name], ns_groups, lambda v, idx: mean(v), seed=args.seed),
            "relative_cut": 1 - mean(outcome[name]) / mean(base) if mean(base) > 0 else float("nan"),
            "relative_cut_ci": group_interval(outcome[name], ns_groups, cut, seed=args.seed),
            "wer_vs_clean": mean(wer[name]),
            "wer_ci": group_interval(wer[name], sp_groups, lambda v, idx: mean(v), seed=args.seed),
        }
    tests = [("sae latents", "none"), ("sae latents", "random latents"), ("sae latents", "random direction")]
    raw = [
        cluster_permutation_p(outcome[a], outcome[b], ns_groups, repeats=args.permutations, seed=args.seed)
        for a, b in tests
    ]
    wer_raw = [
        cluster_permutation_p(wer[a], wer[b], sp_groups, repeats=args.permutations, seed=args.seed) for a, b in tests
    ]
    adjusted = adjust_p_values(raw + wer_raw, "holm")
    return {
        "hook": hook,
        "latents": chosen,
        "weights": weights,
        "latent_auroc": [float(auc[i]) for i in chosen],
        "random_latents": random_latents,
        "vector_norm": float(vector.norm()),
        "scale": scale,
        "tuning": tuning,
        "held_out_non_speech": len(ns_test),
        "held_out_sources": len(set(ns_groups)),
        "held_out_speech": len(english),
        "held_out_videos": len(set(sp_groups)),
        "conditions": table,
        "tests": [
            {"outcome": outcome_name, "a": a, "b": b, "p": p, "p_holm": q}
            for (outcome_name, (a, b)), p, q in zip(
                [("hallucination", t) for t in tests] + [("wer", t) for t in tests], raw + wer_raw, adjusted
            )
        ],
        "texts": texts_of,
        "kinds": [c["kind"] for c in ns_test],
        "sources": ns_groups,
    }


def report(summary: dict, args, model) -> list[str]:
    d, results, s = summary["data"], summary["results"], summary["steering"]
    lines = [
        f"Sparse autoencoders on {args.model}'s encoder residual stream (hook_resid_post of encoder layers "
        f"{', '.join(str(r['layer']) for r in results)}), seed {args.seed}.",
        f"Training clips: {d['speech_clips']} VoxLingua107 dev clips ({args.clips_per_language} per language) and "
        f"{d['non_speech_train']} non-speech clips (music pieces and sound-effect sequences from six Debian packages; "
        f"{d['non_speech_sources']} sources, half of them held out for steering); every {args.held_out_every}th clip "
        f"held out for FVU/L0/dead. Extraction {d['extraction_seconds']:.0f} s. TopK (sparsify SparseCoder + AuxK), "
        f"{args.expansion_factor}x latents, k={args.k}, {args.epochs} epochs, batch 1024 frames, "
        f"Adam at lr {args.lr:g}; a latent silent for 50k frames counts as dead in training; "
        f"CPU: {d['cpu']}, {d['threads']} thread(s).",
        "Splice cost: next-token loss (nats/token) of the clean greedy transcripts of "
        f"{args.splice_clips} English clips never trained on (at most {args.max_new_tokens} new tokens) "
        "with the reconstruction in place of the "
        "activation, and the WER of the transcripts generated that way against the clean ones.",
        f"Stability: the share of seed-{args.seed} latents that a run from seed "
        f"{' / '.join(str(x) for x in args.stability_seeds) or '(none run)'} finds again (decoder cosine > 0.7), "
        "over the live latents (firing on held-out frames) and over all.",
        "",
        "| layer | FVU | L0 | dead (held out) | dead (training) | frames/s | loss clean | loss spliced | WER vs clean "
        "| matched, live (other seeds) | matched, all | best non-speech latent AUROC | latents AUROC > 0.95 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        live = " / ".join(f"{x['matched_alive']:.1%}" for x in r["stability"])
        every = " / ".join(f"{x['matched']:.1%}" for x in r["stability"])
        lines.append(
            f"| {r['layer']} | {r['fvu']:.3f} | {r['l0']:.1f} | {r['dead_fraction']:.3f} | "
            f"{r['dead_in_training']:.3f} | {r['frames_per_second']:.0f} | {r['loss_clean']:.3f} | "
            f"{r['loss_spliced']:.3f} | {r['wer_vs_clean']:.3f} | {live} | {every} | "
            f"{r['best_non_speech_auroc']:.3f} | {r['latents_auroc_above_0.95']} |"
        )
    c = s["conditions"]
    lines += [
        "",
        f"Steering at {s['hook']}: the {len(s['latents'])} latents with the highest non-speech AUROC on training clips "
        f"(latents {s['latents']}, AUROC {min(s['latent_auroc']):.3f}-{max(s['latent_auroc']):.3f}), their decoder "
        f"rows weighted by their mean activation on training non-speech (norm {s['vector_norm']:.2f}), times "
        f"{s['scale']:g} (picked on training clips, "
        + ", ".join(
            f"x{t['scale']:g}: {t['train_hallucination']:.0%} non-empty, WER {t['train_wer_vs_clean']:.3f}"
            for t in s["tuning"]
        )
        + f"), added at every frame. Held out: {s['held_out_non_speech']} non-speech clips from "
        f"{s['held_out_sources']} sources, {s['held_out_speech']} English clips from {s['held_out_videos']} videos. "
        "Hallucination: a non-empty "
        "transcript (`transcribe`, default thresholds). 95% intervals: bootstrap over sources (videos for WER).",
        "",
        "| condition | hallucination | cut (relative to none) | WER vs clean on speech |",
        "|---|---|---|---|",
    ]
    for name, row in c.items():
        lo, hi = row["hallucination_ci"]
        clo, chi = row["relative_cut_ci"]
        wlo, whi = row["wer_ci"]
        lines.append(
            f"| {name} | {row['hallucination']:.1%} [{lo:.1%}, {hi:.1%}] | "
            f"{row['relative_cut']:.1%} [{clo:.1%}, {chi:.1%}] | {row['wer_vs_clean']:.3f} [{wlo:.3f}, {whi:.3f}] |"
        )
    lines += ["", "Paired cluster permutation tests (by source / video), Holm over all six:", ""]
    lines += [f"- {t['outcome']}: {t['a']} vs {t['b']}: p = {t['p']:.4f}, Holm {t['p_holm']:.4f}" for t in s["tests"]]
    return lines


def plot(results: list[dict], steering: dict, path: Path) -> None:
    """FVU, dead latents, splice cost and stability per layer, and the steering result (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    layers = [r["layer"] for r in results]
    fig, axes = plt.subplots(1, 5, figsize=(19, 3.4))
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
    axes[3].plot(
        layers, [mean(x["matched_alive"] for x in r["stability"]) for r in results], "o-", label="live latents"
    )
    axes[3].plot(layers, [mean(x["matched"] for x in r["stability"]) for r in results], "s--", label="all latents")
    axes[3].axhline(0.5, color="gray", lw=0.8, ls=":", label="AudioSAE: > 50%")
    axes[3].set(title="matched across seeds (cos > 0.7)", xlabel="encoder layer", ylim=(0, 1))
    axes[3].legend()
    for ax in axes[:4]:
        ax.set_xticks(layers)
    names = list(steering["conditions"])
    rows = [steering["conditions"][n] for n in names]
    x = range(len(names))
    h = [r["hallucination"] for r in rows]
    err = [
        [v - r["hallucination_ci"][0] for v, r in zip(h, rows)],
        [r["hallucination_ci"][1] - v for v, r in zip(h, rows)],
    ]
    axes[4].bar(x, h, yerr=err, capsize=3, color=["gray", "C0", "C1", "C2"][: len(names)])
    for i, r in enumerate(rows):
        axes[4].text(i, 0.02, f"WER {r['wer_vs_clean']:.2f}", ha="center", fontsize=8)
    axes[4].set_xticks(list(x), names, rotation=15, fontsize=8)
    axes[4].set(title="held-out non-speech with words", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
