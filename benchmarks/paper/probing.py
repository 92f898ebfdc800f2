"""The seed paper's probing studies on real speech, with held-out groups, nuisance baselines and
comparisons that can fail:

    .venv/bin/python benchmarks/paper/probing.py --data ../shared/data/voxlingua107-dev-subset

The data folder holds ``clips.tsv`` (``path``, ``language``, ``video``) and the clips
(VoxLingua107's development set in the repository's copy: 10 languages x 40 clips, one video
each; real users download the full set from its site). Disjoint clips of it feed each study:

1. Language (the paper's accent probe in its multilingual form): ``--per-language`` clips of each
   of the 10 languages, 10 classes, groups = video (one clip each), 5 folds. Nuisance baseline:
   duration and loudness (a video is one clip, so its identity cannot carry over to a test fold).
2. Pitch class, the stand-in for the paper's gender probe, on the same clips: each clip's median
   F0 over the frames Praat's autocorrelation tracker calls voiced (``praat-parselmouth``; white
   noise has no voiced frame), low below 150 Hz, high above 185 Hz, the clips in between dropped.
   The classes are unequal, so the statistic is balanced accuracy. Nuisance baseline: duration,
   loudness and language. It is called pitch class everywhere: the data has no gender labels.
3. Noise level: ``--noise-clips`` clips per noise source, each mixed with a piece of that source
   at every SNR of 0, 5, 10 and 20 dB (a full crossing: every source at every SNR, the same
   piece at each level). Sources: five music tracks and the sound-icons set (Debian), and white,
   pink and babble noise (``hooked_whisper.patching.noise.Noise``; babble from clips used nowhere
   else). Label: the SNR (4 classes); groups = source, one source held out per fold (9 folds).
   Nuisance baseline: source identity, the mix's loudness and duration.
4. Speech vs non-speech: ``--speech-per-language`` speech clips of each language against as many
   pieces of the six Debian sources of the same durations and loudness (RMS); groups = track (or
   the sound set) and video, one non-speech source held out per fold (6 folds). Nuisance
   baseline: duration and loudness (matched by construction, so it should sit at chance).

Non-speech sound comes from two Debian packages, fetched with ``apt-get download`` into the
cache folder: ``asterisk-moh-opsound-wav`` (five music-on-hold tracks, CC BY-SA 3.0, by
Macroform, Manolo Camp and Reno Project) and ``sound-icons`` (instrument and effect sounds,
GPL-2+).

Every study is probed (ridge, strength chosen inside each training split) at every encoder
layer (mean over the audio frames), the conv stem, and every decoder layer at the end of the
transcription prompt, on the real model and on ``--seeds`` randomly initialised models of the
same shape; the log-mel input is the input baseline. Headline per study: the layer chosen inside
the training folds (``report.selected``) and its held-out balanced accuracy with a 95% bootstrap
interval over groups; its paired difference against the log-mel input, against the random-init
models (each seed's own layer chosen the same way, averaged over seeds) and against the nuisance
baseline, each with an interval and a p-value (groups' predictions swapped), Holm-adjusted over
the study's comparisons. Per layer: permutation tests that refit the whole nested procedure
(``--permutations``, for the real model and the first random seed), Holm-adjusted over the
layers x conditions of the study. Activations go through the sharded store (a rerun reuses
them). Deterministic for ``--seed``.

Writes ``results/probing.{md,json,png}`` beside this file.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent.parent))
from benchmarks.common import debian_files  # noqa: E402
from hooked_whisper import HookedWhisper, load_audio  # noqa: E402
from hooked_whisper.extraction import Manifest  # noqa: E402
from hooked_whisper.metrics import adjust_p_values  # noqa: E402
from hooked_whisper.patching.noise import Noise  # noqa: E402
from hooked_whisper.probe_fitting import paired_difference  # noqa: E402
from hooked_whisper.probing import extract_activations, train_probes  # noqa: E402

HERE = Path(__file__).parent
LOW_HZ, HIGH_HZ = 150.0, 185.0
SNRS = (0.0, 5.0, 10.0, 20.0)
SYNTHETIC = ("white", "pink", "babble")
STUDIES = ("language", "pitch class", "noise level", "speech vs non-speech")
PAPER = {  # Whisper large-v3 (32 layers), as secondary sources report the paper
    "language": "accent 97.0% (encoder layer 22)",
    "pitch class": "gender 94.6% (encoder layer 25)",
    "noise level": "noisy vs clean 90.0% (encoder layer 27)",
    "speech vs non-speech": "100% (decoder layers 10-28)",
}


def read_clips(data: Path) -> list[dict]:
    with open(data / "clips.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or not {"path", "language", "video"} <= set(rows[0]):
        raise ValueError(f"{data / 'clips.tsv'} needs path, language and video columns")
    for row in rows:
        row["path"] = str((data / row["path"]).resolve())
    return rows


def median_f0(wave: torch.Tensor) -> tuple[float, float]:
    """(median F0 in Hz over the frames Praat's tracker calls voiced, share of voiced frames)."""
    try:
        import parselmouth
    except ImportError as err:
        raise SystemExit('the pitch study needs praat-parselmouth: pip install "hooked-whisper[paper]"') from err
    pitch = parselmouth.Sound(wave.double().numpy(), 16000).to_pitch_ac(pitch_floor=60.0, pitch_ceiling=400.0)
    f0 = torch.from_numpy(pitch.selected_array["frequency"])
    voiced = f0[f0 > 0]
    return (float(voiced.median()) if len(voiced) else float("nan")), float((f0 > 0).float().mean())


def loudness_db(wave: torch.Tensor) -> float:
    return float(20 * wave.pow(2).mean().sqrt().clamp(min=1e-8).log10())


def debian_sounds(cache: Path) -> dict[str, list[torch.Tensor]]:
    """The non-speech sources, 16 kHz mono: each music track whole, and the sound-icons set."""
    unpacked = debian_files(cache / "debian", ["asterisk-moh-opsound-wav", "sound-icons"])
    sources = {p.stem: [load_audio(p)] for p in sorted(unpacked.rglob("moh/*.wav"))}
    sources["sound-icons"] = [load_audio(p) for p in sorted(unpacked.rglob("sound-icons/*.wav"))]
    return sources


def non_speech_like(clip: torch.Tensor, source: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    """A piece of ``source`` as long and as loud (RMS) as ``clip``: a random stretch of a track,
    or short sounds one after another with short gaps."""
    n = clip.shape[0]
    if len(source) == 1:
        track = source[0]
        start = int(torch.randint(0, max(1, track.shape[0] - n), (1,), generator=gen))
        piece = torch.nn.functional.pad(track[start : start + n], (0, max(0, n - (track.shape[0] - start))))
    else:
        parts, length = [], 0
        while length < n:
            sound = source[int(torch.randint(len(source), (1,), generator=gen))]
            gap = torch.zeros(int(torch.randint(800, 4800, (1,), generator=gen)))
            parts += [sound, gap]
            length += sound.shape[0] + gap.shape[0]
        piece = torch.cat(parts)[:n]
    return piece * clip.pow(2).mean().sqrt() / piece.pow(2).mean().sqrt().clamp(min=1e-8)


def mix(clip: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``clip`` plus ``noise`` scaled to the given signal-to-noise ratio, the sum brought back to
    the clip's loudness (RMS), so that the level alone does not give the SNR away."""
    rms = clip.pow(2).mean().sqrt()
    mixed = clip + rms / noise.pow(2).mean().sqrt().clamp(min=1e-8) / 10 ** (snr_db / 20) * noise
    return mixed * rms / mixed.pow(2).mean().sqrt().clamp(min=1e-8)


def in_range(wave: torch.Tensor) -> torch.Tensor:
    """``wave`` scaled down, if needed, to peak at 0.99 (float audio lies in [-1, 1]): a loud mix
    or a sound scaled to a clip's loudness can exceed it. The loudness columns see the result."""
    return wave / (wave.abs().max() / 0.99).clamp(min=1.0)


def one_hot(values: list) -> torch.Tensor:
    names = sorted(set(values))
    return torch.nn.functional.one_hot(torch.tensor([names.index(v) for v in values]), len(names)).float()


def build_sets(clips: list[dict], sounds: dict[str, list[torch.Tensor]], args) -> dict[str, dict]:
    """Each study's examples: a manifest (waveforms or paths, labels, groups) and per-example facts
    for the nuisance baselines. Studies use disjoint clips of each language."""
    gen = torch.Generator().manual_seed(args.seed)
    by_language: dict[str, list[dict]] = {}
    for c in clips:
        by_language.setdefault(c["language"], []).append(c)
    languages = sorted(by_language)
    k_lang, k_noise, k_speech = (
        args.per_language,
        math.ceil(9 * args.noise_clips / len(languages)),
        args.speech_per_language,
    )
    needed = k_lang + k_noise + k_speech + 2
    if any(len(by_language[lang]) < needed for lang in languages):
        raise SystemExit(f"each language needs {needed} clips for these counts; use smaller --per-language etc.")
    sets: dict[str, dict] = {}

    chosen = [c for lang in languages for c in by_language[lang][:k_lang]]
    waves = [load_audio(c["path"]) for c in chosen]
    pitch = [median_f0(w) for w in waves]
    sets["voxlingua"] = {
        "manifest": Manifest(
            [c["path"] for c in chosen], [c["language"] for c in chosen], [c["video"] for c in chosen]
        ),
        "language": [c["language"] for c in chosen],
        "f0": [p[0] for p in pitch],
        "voiced": [p[1] for p in pitch],
        "duration": [w.shape[0] / 16000 for w in waves],
        "loudness": [loudness_db(w) for w in waves],
    }

    babble_voices = tuple(c["path"] for lang in languages for c in by_language[lang][-2:])  # used nowhere else
    pool = [by_language[lang][k_lang + k] for k in range(k_noise) for lang in languages]
    sources = [*sorted(sounds), *SYNTHETIC]
    waves, labels, groups, meta = [], [], [], {"source": [], "loudness": [], "duration": [], "snr": [], "clip": []}
    for s, source in enumerate(sources):
        for j, c in enumerate(pool[s * args.noise_clips : (s + 1) * args.noise_clips]):
            clean = load_audio(c["path"])
            if source in SYNTHETIC:
                noise = Noise(source, seed=args.seed * 1000 + s * 100 + j, speech=babble_voices).like(clean, 16000)
            else:
                noise = non_speech_like(clean, sounds[source], gen)
            for snr in SNRS:
                noisy = in_range(mix(clean, noise, snr))
                waves.append(noisy)
                labels.append(f"{snr:g} dB")
                groups.append(source)
                meta["source"].append(source)
                meta["loudness"].append(loudness_db(noisy))
                meta["duration"].append(clean.shape[0] / 16000)
                meta["snr"].append(snr)
                meta["clip"].append(c["video"])
    sets["noise"] = {"manifest": Manifest(waves, labels, groups), **meta}

    speech = [c for lang in languages for c in by_language[lang][k_lang + k_noise : k_lang + k_noise + k_speech]]
    names = sorted(sounds)
    waves, labels, groups, meta = [], [], [], {"source": [], "loudness": [], "duration": []}
    for k, c in enumerate(speech):
        clip = load_audio(c["path"])
        name = names[k % len(names)]
        piece = in_range(non_speech_like(clip, sounds[name], gen))
        for wave, label, group in ((clip, "speech", c["video"]), (piece, "non-speech", name)):
            waves.append(wave)
            labels.append(label)
            groups.append(group)
            meta["source"].append(group)
            meta["loudness"].append(loudness_db(wave))
            meta["duration"].append(wave.shape[0] / 16000)
    sets["speech"] = {"manifest": Manifest(waves, labels, groups), **meta}
    return sets


def studies(sets: dict[str, dict]) -> dict[str, dict]:
    """Each study: its set, the rows it uses, labels, groups, folds and nuisance columns."""
    vox, noise, speech = sets["voxlingua"], sets["noise"], sets["speech"]
    n_vox = len(vox["language"])
    pitch_class = ["low" if f < LOW_HZ else "high" if f > HIGH_HZ else None for f in vox["f0"]]
    pitched = [i for i in range(n_vox) if pitch_class[i] is not None]
    vox_groups = vox["manifest"].groups

    def columns(meta: dict, keys: list[str], rows: list[int]) -> dict[str, torch.Tensor]:
        out = {}
        for key in keys:
            values = [meta[key][i] for i in rows]
            out[key] = one_hot(values) if isinstance(values[0], str) else torch.tensor(values, dtype=torch.float32)
        return out

    everything = list(range(n_vox))
    n_noise, n_speech = len(noise["snr"]), len(speech["source"])
    return {
        "language": {
            "set": "voxlingua", "rows": everything, "labels": vox["language"], "groups": vox_groups, "folds": 5,
            "nuisance": columns(vox, ["duration", "loudness"], everything), "grouping": "video (one clip each)",
        },
        "pitch class": {
            "set": "voxlingua", "rows": pitched, "labels": [pitch_class[i] for i in pitched],
            "groups": [vox_groups[i] for i in pitched], "folds": 5,
            "nuisance": columns(vox, ["duration", "loudness", "language"], pitched),
            "grouping": "video (one clip each)",
        },
        "noise level": {
            "set": "noise", "rows": list(range(n_noise)), "labels": noise["manifest"].labels,
            "groups": noise["manifest"].groups, "folds": len(set(noise["source"])),
            "nuisance": columns(noise, ["source", "loudness", "duration"], list(range(n_noise))),
            "grouping": "noise source, one held out per fold",
        },
        "speech vs non-speech": {
            "set": "speech", "rows": list(range(n_speech)), "labels": speech["manifest"].labels,
            "groups": speech["manifest"].groups, "folds": len({s for s, lab in zip(speech["source"],
                                                                 speech["manifest"].labels) if lab == "non-speech"}),
            "nuisance": columns(speech, ["duration", "loudness"], list(range(n_speech))),
            "grouping": "non-speech source (one held out per fold) and video",
        },
    }  # fmt: skip


def probe_hooks(model: HookedWhisper) -> tuple[list[str], list[str]]:
    """(layers the best one is chosen among: conv stem, encoder blocks, decoder blocks at the
    prompt's end; the input baseline)."""
    enc = [model.hook_name("encoder", layer, "hook_resid_post") for layer in range(model.cfg.n_encoder_layers)]
    dec = [model.hook_name("decoder", layer, "hook_resid_post") for layer in range(model.cfg.n_decoder_layers)]
    return ["encoder_embed.hook_conv2", *enc, *dec], ["hook_mel"]


def random_init(model: HookedWhisper, seed: int) -> HookedWhisper:
    """The same architecture, tokenizer and decoding settings with freshly initialised weights
    (``seed`` sets them): the baseline that says what the architecture alone makes readable."""
    torch.manual_seed(seed)
    return HookedWhisper(model.cfg, model.tokenizer, model.generation_config).eval()


def extract(model: HookedWhisper, folder: str, sets: dict[str, dict], hooks: list[str], cache: Path) -> dict:
    stores = {}
    for set_name, spec in sets.items():
        stores[set_name] = extract_activations(
            model, spec["manifest"], hooks, decoder_pooling="prompt_end", out_dir=cache / f"{folder}-{set_name}",
            batch_size=8, shard_size=64, sample_rate=16000,
        )  # fmt: skip
        if stores[set_name].failed:
            raise SystemExit(f"{folder} {set_name}: clips failed to load: {stores[set_name].failed}")
    return stores


def result_row(r) -> dict:
    return {
        "hook": r.hook, "balanced_accuracy": r.balanced_accuracy, "ci": [r.ci_low, r.ci_high], "accuracy": r.accuracy,
        "p": r.p_value, "p_holm_in_call": r.p_adjusted, "permuted_mean": r.shuffled, "l2": r.l2,
        "gain_over_nuisance": vars(r.gain) if r.gain is not None else None,
    }  # fmt: skip


def analyse(stores: dict[str, dict], specs: dict[str, dict], layers: list[str], inputs: list[str], args) -> dict:
    """Every study on one model's stores (``trained`` and ``random {seed}``)."""
    out = {}
    comparison_p = []  # (study, name) of every headline comparison, for Holm over the whole model
    for study, spec in specs.items():
        rows, labels, groups = spec["rows"], spec["labels"], spec["groups"]
        common = {"groups": groups, "folds": spec["folds"], "seed": args.seed, "progress": False}

        def features(condition: str, hooks: list[str], set_name=spec["set"], rows=rows) -> dict[str, torch.Tensor]:
            store = stores[condition][set_name]
            return {h: store[h][rows] for h in hooks}

        print(f"{study}: n = {len(labels)}, probing", flush=True)
        trained = train_probes(
            features("trained", layers), labels, permutations=args.permutations, nuisance=spec["nuisance"], **common
        )
        mel = train_probes(features("trained", inputs), labels, permutations=args.permutations, **common)
        randoms = [
            train_probes(
                features(f"random {s}", layers), labels, permutations=args.permutations if s == 0 else 0, **common
            )
            for s in range(args.seeds)
        ]
        # Holm over the layers x conditions of the study: the real model's layers, the input, the
        # first random-init model's layers (the others are not permutation-tested).
        family = [("trained", r) for r in trained.results] + [("input", r) for r in mel.results]
        family += [("random 0", r) for r in randoms[0].results]
        adjusted = adjust_p_values([r.p_value for _, r in family], "holm")
        holm = {(c, r.hook): a for (c, r), a in zip(family, adjusted)}
        selected = trained.selected
        chosen = trained.result(selected.hook)
        y, n_classes = trained.labels, len(trained.classes)
        comparisons = {
            "input": trained.compare(selected, mel.results[0], seed=args.seed),
            "random init": trained.compare(selected, [r.selected for r in randoms], seed=args.seed),
            "nuisance": paired_difference(
                selected.predictions, trained.nuisance_predictions, y, groups, n_classes, seed=args.seed
            ),
        }
        comparison_p += [(study, name) for name in comparisons]
        counts = {str(c): int((y == i).sum()) for i, c in enumerate(trained.classes)}
        per_layer = []
        for k, hook in enumerate(layers):
            seeds = [r.results[k] for r in randoms]
            per_layer.append(
                {
                    "trained": result_row(trained.results[k]) | {"p_holm": holm[("trained", hook)]},
                    "random_init_mean": sum(r.balanced_accuracy for r in seeds) / len(seeds),
                    "random_init_range": [min(r.balanced_accuracy for r in seeds),
                                          max(r.balanced_accuracy for r in seeds)],
                    "random_init_seed0": result_row(seeds[0]) | {"p_holm": holm[("random 0", hook)]},
                }
            )  # fmt: skip
        out[study] = {
            "n": len(labels), "classes": counts, "groups": len(set(groups)), "folds": spec["folds"],
            "grouping": spec["grouping"], "nuisance_columns": list(spec["nuisance"]),
            "selected": {
                "hook": selected.hook, "per_fold": selected.hooks, "balanced_accuracy": selected.balanced_accuracy,
                "ci": [selected.ci_low, selected.ci_high], "p": chosen.p_value,
                "p_holm": holm[("trained", chosen.hook)],
            },
            "input": result_row(mel.results[0]) | {"p_holm": holm[("input", "hook_mel")]},
            "random_init_selected": [
                {"hook": r.selected.hook, "balanced_accuracy": r.selected.balanced_accuracy} for r in randoms
            ],
            "nuisance": {"balanced_accuracy": trained.nuisance[0], "ci": list(trained.nuisance[1:])},
            "comparisons": {name: vars(d) for name, d in comparisons.items()},
            "layers": per_layer,
            "permutations": args.permutations, "random_seeds": args.seeds,
        }  # fmt: skip
    raw = [out[s]["comparisons"][name]["p_value"] for s, name in comparison_p]
    for (s, name), a in zip(comparison_p, adjust_p_values(raw, "holm")):
        out[s]["comparisons"][name]["p_holm"] = a
    return out


def fmt_diff(d: dict) -> str:
    interval = f"{d['ci_low']:+.2f} to {d['ci_high']:+.2f}"
    return f"{d['difference']:+.3f} ({interval}; p {d['p_value']:.4f}, Holm {d['p_holm']:.4f})"


def short(hook: str) -> str:
    if hook == "hook_mel":
        return "log-mel"
    if hook == "encoder_embed.hook_conv2":
        return "conv stem"
    stack, layer = hook.split("_blocks.")[0], hook.split(".")[1]
    return f"{'E' if stack == 'encoder' else 'D'}{layer}"


def markdown(results: dict) -> str:
    lines = [
        "# Probing studies: layer chosen in training folds, against the input, random-init models and nuisance",
        "",
        "Balanced accuracy on held-out groups, 95% bootstrap intervals over groups (2000 resamples). "
        "Differences are paired (both probes on the same examples, groups resampled together; p from "
        "swapping the two probes' predictions group by group), Holm-adjusted over the 12 comparisons of a "
        "model. Random init: each of the seeds' own layer chosen in its training folds, averaged.",
        "",
    ]
    for model, studies_out in results["models"].items():
        lines += [f"## {model}", ""]
        lines += [
            "| study | n (classes) | groups, folds | chosen layer (per fold) | held-out balanced acc. | vs log-mel "
            "| vs random init | vs nuisance | p (Holm, layer) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for study, s in studies_out.items():
            sel, c = s["selected"], s["comparisons"]
            classes = ", ".join(f"{k} {v}" for k, v in s["classes"].items())
            lines.append(
                f"| {study} | {s['n']} ({classes}) | {s['groups']} ({s['grouping']}), {s['folds']} | "
                f"{short(sel['hook'])} ({', '.join(short(h) for h in sel['per_fold'])}) | "
                f"{sel['balanced_accuracy']:.3f} ({sel['ci'][0]:.2f}-{sel['ci'][1]:.2f}) | {fmt_diff(c['input'])} | "
                f"{fmt_diff(c['random init'])} | {fmt_diff(c['nuisance'])} | {sel['p']:.4f} ({sel['p_holm']:.4f}) |"
            )
        lines.append("")
        for study, s in studies_out.items():
            inp, nu = s["input"], s["nuisance"]
            rnd = ", ".join(f"{short(r['hook'])} {r['balanced_accuracy']:.3f}" for r in s["random_init_selected"])
            lines += [
                f"### {study}, {model}",
                "",
                f"log-mel input {inp['balanced_accuracy']:.3f} ({inp['ci'][0]:.2f}-{inp['ci'][1]:.2f}), p "
                f"{inp['p']:.4f} (Holm {inp['p_holm']:.4f}); nuisance-only ({', '.join(s['nuisance_columns'])}) "
                f"{nu['balanced_accuracy']:.3f} ({nu['ci'][0]:.2f}-{nu['ci'][1]:.2f}); random init, layer chosen per "
                f"seed: {rnd}. {s['permutations']} refitting permutations; Holm over the study's layers x conditions.",
                "",
                "| layer | balanced acc. (95% CI) | p | p Holm | gain over nuisance (95% CI) | random init, mean of "
                f"{s['random_seeds']} (range) | random init seed 0: p Holm |",
                "|---|---|---|---|---|---|---|",
            ]
            for row in s["layers"]:
                t, r0, g = row["trained"], row["random_init_seed0"], row["trained"]["gain_over_nuisance"]
                lines.append(
                    f"| {short(t['hook'])} | {t['balanced_accuracy']:.3f} ({t['ci'][0]:.2f}-{t['ci'][1]:.2f}) | "
                    f"{t['p']:.4f} | {t['p_holm']:.4f} | {g['difference']:+.3f} ({g['ci_low']:+.2f} to "
                    f"{g['ci_high']:+.2f}) | {row['random_init_mean']:.3f} ({row['random_init_range'][0]:.2f}-"
                    f"{row['random_init_range'][1]:.2f}) | {r0['p_holm']:.4f} |"
                )
            lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(len(models), len(STUDIES), figsize=(4.2 * len(STUDIES), 3.4 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        for j, study in enumerate(STUDIES):
            ax, s = axes[i, j], results["models"][model][study]
            names = [short(row["trained"]["hook"]) for row in s["layers"]]
            x = list(range(len(names)))
            acc = [row["trained"]["balanced_accuracy"] for row in s["layers"]]
            low = [row["trained"]["ci"][0] for row in s["layers"]]
            high = [row["trained"]["ci"][1] for row in s["layers"]]
            ax.fill_between(x, low, high, color="C0", alpha=0.2)
            ax.plot(x, acc, "o-", color="C0", label="trained")
            rmean = [row["random_init_mean"] for row in s["layers"]]
            rlow = [row["random_init_range"][0] for row in s["layers"]]
            rhigh = [row["random_init_range"][1] for row in s["layers"]]
            ax.fill_between(x, rlow, rhigh, color="C1", alpha=0.2)
            ax.plot(x, rmean, "s-", color="C1", label=f"random init ({s['random_seeds']} seeds)")
            ax.axhline(s["input"]["balanced_accuracy"], color="C2", ls="--", label="log-mel input")
            ax.axhline(s["nuisance"]["balanced_accuracy"], color="C3", ls=":", label="nuisance only")
            ax.axhline(1 / len(s["classes"]), color="grey", lw=0.8, label="chance")
            chosen = names.index(short(s["selected"]["hook"]))
            ax.plot([chosen], [acc[chosen]], "*", color="k", ms=13, label="chosen in training folds")
            ax.set_xticks(x, names, fontsize=8)
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{model}: {study}", fontsize=10)
            if j == 0:
                ax.set_ylabel("held-out balanced accuracy")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with clips.tsv (path, language, video)")
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--per-language", type=int, default=20, help="clips per language for language and pitch")
    parser.add_argument("--noise-clips", type=int, default=3, help="speech clips per noise source (each at 4 SNRs)")
    parser.add_argument("--speech-per-language", type=int, default=6, help="speech clips per language vs non-speech")
    parser.add_argument("--permutations", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=5, help="random-init models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=HERE / "activations", help="activation shards and sounds")
    args = parser.parse_args()
    sets = build_sets(read_clips(args.data), debian_sounds(args.cache), args)
    specs = studies(sets)
    results: dict = {"data": str(args.data), "paper": PAPER, "settings": {k: str(v) for k, v in vars(args).items()}}
    vox = sets["voxlingua"]
    results["pitch"] = {
        "tracker": "Praat autocorrelation (praat-parselmouth), 60-400 Hz, median over voiced frames",
        "low_below_hz": LOW_HZ, "high_above_hz": HIGH_HZ,
        "low": sum(f < LOW_HZ for f in vox["f0"]), "high": sum(f > HIGH_HZ for f in vox["f0"]),
        "between_dropped": sum(LOW_HZ <= f <= HIGH_HZ for f in vox["f0"]),
        "median_voiced_share": float(torch.tensor(vox["voiced"]).median()),
    }  # fmt: skip
    # Results merge into what an earlier run with the same settings wrote, so one model can be
    # rerun alone; a run with other settings starts afresh.
    out = HERE / "results"
    earlier = json.loads((out / "probing.json").read_text()) if (out / "probing.json").exists() else {}
    same = {k: v for k, v in earlier.get("settings", {}).items() if k not in ("models", "cache")} == {
        k: v for k, v in results["settings"].items() if k not in ("models", "cache")
    }
    results["models"] = {k: v for k, v in earlier.get("models", {}).items() if same and k not in args.models}
    for name in args.models:
        model = HookedWhisper.from_pretrained(name)
        layers, inputs = probe_hooks(model)
        stores = {"trained": extract(model, name, sets, layers + inputs, args.cache)}
        for s in range(args.seeds):
            stores[f"random {s}"] = extract(random_init(model, s), f"{name}-random{s}", sets, layers, args.cache)
        results["models"][name] = analyse(stores, specs, layers, inputs, args)
        results["settings"]["models"] = str(list(results["models"]))
        out.mkdir(exist_ok=True)
        (out / "probing.json").write_text(json.dumps(results, indent=1))
        (out / "probing.md").write_text(markdown(results))
        plot(results, out / "probing.png")
    print(markdown(results))


if __name__ == "__main__":
    main()
