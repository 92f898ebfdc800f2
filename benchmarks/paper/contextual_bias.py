"""Semantic bias in the encoder: does patching encoder components toward a noise reference make
the model write the word that was said rather than the one the context predicts?

    .venv/bin/python benchmarks/paper/contextual_bias.py DATA_DIR [--stage all|behaviour|intervene|probe|report]

``DATA_DIR`` is the synthetic data set (built there by ``contextual_bias_data.py`` when it has
no ``index.tsv``): sentences whose audio says the acoustic word ("lice") where the context
predicts the contextual word ("rice"), each with a neutral twin that shares the word's samples.
Each stage updates ``results/contextual_bias.json`` (``--stage all`` starts it afresh and runs
every stage); the Markdown and the plot are rewritten from it after each.

1. **Behaviour.** Each clip is transcribed greedily and the transcript classed as writing the
   contextual word, the acoustic word, or neither, in context and in the neutral twin (the twin
   tells a context effect from a mishearing). Beside it, the teacher-forced contrast
   ``log p(acoustic) - log p(contextual)`` after the sentence's own text (``word_contrast``).
   As small models make few contextual errors on clean speech, the word alone is also masked
   by white noise at set SNRs (``--snr``, per model); each level is reported.
2. **Intervention.** On context errors (the contrast prefers the contextual word, the twin's the
   acoustic one) and as many correct context clips, at the cleanest level with enough errors:
   each encoder layer x {self-attention out, MLP out, residual stream} x alpha moved toward a
   white-noise run (``Noise("white")``, the clip's length and loudness) on the word's frames, the
   context's frames or all frames (``word_sites``); controls: pink noise, another speech clip,
   the mean activation over other clips, a random direction with the white-noise displacement's
   norm at each position (``--grid``: full, reduced or focused, per model). Each layer is one sweep, which
   starts at that layer (``activation_patch`` reuses the unpatched stream below it).
3. **Outcomes.** Flip rate (errors whose contrast turns positive), break rate (correct items
   whose contrast turns negative), the mean change of the contrast, and the WER cost on real
   speech (``--speech``) of the best setting applied to all frames while transcribing.
4. **Statistics.** 95% intervals from a bootstrap over sentence templates (minimal pairs); a
   paired permutation test over templates against each control (``cluster_permutation_p``),
   Holm over layer x component x alpha (``adjust_p_values``).
5. **Semantic-category probe.** 120 words of 6 categories (``data/semantic_categories.tsv``),
   each spoken alone by the data set's voices, probed at every encoder layer with words held
   out, beside the same probe on categories dealt to the words at random.

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
    cluster_permutation_p,
    group_bootstrap_interval,
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
def sources_for(model, audio, hooks, contrast, others, mean_clips, seed):
    """Activations each patch moves toward, by source name: the white-noise run and its controls."""
    mel = model.to_mel(audio, SAMPLE_RATE)
    first = model.tokens_for(mel, contrast.tokens[:1])

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


def intervene(model, items, data, snr, layers, grid: list[tuple]) -> list[dict]:
    """``grid``: (source, region, components, alphas) blocks. ``items``: (index row, unpatched
    contrast, "error" or "correct"). Each layer's sites are one sweep, so it starts at that
    layer (``activation_patch`` reuses the unpatched stream up to the first patched block)."""
    components = {c for _, _, cs, _ in grid for c in cs}
    hooks = {model.hook_name("encoder", l, COMPONENTS[c]) for l in layers for c in components}
    others = [data / r["path"] for r in items["others"]]
    with torch.no_grad():
        means = mean_activations(
            model, [load_audio(p) for p in others[:4]], sorted(hooks), tokens=prompt_of(model), sample_rate=SAMPLE_RATE
        )
    out = []
    for n, (row, base, kind) in enumerate(tqdm(items["targets"], desc="intervention", unit="item")):
        audio = with_noisy_word(load_audio(data / row["path"]), row, snr, seed=int(row["id"][2:]))
        contrast = contrast_for(model, row)
        sources = sources_for(model, audio, hooks, contrast, others, means, seed=n)
        duration, span = len(audio) / SAMPLE_RATE, (float(row["word_start"]), float(row["word_end"]))
        for source, region, comps, alphas in grid:
            for l in layers:
                hooks_here = [model.hook_name("encoder", l, COMPONENTS[c]) for c in comps]
                sites = [word_sites(model, hook, span, duration)[region] for hook in hooks_here]
                values = activation_patch(
                    model, audio, sources[source], sites, contrast, tokens=contrast, alpha=alphas, progress=False,
                    sample_rate=SAMPLE_RATE, batch_size=len(sites) * len(alphas),
                )  # fmt: skip
                for a, alpha in enumerate(alphas):
                    for c, v in zip(comps, values[a].tolist()):
                        out.append(
                            dict(
                                id=row["id"], pair=row["pair"], voice=row["voice"], kind=kind, base=base,
                                source=source, region=region, layer=l, component=c, alpha=alpha, contrast=v,
                            )
                        )  # fmt: skip
    return out


def summarise(runs: list[dict], controls: list[str]) -> list[dict]:
    """One line per (source, region, layer, component, alpha): flip and break rates with 95%
    intervals from a bootstrap over sentence templates (minimal pairs), the mean contrast change,
    and for white noise a paired permutation test against each control on the same items and
    the same layer and component (at the same alpha where the control ran it, else at alpha 1;
    flip = 1, else 0; whole templates swapped together), raw and Holm-adjusted over layer x
    component x alpha within a region."""
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
        line["flip_pairs"] = [r["pair"] for r in errors]
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
            # the control at the same alpha where it ran, else its full replacement (alpha 1)
            pairs = [
                (l, index.get((control, region, *where, l["alpha"])) or index.get((control, region, *where, 1.0)))
                for l in family
                for where in [(l["layer"], l["component"])]
            ]
            pairs = [(l, c) for l, c in pairs if c is not None and l["flips"]]
            raw = [cluster_permutation_p(l["flips"], c["flips"], l["flip_pairs"], repeats=2000) for l, c in pairs]
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
def plot(panels: list[tuple[str, list[dict], str | None]], path: Path) -> None:
    """Flip and break rates against alpha (word frames), per layer, with their intervals: one
    pair of rows per (model, lines, strongest control); the control dotted beside white noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    components = sorted({l["component"] for _, lines, _ in panels for l in lines})
    fig, axes = plt.subplots(
        2 * len(panels), len(components), figsize=(4.2 * len(components), 3.3 * 2 * len(panels)), squeeze=False
    )
    for p, (name, lines, control) in enumerate(panels):
        layers = sorted({l["layer"] for l in lines})
        colours = plt.cm.viridis(np.linspace(0, 0.9, len(layers)))
        for col, component in enumerate(components):
            for row, (rate, interval) in enumerate((("flip_rate", "flip_interval"), ("break_rate", "break_interval"))):
                ax = axes[2 * p + row][col]
                for colour, layer in zip(colours, layers):
                    for source, style in (("white", "-"), (control, ":")):
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
                ax.set_title(f"{name} {component}: {'flip' if row == 0 else 'break'} rate", fontsize=9)
                ax.set_xlabel("alpha toward white noise (word frames)")
                ax.set_ylim(-0.02, 1.02)
        axes[2 * p][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------------- probe
CATEGORIES = Path(__file__).parent / "data" / "semantic_categories.tsv"


def read_categories(path: Path = CATEGORIES) -> list[tuple[str, str]]:
    """(word, category) pairs written for the probe: single common words, 20 per category."""
    lines = path.read_text().splitlines()[1:]
    return [(word, category) for category, word in (line.split("\t") for line in lines if line)]


def random_categories(pairs: list[tuple[str, str]], seed: int = 0) -> dict[str, str]:
    """The phonetic-only control: the categories dealt to the words at random (each category
    keeps its size), so a word's label says nothing about its meaning, only which word it is."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    return {word: pairs[i][1] for (word, _), i in zip(pairs, order)}


def spoken_words(words: list[str], voices: list[str], folder: Path) -> list[tuple[str, str, Path, tuple]]:
    """Each word spoken alone by each voice, with the data set's edges and trimming (built once
    into ``folder``): (word, voice, path, (start, end) seconds)."""
    import soundfile

    config = contextual_bias_data.settings()
    by_name = {v["name"]: v for v in config["voices"]}
    out = []
    for voice in voices:
        (folder / voice).mkdir(parents=True, exist_ok=True)
        for word in words:
            path = folder / voice / f"{word}.wav"
            piece = contextual_bias_data.trim(
                contextual_bias_data.synthesise(by_name[voice], word, SAMPLE_RATE), config["trim_db"]
            )
            audio, span = contextual_bias_data.assemble([piece], 0, 0.0, config["edge_s"], SAMPLE_RATE)
            if not path.exists():
                soundfile.write(path, audio, SAMPLE_RATE)
            out.append((word, voice, path, span))
    return out


def category_probe(model, voices: list[str], folder: Path, seed: int = 0) -> dict:
    """A ridge probe of the word's category at every encoder layer (the word's frames, mean
    pooled), words held out (groups = word, so no word is both trained and tested on, in any
    voice), beside the same probe on categories assigned to the words at random (class sizes
    kept): what sound and word identity alone would give."""
    from hooked_whisper.probing import train_probes

    pairs = read_categories()
    clips = spoken_words([w for w, _ in pairs], voices, folder)
    hooks = [model.hook_name("encoder", l, "hook_resid_post") for l in range(model.layer_count("encoder"))]
    pooled: dict[str, list] = {h: [] for h in hooks}
    for _, _, path, span in tqdm(clips, desc="category probe", unit="word"):
        with torch.no_grad():
            _, cache = model.run_with_cache(
                load_audio(path), prompt_of(model), names_filter=hooks, sample_rate=SAMPLE_RATE
            )
        for h in hooks:
            frames = list(model.hook_layouts[h].positions(*span))
            pooled[h].append(cache[h][0, frames].mean(0))
    store = {h: torch.stack(v) for h, v in pooled.items()}
    category, random_category = dict(pairs), random_categories(pairs, seed)
    words = [w for w, _, _, _ in clips]
    out = dict(words=len(pairs), categories=sorted(set(category.values())), voices=voices, clips=len(clips))
    for name, labels in (("semantic", [category[w] for w in words]), ("random", [random_category[w] for w in words])):
        report = train_probes(store, labels, hooks, groups=words, permutations=50, seed=seed, progress=False)
        out[name] = [
            dict(
                layer=r.layer, balanced_accuracy=r.balanced_accuracy, interval=(r.ci_low, r.ci_high),
                chance=r.shuffled, p_holm=r.p_adjusted,
            )
            for r in report.results
        ]  # fmt: skip
    return out


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


def per_model(text: str) -> dict[str, str]:
    """'DEFAULT,MODEL=VALUE,...' -> {"": DEFAULT, MODEL: VALUE}."""
    default, *overrides = text.split(",")
    return {"": default, **dict(o.split("=", 1) for o in overrides)}


def setting(text: str, name: str, level: str | None = None) -> str:
    """A per-model option's value for model ``name`` (and, given, one intervention level):
    'MODEL@LEVEL=VALUE' before 'MODEL=VALUE' before the default."""
    values = per_model(text)
    if level is not None and f"{name}@{level}" in values:
        return values[f"{name}@{level}"]
    return values.get(name, values[""])


def levels(text: str) -> list[float | None]:
    return [None if s == "clean" else float(s) for s in text.split("/")]


def level_name(snr) -> str:
    return "clean" if snr is None else f"{snr:g} dB"


def grid_for(preset: str, controls: list[str]) -> list[tuple]:
    """(source, region, components, alphas) blocks. full: every component at every alpha toward
    white noise on the word's frames, the residual stream at alpha 1 on the context's and on all
    frames, the controls on the word's frames at alpha 1 (every component); reduced: the residual
    stream at alpha 0.5 and 1 toward white noise, the controls at 1, on the word's frames;
    focused: every component at alpha 0.25, 0.5 and 1 toward white noise on the word's frames
    (``control_blocks`` adds the controls at the best of those alphas once it is known)."""
    if preset == "focused":
        return [("white", "target", ["attn", "mlp", "resid"], [0.25, 0.5, 1.0])]
    if preset == "full":
        grid = [("white", "target", ["attn", "mlp", "resid"], [0.1, 0.25, 0.5, 0.75, 1.0])]
        grid += [("white", r, ["resid"], [1.0]) for r in ("context", "all")]
        return grid + [(c, "target", ["attn", "mlp", "resid"], [1.0]) for c in controls]
    return [("white", "target", ["resid"], [0.5, 1.0])] + [(c, "target", ["resid"], [1.0]) for c in controls]


def control_blocks(controls: list[str], alpha: float) -> list[tuple]:
    """The controls on the word's frames at ``alpha``, every component (the focused grid's second
    pass)."""
    return [(c, "target", ["attn", "mlp", "resid"], [alpha]) for c in controls]


def best_white(lines: list[dict], strongest: str | None = None) -> dict:
    """The white-noise line on the word's frames with the highest flip rate minus break rate
    (the smaller alpha on a tie), among those tested against ``strongest`` where any were."""
    white = [l for l in lines if l["source"] == "white" and l["region"] == "target"]
    white = [l for l in white if f"p_vs_{strongest}" in l] or white  # where the controls ran too
    # No correct items chosen: every break rate is NaN, and NaN would make every comparison false.
    return max(white, key=lambda l: (l["flip_rate"] - float(np.nan_to_num(l["break_rate"])), -l["alpha"]))


def choose_items(results: list[dict], rows: list[dict], index: list[dict], snr, n: int) -> dict:
    """Up to ``n`` context errors (the twin prefers the acoustic word) and ``n`` correct context
    clips (both prefer it) at ``snr``, spread over the list; other context clips for the speech
    and mean controls."""
    by_key = {(r["id"], r["voice"], r["condition"]): r for r in rows}
    twin = {(r["id"], r["voice"]): r["contrast"] for r in results if r["snr"] == snr and r["condition"] == "neutral"}
    here = [r for r in results if r["snr"] == snr and r["condition"] == "context"]
    errors = [(by_key[(r["id"], r["voice"], "context")], r["contrast"], "error") for r in context_errors(results, snr)]
    correct = [
        (by_key[(r["id"], r["voice"], "context")], r["contrast"], "correct")
        for r in here
        if r["contrast"] > 0 and twin[(r["id"], r["voice"])] > 0
    ]
    spread = lambda xs: xs[:: max(1, len(xs) // n)][:n]  # noqa: E731
    targets = spread(errors) + spread(correct)
    used = {r["id"] for r, _, _ in targets}
    others = [r for r in index if r["condition"] == "context" and r["id"] not in used][::37]
    return dict(targets=targets, others=others, n_errors=len(errors), n_correct=len(correct))


def describe(block: tuple) -> str:
    source, region, components, alphas = block
    return f"{source} on {region}: {'/'.join(components)} x alpha {'/'.join(f'{a:g}' for a in alphas)}"


def run_intervention(model, name, entry, rows, index, args, controls, wanted: str) -> None:
    """Interventions at level ``wanted`` ("auto": the cleanest level with enough errors), stored
    in ``entry["interventions"]`` under that level's name."""
    snrs = levels(setting(args.snr, name))
    results = entry["clips"]
    errors_at = {level: len(context_errors(results, level)) for level in snrs}
    if wanted == "auto":  # the cleanest level with as many errors as "auto" asks for, else the most errors
        enough = int(setting(args.targets, name, wanted))
        snr = next((level for level in snrs if errors_at[level] >= enough), max(snrs, key=lambda s: errors_at[s]))
    else:
        snr = levels(wanted)[0]
    # From here on, the settings of the level it came to: "auto" that lands on 5 dB, or "5.0",
    # runs as "MODEL@5" says, so that it rewrites the "5 dB" results with the same design.
    level = "clean" if snr is None else f"{snr:g}"
    n = int(setting(args.targets, name, level))
    chosen = choose_items(results, rows, index, snr, n)
    if not chosen["targets"] or not any(k == "error" for _, _, k in chosen["targets"]):
        entry["intervention_skipped"] = f"{chosen['n_errors']} errors and {chosen['n_correct']} correct items"
        return
    preset = setting(args.grid, name, level)
    grid = grid_for(preset, controls)
    layers = list(range(model.layer_count("encoder")))
    started = time.time()
    runs = intervene(model, chosen, args.data, snr, layers, grid)
    if preset == "focused":  # the controls at the alpha where white noise did best, on the same items
        extra = control_blocks(controls, best_white(summarise(runs, []))["alpha"])
        grid += extra
        runs += intervene(model, chosen, args.data, snr, layers, extra)
    lines = summarise(runs, controls)
    strongest = max(
        controls,
        key=lambda c: np.nanmean([l["flip_rate"] for l in lines if l["source"] == c] or [0.0]),
        default=None,
    )
    best = best_white(lines, strongest)
    entry.setdefault("interventions", {})[level_name(snr)] = dict(
        snr=level_name(snr), grid=preset, blocks=[describe(block) for block in grid], strongest_control=strongest,
        n_errors=sum(k == "error" for _, _, k in chosen["targets"]),
        n_correct=sum(k == "correct" for _, _, k in chosen["targets"]),
        seconds=time.time() - started, lines=lines, runs=runs,
        best={k: v for k, v in best.items() if k not in ("flips", "breaks", "flip_pairs")},
        wer=dict(none=wer_cost(model, args.speech, None), best_white_all_frames=wer_cost(model, args.speech, best)),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="the data set folder (built there if it has no index.tsv)")
    parser.add_argument("--stage", default="all", choices=["all", "behaviour", "intervene", "probe", "report"])
    parser.add_argument("--models", default="tiny.en,base")
    parser.add_argument("--voices", default="espeak-us,flite-slt,flite-rms")
    parser.add_argument("--items", default="16,base=12", help="items per voice (of 489); MODEL=N for one model")
    parser.add_argument(
        "--snr", default="clean/5/0,base=clean/5", help="'clean' and/or dB of white noise over the word alone"
    )
    parser.add_argument(
        "--targets", default="2,tiny.en@5=20", help="error items (and as many correct ones) to patch; MODEL@LEVEL=N"
    )
    parser.add_argument(
        "--grid", default="full,base=reduced,tiny.en@5=focused", help="full, reduced or focused; MODEL=, MODEL@LEVEL="
    )
    parser.add_argument(
        "--intervene-snr", default="auto,tiny.en=auto/5", help="levels to intervene at, per model (auto: the cleanest)"
    )
    parser.add_argument("--controls", default="pink,speech,mean,random")
    parser.add_argument("--probe-model", default="tiny.en,base", help="models to probe, comma-separated")
    parser.add_argument("--probe-voices", default="espeak-us,flite-slt,flite-rms")
    parser.add_argument("--speech", type=Path, default=Path(__file__).parent.parent.parent / "tests" / "data")
    parser.add_argument("--out", default="contextual_bias")
    args = parser.parse_args()
    torch.manual_seed(0)
    stages = ["behaviour", "intervene", "probe", "report"] if args.stage == "all" else [args.stage]
    json_path = RESULTS / f"{args.out}.json"
    report: dict = {} if args.stage == "all" or not json_path.exists() else json.loads(json_path.read_text())
    if not isinstance(report.get("seconds", {}), dict):  # a results file from before the stages: start afresh
        report = {}
    for entry in report.get("models", {}).values():  # one intervention per model, from before the levels
        if "intervention" in entry:
            iv = entry.pop("intervention")
            entry["interventions"] = {iv["snr"]: dict(iv, best=entry.pop("best"), wer=entry.pop("wer"))}
    if "probe" in report:  # one probe, from before a probe per model
        probe = report.pop("probe")
        report.setdefault("probes", {})[probe["model"]] = probe
    report.setdefault("models", {})
    report.setdefault("seconds", {})
    report.update(paper=PAPER)
    report.setdefault("scale", {})[args.stage] = dict(vars(args), data=str(args.data), speech=str(args.speech))
    if "behaviour" in stages or "intervene" in stages:
        if not (args.data / "index.tsv").exists():
            contextual_bias_data.build(args.data, args.voices.split(","))
        index = contextual_bias_data.read_index(args.data)
    controls = [c for c in args.controls.split(",") if c]
    for stage in stages:
        started = time.time()
        if stage == "report":
            break
        if stage == "probe":
            for name in args.probe_model.split(","):
                model = HookedWhisper.from_pretrained(name)
                probe = category_probe(model, args.probe_voices.split(","), args.data / "category_words")
                report.setdefault("probes", {})[name] = dict(probe, model=name)
            report["qwen2_audio_smoke"] = qwen2_audio_smoke()
        for name in args.models.split(",") if stage in ("behaviour", "intervene") else []:
            model = HookedWhisper.from_pretrained(name)
            items = int(setting(args.items, name))
            rows = pick_rows(index, args.voices.split(","), items)
            entry = report["models"].setdefault(name, {})
            if stage == "behaviour":
                snrs = levels(setting(args.snr, name))
                results = behaviour(model, rows, args.data, snrs)
                entry.clear()
                entry.update(items=len({r["id"] for r in rows}), counts=counts(results, snrs), clips=results)
            else:
                entry.pop("intervention_skipped", None)
                for wanted in setting(args.intervene_snr, name).split("/"):
                    run_intervention(model, name, entry, rows, index, args, controls, wanted)
        report["seconds"][f"{stage} {args.probe_model if stage == 'probe' else args.models}"] = time.time() - started
        RESULTS.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1, default=str))
    panels = [
        (f"{name}, word {iv['snr']}", iv["lines"], iv["strongest_control"])
        for name, e in report["models"].items()
        for iv in e.get("interventions", {}).values()
    ]
    if panels:
        plot(panels, RESULTS / f"{args.out}.png")
    (RESULTS / f"{args.out}.md").write_text(markdown(report))
    print(markdown(report))


def fmt_p(p) -> str:
    return "-" if p is None else f"{p:.3g}"


def markdown(report: dict) -> str:
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in report.get("seconds", {}).items())
    out = [
        "# Contextual bias: behaviour and patching toward white noise",
        "",
        f"Settings per stage: see `contextual_bias.json` (`scale`). Time of each stage's latest run on one shared "
        f"CPU core: {seconds}.",
        "",
        f"Paper (700 sentences): Qwen2-Audio {PAPER['Qwen2-Audio'][0]}/700 and Whisper large-v3 "
        f"{PAPER['Whisper large-v3'][0]}/700 contextual errors.",
        "",
        f"Qwen2-Audio path: {report.get('qwen2_audio_smoke', 'not run')}",
        "",
    ]
    for name, entry in report["models"].items():
        if "counts" not in entry:
            continue
        out += [
            f"## {name}",
            "",
            f"{entry['items']} items x voices x (context, neutral twin); the word clean or masked by white noise.",
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
        for iv in entry.get("interventions", {}).values():
            strongest = iv["strongest_control"]
            blocks = "; ".join(b if isinstance(b, str) else " ".join(b) for b in iv["blocks"])
            out += [
                "",
                f"Interventions ({iv['grid']} grid: {blocks}) with the word "
                f"{iv['snr']}, on {iv['n_errors']} errors and {iv['n_correct']} correct items, {iv['seconds']:.0f} s. "
                f"Strongest control (highest mean flip rate): {strongest}. Errors: context clips whose contrast "
                "prefers the contextual word while the neutral twin's prefers the acoustic word; correct: both "
                "prefer the acoustic word. Flip: an error's contrast turns positive; break: a correct item's turns "
                "negative. Alpha 0 is the unpatched run (flip and break 0 by definition). p: paired permutation "
                "over templates against the control at the same layer and component (same alpha where it ran, "
                "else alpha 1; none where neither ran), Holm over the rows with a p (layer x component x alpha).",
                "",
                "| source | region | layer | component | alpha | flip rate [95% CI] | break rate [95% CI] | "
                f"mean contrast change | p vs {strongest} (Holm) |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for l in sorted(
                iv["lines"],
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
                out.append(
                    f"| {l['source']} | {l['region']} | {l['layer']} | {l['component']} | {l['alpha']:g} | "
                    f"{l['flip_rate']:.2f} [{fi[0]:.2f}, {fi[1]:.2f}] | "
                    f"{l['break_rate']:.2f} [{bi[0]:.2f}, {bi[1]:.2f}] | "
                    f"{l['contrast_shift']:+.2f} | {fmt_p(l.get(f'p_holm_vs_{strongest}'))} |"
                )
            b, wer = iv["best"], iv["wer"]
            none = " No setting flips any error." if b["flip_rate"] == 0 else ""
            out += [
                "",
                f"Best (flip - break, word frames): layer {b['layer']} {b['component']} alpha {b['alpha']:g}: flip "
                f"{b['flip_rate']:.2f} [{b['flip_interval'][0]:.2f}, {b['flip_interval'][1]:.2f}], break "
                f"{b['break_rate']:.2f}, p vs {strongest} {fmt_p(b.get(f'p_vs_{strongest}'))} (Holm "
                f"{fmt_p(b.get(f'p_holm_vs_{strongest}'))}). WER on real speech: {wer['none']:.3f} "
                f"unpatched, {wer['best_white_all_frames']:.3f} with that setting on all frames.{none}",
            ]
        out.append("")
    for pr in report.get("probes", {}).values():
        out += [
            f"## Semantic-category probe ({pr['model']})",
            "",
            f"{pr['words']} words in {len(pr['categories'])} categories ({', '.join(pr['categories'])}), each spoken "
            f"alone by {', '.join(pr['voices'])} ({pr['clips']} clips); ridge probe on the word's frames (mean over "
            "them) of each encoder layer's residual stream, 5 folds with words held out. Control: the same probe "
            "on categories assigned to the words at random (sizes kept). Balanced accuracy [95% interval over "
            "words], Holm-adjusted permutation p; chance 1/6.",
            "",
            "| layer | semantic categories | p (Holm) | random categories (control) | p (Holm) |",
            "|---|---|---|---|---|",
        ]
        for s, r in zip(pr["semantic"], pr["random"]):
            out.append(
                f"| {s['layer']} | {s['balanced_accuracy']:.3f} [{s['interval'][0]:.3f}, {s['interval'][1]:.3f}] | "
                f"{fmt_p(s['p_holm'])} | {r['balanced_accuracy']:.3f} [{r['interval'][0]:.3f}, "
                f"{r['interval'][1]:.3f}] | {fmt_p(r['p_holm'])} |"
            )
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
