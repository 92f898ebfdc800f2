"""Semantic bias in the encoder: does patching encoder components toward a noise reference make
the model write the word that was said rather than the one the context predicts?

    .venv/bin/python benchmarks/paper/contextual_bias.py DATA_DIR [--models tiny.en,base] [--speech tests/data]

``DATA_DIR`` is the synthetic data set (built there by ``contextual_bias_data.py`` when it has
no ``index.tsv``): sentences whose audio says the acoustic word ("lice") where the context
predicts the contextual word ("rice"), each with a neutral twin that shares the word's samples.

1. **Behaviour.** Each clip is transcribed greedily and the transcript classed as writing the
   contextual word, the acoustic word, or neither, in context and in the neutral twin (the twin
   tells a context effect from a mishearing). Beside it, the teacher-forced contrast
   ``log p(acoustic) - log p(contextual)`` after the sentence's own text (``word_contrast``).
   When small models make few contextual errors on clean speech, the word alone can be masked
   by white noise at set SNRs (``--snr``); each level is reported.
2. **Intervention.** On the context clips whose contrast prefers the contextual word ("errors")
   and as many whose contrast prefers the acoustic word ("correct"), each encoder layer x
   {self-attention out, MLP out, residual stream} x alpha is moved toward a white-noise run
   (``Noise("white")``, matched to the clip's length and loudness) on the word's frames, the
   context's frames or all frames (``word_sites``). Controls beside each: pink noise, another
   speech clip, the mean activation over other clips, and a random direction with the norm of
   the white-noise displacement at each position.
3. **Outcomes.** Flip rate (errors whose contrast turns positive), break rate (correct items
   whose contrast turns negative), the mean change of the contrast, and the WER cost on real
   speech (``--speech``) of the best setting applied to all frames while transcribing.
4. **Statistics.** 95% intervals from a bootstrap over sentence templates (the minimal pair:
   its sentences share the two words), exact McNemar (a paired permutation test of yes/no
   outcomes) against each control on the same items, Holm over layer x component x alpha.

Writes ``results/contextual_bias.{json,md}`` and ``results/contextual_bias.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).parent.parent.parent))
from benchmarks.paper import contextual_bias_data  # noqa: E402
from hooked_whisper import HookedWhisper, load_audio  # noqa: E402
from hooked_whisper.audio import SAMPLE_RATE  # noqa: E402
from hooked_whisper.metrics import (  # noqa: E402
    adjust_p_values,
    group_bootstrap_interval,
    mcnemar_p,
    normalize_text,
    read_transcripts,
    word_error_rate,
)
from hooked_whisper.patching import (  # noqa: E402
    Noise,
    activation_patch,
    mean_activations,
    reference_hooks,
    word_contrast,
    word_sites,
)

RESULTS = Path(__file__).parent / "results"
COMPONENTS = {"attn": "hook_attn_out", "mlp": "hook_mlp_out", "resid": "hook_resid_post"}
PAPER = {"Qwen2-Audio": (251, 700), "Whisper large-v3": (153, 700)}


# ------------------------------------------------------------------------------------- statistics
def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error) of ``p_values``, in their order."""
    return adjust_p_values(p_values, "holm")


# ---------------------------------------------------------------------------------------- helpers
def prompt_of(model) -> list[int]:
    if not model.has_cross_attention:
        return model.prompt_tokens()  # the transcription chat prompt's ids
    return model.prompt_tokens("en") if model.cfg.is_multilingual else model.prompt_tokens()


def with_noisy_word(audio: torch.Tensor, row: dict, snr_db: float | None, seed: int) -> torch.Tensor:
    """The clip with white noise over the word alone at ``snr_db`` (None: clean), the same
    noise for a sentence and its twin (the seed is the item's)."""
    if snr_db is None:
        return audio
    start, end = (round(float(row[k]) * SAMPLE_RATE) for k in ("word_start", "word_end"))
    word = audio[start:end]
    noise = torch.randn(len(word), generator=torch.Generator().manual_seed(seed))
    noise = noise * word.pow(2).mean().sqrt() / 10 ** (snr_db / 20)
    out = audio.clone()
    out[start:end] = word + noise
    return out


def classify(text: str, acoustic: str, contextual: str) -> str:
    words = set(normalize_text(text))
    if contextual in words and acoustic not in words:
        return "contextual"
    return "acoustic" if acoustic in words else "neither"


def transcript_and_contrast(model, audio: torch.Tensor, contrast) -> tuple[str, float]:
    """The greedy transcript and the unpatched contrast, from one encoder pass."""
    mel = model.to_mel(audio, SAMPLE_RATE)
    rows = torch.cat([model.tokens_for(mel, row[None]) for row in contrast.tokens])
    with torch.no_grad():
        enc = model.encode(mel)
        value = float(contrast(model.decode(rows, enc)))
        if model.has_cross_attention:
            from hooked_whisper.decoding.search import DecodingOptions, decode_window

            language = "en" if model.cfg.is_multilingual else None
            return decode_window(model, enc, DecodingOptions(language=language, max_new_tokens=40))[0].text, value
    tokens = model.generate(audio, sample_rate=SAMPLE_RATE, max_new_tokens=40)
    return model.to_string(tokens[0, model.tokens_for(mel, None).shape[1] :]), value


def contrast_for(model, row: dict):
    before = row["before"]
    if model.has_cross_attention:
        before = " " + before  # Whisper writes a space before each word of a transcript
    return word_contrast(model, before, row["acoustic"], row["contextual"], prompt=prompt_of(model))


def contrast_value(model, audio: torch.Tensor, contrast) -> float:
    """The contrast on one clip, unpatched (every alpha-0 patch equals it)."""
    mel = model.to_mel(audio, SAMPLE_RATE)
    rows = torch.cat([model.tokens_for(mel, row[None]) for row in contrast.tokens])
    with torch.no_grad():
        return float(contrast(model.decode(rows, model.encode(mel))))


# ---------------------------------------------------------------------------------------- behaviour
def behaviour(model, rows: list[dict], data: Path, snrs: list[float | None]) -> list[dict]:
    out = []
    for row in tqdm(rows, desc="behaviour", unit="clip"):
        clean = load_audio(data / row["path"])
        for snr in snrs:
            audio = with_noisy_word(clean, row, snr, seed=int(row["id"][2:]))
            text, contrast = transcript_and_contrast(model, audio, contrast_for(model, row))
            out.append(
                dict(
                    id=row["id"], pair=row["pair"], voice=row["voice"], condition=row["condition"], snr=snr,
                    text=text.strip(), outcome=classify(text, row["acoustic"], row["contextual"]), contrast=contrast,
                )
            )  # fmt: skip
    return out


def counts(results: list[dict], snrs) -> list[dict]:
    table = []
    for snr in snrs:
        for condition in ("context", "neutral"):
            picked = [r for r in results if r["snr"] == snr and r["condition"] == condition]
            line = dict(snr="clean" if snr is None else f"{snr:g} dB", condition=condition, n=len(picked))
            for outcome in ("contextual", "acoustic", "neither"):
                line[outcome] = sum(r["outcome"] == outcome for r in picked)
            line["contrast_below_0"] = sum(r["contrast"] < 0 for r in picked)
            if condition == "context":
                line["context_effect"] = len(context_errors(results, snr))
            table.append(line)
    return table


def context_errors(results: list[dict], snr) -> list[dict]:
    """Context clips whose contrast prefers the contextual word while their neutral twin's
    prefers the acoustic word: errors the context made, not mishearings."""
    twin = {(r["id"], r["voice"]): r["contrast"] for r in results if r["snr"] == snr and r["condition"] == "neutral"}
    return [
        r
        for r in results
        if r["snr"] == snr and r["condition"] == "context" and r["contrast"] < 0 < twin.get((r["id"], r["voice"]), -1)
    ]


# ------------------------------------------------------------------------------------- intervention
def sources_for(model, audio, row, hooks, contrast, others, mean_clips, seed):
    """Activations each patch moves toward, by source name: the white-noise run and its controls."""
    tokens = contrast.tokens[:1]
    mel = model.to_mel(audio, SAMPLE_RATE)
    first = model.tokens_for(mel, tokens)

    def cache_of(clip):
        with torch.no_grad():
            _, cache = model.run_with_cache(clip, first, names_filter=sorted(hooks), sample_rate=SAMPLE_RATE)
        return {h: cache[h] for h in hooks}

    own = cache_of(audio)
    white = cache_of(Noise("white", seed=seed).like(audio, SAMPLE_RATE))
    generator = torch.Generator().manual_seed(seed)
    random = {}
    for h in hooks:  # as far from the clip's activation as white noise is, at each position, in no chosen direction
        step = (white[h] - own[h]).norm(dim=-1, keepdim=True)
        direction = torch.randn(own[h].shape, generator=generator)
        random[h] = own[h] + step * direction / direction.norm(dim=-1, keepdim=True)
    return {
        "white": white,
        "pink": cache_of(Noise("pink", seed=seed).like(audio, SAMPLE_RATE)),
        "speech": cache_of(load_audio(others[seed % len(others)])),
        "mean": mean_clips,
        "random": random,
    }


def intervene(model, rows, data, snr, layers, grids: dict[str, list[tuple]]) -> list[dict]:
    """``grids[source]``: (region, components, alphas) blocks to run for that source."""
    components = {c for grid in grids.values() for _, cs, _ in grid for c in cs}
    hooks = {model.hook_name("encoder", l, COMPONENTS[c]) for l in layers for c in components}
    others = [data / r["path"] for r in rows["others"]]
    with torch.no_grad():
        means = mean_activations(
            model, [load_audio(p) for p in others[:8]], sorted(hooks), tokens=prompt_of(model), sample_rate=SAMPLE_RATE
        )
    out = []
    items = rows["errors"] + rows["correct"]
    for n, (row, base) in enumerate(tqdm(items, desc="intervention", unit="item")):
        audio = with_noisy_word(load_audio(data / row["path"]), row, snr, seed=int(row["id"][2:]))
        contrast = contrast_for(model, row)
        sources = sources_for(model, audio, row, hooks, contrast, others, means, seed=n)
        duration = len(audio) / SAMPLE_RATE
        for name, grid in grids.items():
            for region, comps, alphas in grid:
                sites, keys = [], []
                for l in layers:
                    for c in comps:
                        hook = model.hook_name("encoder", l, COMPONENTS[c])
                        parts = word_sites(model, hook, (float(row["word_start"]), float(row["word_end"])), duration)
                        sites.append(parts[region])
                        keys.append((l, c))
                values = activation_patch(
                    model, audio, sources[name], sites, contrast, tokens=contrast, alpha=alphas, progress=False,
                    sample_rate=SAMPLE_RATE, batch_size=4,
                )  # fmt: skip
                for a, alpha in enumerate(alphas):
                    for (l, c), v in zip(keys, values[a].tolist()):
                        out.append(
                            dict(
                                id=row["id"], pair=row["pair"], voice=row["voice"],
                                kind="error" if base < 0 else "correct", base=base, source=name, region=region,
                                layer=l, component=c, alpha=alpha, contrast=v,
                            )
                        )  # fmt: skip
    return out


def summarise(runs: list[dict], controls: list[str]) -> list[dict]:
    """One line per (source, region, layer, component, alpha): flip and break rates with
    intervals, and for white noise p-values against each control (McNemar on flips, raw and
    Holm-adjusted over layer x component x alpha within a region)."""
    keyed: dict[tuple, list[dict]] = {}
    for r in runs:
        keyed.setdefault((r["source"], r["region"], r["layer"], r["component"], r["alpha"]), []).append(r)
    lines = []
    for (source, region, layer, component, alpha), rs in sorted(keyed.items(), key=lambda kv: str(kv[0])):
        errors = sorted((r for r in rs if r["kind"] == "error"), key=lambda r: (r["id"], r["voice"]))
        correct = sorted((r for r in rs if r["kind"] == "correct"), key=lambda r: (r["id"], r["voice"]))
        line = dict(source=source, region=region, layer=layer, component=component, alpha=alpha)
        line["flips"] = [r["contrast"] > 0 for r in errors]
        line["breaks"] = [r["contrast"] < 0 for r in correct]
        line["flip_rate"] = float(np.mean(line["flips"])) if errors else float("nan")
        line["break_rate"] = float(np.mean(line["breaks"])) if correct else float("nan")
        line["flip_interval"] = group_bootstrap_interval(line["flips"], [r["pair"] for r in errors]) if errors else None
        line["break_interval"] = (
            group_bootstrap_interval(line["breaks"], [r["pair"] for r in correct]) if correct else None
        )
        line["contrast_shift"] = float(np.mean([r["contrast"] - r["base"] for r in rs]))
        lines.append(line)
    index = {(l["source"], l["region"], l["layer"], l["component"], l["alpha"]): l for l in lines}
    for control in controls:
        for region in {l["region"] for l in lines if l["source"] == "white"}:
            family = [l for l in lines if l["source"] == "white" and l["region"] == region]
            pairs = [(l, index.get((control, region, l["layer"], l["component"], l["alpha"]))) for l in family]
            pairs = [(l, c) for l, c in pairs if c is not None]
            raw = [mcnemar_p(l["flips"], c["flips"]) for l, c in pairs]
            for (l, _), p, adjusted in zip(pairs, raw, holm(raw)):
                l[f"p_vs_{control}"], l[f"p_holm_vs_{control}"] = p, adjusted
    return lines


def wer_cost(model, speech: Path, setting: dict | None) -> float:
    """Mean WER on the real clips in ``speech`` (with transcripts.tsv), transcribed with the
    ``setting`` (its layer, component and alpha, toward white noise, over all frames) or none."""
    references = read_transcripts(speech)
    scores = []
    for name, reference in references.items():
        clip = load_audio(speech / name)
        hooks = []
        if setting is not None:
            hook = model.hook_name("encoder", setting["layer"], COMPONENTS[setting["component"]])
            site = word_sites(model, hook, (0.0, 0.02), min(len(clip) / SAMPLE_RATE, 30.0))["all"]
            hooks = reference_hooks(
                model, clip, Noise(setting["source"]), [site], alpha=setting["alpha"],
                tokens=prompt_of(model), sample_rate=SAMPLE_RATE,
            )  # fmt: skip
        language = {"language": "en"} if model.cfg.is_multilingual else {}
        scores.append(
            word_error_rate(
                reference, model.transcribe(clip, fwd_hooks=hooks, sample_rate=SAMPLE_RATE, **language).text
            )
        )
    return float(np.mean(scores))


# -------------------------------------------------------------------------------------------- plot
def plot(lines: list[dict], controls: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    components = sorted({l["component"] for l in lines})
    fig, axes = plt.subplots(2, len(components), figsize=(4.2 * len(components), 6.5), squeeze=False, sharey=True)
    colours = plt.cm.viridis(np.linspace(0, 0.9, len({l["layer"] for l in lines})))
    for col, component in enumerate(components):
        for row, (rate, interval) in enumerate((("flip_rate", "flip_interval"), ("break_rate", "break_interval"))):
            ax = axes[row][col]
            for colour, layer in zip(colours, sorted({l["layer"] for l in lines})):
                for source, style in (("white", "-"), (controls[0] if controls else None, ":")):
                    picked = sorted(
                        (
                            l
                            for l in lines
                            if l["source"] == source
                            and l["region"] == "target"
                            and l["layer"] == layer
                            and l["component"] == component
                        ),
                        key=lambda l: l["alpha"],
                    )
                    if not picked or not picked[0][interval]:
                        continue
                    # alpha 0 is the unpatched run: nothing flips or breaks there, by definition
                    x = [0.0] + [l["alpha"] for l in picked]
                    y = [0.0] + [l[rate] for l in picked]
                    low = [0.0] + [l[rate] - l[interval][0] for l in picked]
                    high = [0.0] + [l[interval][1] - l[rate] for l in picked]
                    label = f"layer {layer}" + ("" if source == "white" else f" ({source})")
                    ax.errorbar(x, y, yerr=[low, high], fmt=style + "o", color=colour, ms=3, capsize=2, label=label)
            ax.set_title(f"{component}: {'flip' if row == 0 else 'break'} rate")
            ax.set_xlabel("alpha toward the reference (word frames)")
            ax.set_ylim(-0.02, 1.02)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -------------------------------------------------------------------------------------------- main
def pick_rows(index: list[dict], voices: list[str], n_items: int) -> list[dict]:
    """``n_items`` items spread evenly over the item list (so over the minimal pairs), both
    conditions, in each of ``voices``."""
    ids = sorted({r["id"] for r in index})
    step = max(1, len(ids) // n_items)
    chosen = set(ids[::step][:n_items])
    return [r for r in index if r["id"] in chosen and r["voice"] in voices]


def qwen2_audio_smoke() -> str:
    """The study's calls on a random HookedQwen2Audio: its chat prompt, the word contrast, an
    alpha sweep toward white noise on word-aligned frames."""
    import tempfile

    from tests.toolkit.test_families import tiny_qwen2_audio

    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_qwen2_audio(Path(tmp))
        audio = torch.randn(SAMPLE_RATE * 2) * 0.05
        contrast = word_contrast(model, "You are", "a", "helpful the")
        hook = model.hook_name("encoder", 1, "hook_mlp_out")
        sites = list(word_sites(model, hook, (0.5, 1.0), 2.0).values())
        values = activation_patch(
            model, audio, Noise("white"), sites, contrast, tokens=contrast, alpha=[0.0, 0.5, 1.0], progress=False,
            sample_rate=SAMPLE_RATE,
        )  # fmt: skip
        base = contrast_value(model, audio, contrast)
        if not torch.allclose(values[0], torch.tensor(base).expand(len(sites)), atol=1e-4):
            raise AssertionError("Qwen2-Audio smoke test: alpha 0 changed the contrast")
        return f"random HookedQwen2Audio: contrast {base:+.3f}; white noise alpha 1 on word/context/all: " + ", ".join(
            f"{v:+.3f}" for v in values[2].tolist()
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="the data set folder (built there if it has no index.tsv)")
    parser.add_argument("--models", default="tiny.en,base")
    parser.add_argument("--voices", default="espeak-us,flite-slt,flite-rms")
    parser.add_argument("--items", default="12,base=6", help="items per voice (of 489); MODEL=N for one model")
    parser.add_argument("--snr", default="clean,0", help="'clean' and/or dB of white noise over the word alone")
    parser.add_argument(
        "--intervene-snr", default="auto", help="level for interventions (auto: the cleanest with --targets errors)"
    )
    parser.add_argument("--intervene-model", default="tiny.en")
    parser.add_argument("--targets", type=int, default=4, help="error items (and as many correct ones) to patch")
    parser.add_argument("--layers", default="all")
    parser.add_argument("--components", default="attn,mlp,resid")
    parser.add_argument("--alphas", default="0.5,1", help="white noise on the word's frames")
    parser.add_argument("--region-alphas", default="1", help="white noise on the context's and on all frames")
    parser.add_argument("--region-components", default="resid")
    parser.add_argument("--regions", default="context,all", help="besides the word's frames")
    parser.add_argument("--controls", default="pink,speech,mean,random")
    parser.add_argument("--control-alphas", default="0.5,1", help="controls, on the word's frames")
    parser.add_argument("--speech", type=Path, default=Path(__file__).parent.parent.parent / "tests" / "data")
    parser.add_argument("--out", default="contextual_bias")
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.time()
    if not (args.data / "index.tsv").exists():
        contextual_bias_data.build(args.data, args.voices.split(","))
    index = contextual_bias_data.read_index(args.data)
    voices = args.voices.split(",")
    snrs = [None if s == "clean" else float(s) for s in args.snr.split(",")]
    default_items, *overrides = args.items.split(",")
    items = {k: int(v) for k, v in (o.split("=") for o in overrides)}
    floats = lambda text: [float(a) for a in text.split(",") if a]  # noqa: E731
    components = args.components.split(",")
    controls = [c for c in args.controls.split(",") if c]
    grids = {"white": [("target", components, floats(args.alphas))]}
    grids["white"] += [
        (r, args.region_components.split(","), floats(args.region_alphas)) for r in args.regions.split(",") if r
    ]
    grids.update({c: [("target", components, floats(args.control_alphas))] for c in controls})
    report: dict = dict(scale=dict(vars(args), data=str(args.data), speech=str(args.speech)), paper=PAPER)
    report["qwen2_audio_smoke"] = qwen2_audio_smoke()
    report["models"] = {}
    for name in args.models.split(","):
        model = HookedWhisper.from_pretrained(name)
        rows = pick_rows(index, voices, items.get(name, int(default_items)))
        results = behaviour(model, rows, args.data, snrs)
        entry = dict(items=len({r["id"] for r in rows}), counts=counts(results, snrs), clips=results)
        if name == args.intervene_model:
            errors_at = {level: len(context_errors(results, level)) for level in snrs}
            if args.intervene_snr == "auto":
                snr = next((level for level in snrs if errors_at[level] >= args.targets), snrs[-1])
            else:
                snr = None if args.intervene_snr == "clean" else float(args.intervene_snr)
            by_key = {(r["id"], r["voice"], r["condition"]): r for r in rows}
            twin = {
                (r["id"], r["voice"]): r["contrast"] for r in results if r["snr"] == snr and r["condition"] == "neutral"
            }
            here = [r for r in results if r["snr"] == snr and r["condition"] == "context"]
            errors = [(by_key[(r["id"], r["voice"], "context")], r["contrast"]) for r in context_errors(results, snr)]
            correct = [
                (by_key[(r["id"], r["voice"], "context")], r["contrast"])
                for r in here
                if r["contrast"] > 0 and twin[(r["id"], r["voice"])] > 0
            ]
            spread = lambda xs: xs[:: max(1, len(xs) // args.targets)][: args.targets]  # noqa: E731
            chosen = dict(errors=spread(errors), correct=spread(correct))
            used = {r["id"] for r, _ in chosen["errors"] + chosen["correct"]}
            chosen["others"] = [r for r in index if r["condition"] == "context" and r["id"] not in used][::37]
            if not chosen["errors"] or not chosen["correct"]:
                entry["intervention_skipped"] = f"{len(errors)} errors and {len(correct)} correct items: too few"
                report["models"][name] = entry
                continue
            layers = range(model.layer_count("encoder")) if args.layers == "all" else map(int, args.layers.split(","))
            runs = intervene(model, chosen, args.data, snr, list(layers), grids)
            lines = summarise(runs, controls)
            strongest = max(
                controls,
                key=lambda c: np.nanmean([l["flip_rate"] for l in lines if l["source"] == c]),
                default=None,
            )
            white = [l for l in lines if l["source"] == "white" and l["region"] == "target"]
            white = [l for l in white if f"p_vs_{strongest}" in l] or white  # where the controls ran too
            best = max(white, key=lambda l: (l["flip_rate"] - l["break_rate"], -l["alpha"]))
            level = "clean" if snr is None else f"{snr:g} dB"
            entry.update(intervention=dict(snr=level, strongest_control=strongest, lines=lines, runs=runs))
            entry["best"] = {k: v for k, v in best.items() if k not in ("flips", "breaks")}
            entry["wer"] = dict(
                none=wer_cost(model, args.speech, None),
                best_white_all_frames=wer_cost(model, args.speech, best),
            )
            plot(
                lines, [strongest] if strongest else [], RESULTS / f"{args.out}.png", f"{name}, word masked at {snr} dB"
            )
        report["models"][name] = entry
    report["seconds"] = time.time() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=1, default=str))
    (RESULTS / f"{args.out}.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    s = report["scale"]
    out = [
        "# Contextual bias: behaviour and patching toward white noise",
        "",
        f"Scale: items per voice {s['items']} (spread over the item list) x voices {s['voices']} x (context, "
        f"neutral twin), each clean and with the word masked by white noise at {s['snr']} dB; interventions on "
        f"{s['intervene_model']} on {s['targets']} error and {s['targets']} correct context clips, every encoder "
        f"layer ({s['layers']}): white noise on the word's frames ({s['components']} x alpha {s['alphas']}), on "
        f"the context's and all frames ({s['region_components']} x alpha {s['region_alphas']}); controls "
        f"{s['controls']} on the word's frames ({s['components']} x alpha {s['control_alphas']}). "
        f"{report['seconds']:.0f} s on one shared CPU core.",
        "",
        f"Paper (700 sentences): Qwen2-Audio {PAPER['Qwen2-Audio'][0]}/700 and Whisper large-v3 "
        f"{PAPER['Whisper large-v3'][0]}/700 contextual errors.",
        "",
        f"Qwen2-Audio path: {report['qwen2_audio_smoke']}",
        "",
    ]
    for name, entry in report["models"].items():
        out += [
            f"## {name}",
            "",
            "| word | condition | n | contextual | acoustic | neither | contrast < 0 | context effect |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in entry["counts"]:
            out.append(
                f"| {c['snr']} | {c['condition']} | {c['n']} | {c['contextual']} | {c['acoustic']} | "
                f"{c['neither']} | {c['contrast_below_0']} | {c.get('context_effect', '')} |"
            )
        if "intervention_skipped" in entry:
            out += ["", f"No interventions: {entry['intervention_skipped']}."]
        if "intervention" in entry:
            iv = entry["intervention"]
            strongest = iv["strongest_control"]
            out += [
                "",
                f"Interventions with the word {iv['snr']}; strongest control (highest mean flip rate): {strongest}. "
                "Errors: context clips whose contrast prefers the contextual word while the neutral twin's prefers "
                "the acoustic word; correct: both prefer the acoustic word. Flip: an error's contrast turns "
                "positive; break: a correct item's turns negative.",
                "",
                "| source | region | layer | component | alpha | flip rate [95% CI] | break rate [95% CI] | "
                f"mean contrast change | p vs {strongest} (Holm) |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for l in sorted(
                (l for l in iv["lines"] if l["source"] == "white" or l["alpha"] == 1.0),
                key=lambda l: (
                    l["source"] != "white",
                    l["source"],
                    l["region"],
                    l["layer"],
                    l["component"],
                    l["alpha"],
                ),
            ):
                fi, bi = l["flip_interval"] or (math.nan, math.nan), l["break_interval"] or (math.nan, math.nan)
                p = l.get(f"p_holm_vs_{strongest}")
                out.append(
                    f"| {l['source']} | {l['region']} | {l['layer']} | {l['component']} | {l['alpha']:g} | "
                    f"{l['flip_rate']:.2f} [{fi[0]:.2f}, {fi[1]:.2f}] | "
                    f"{l['break_rate']:.2f} [{bi[0]:.2f}, {bi[1]:.2f}] | "
                    f"{l['contrast_shift']:+.2f} | {'-' if p is None else f'{p:.3g}'} |"
                )
            b = entry["best"]
            out += [
                "",
                f"Best (flip - break, word frames): layer {b['layer']} {b['component']} alpha {b['alpha']:g}: flip "
                f"{b['flip_rate']:.2f} {b['flip_interval']}, break {b['break_rate']:.2f}, Holm p vs {strongest} "
                f"{b.get(f'p_holm_vs_{strongest}')}. WER on real speech: {entry['wer']['none']:.3f} unpatched, "
                f"{entry['wer']['best_white_all_frames']:.3f} with that setting on all frames.",
            ]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
