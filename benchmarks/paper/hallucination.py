"""The seed paper's two hallucination studies on real audio, with controls, in one command:

    .venv/bin/python benchmarks/paper/hallucination.py --data ../shared/data/voxlingua107-dev-subset

**Prediction** (paper: 93.4% at decoder layer 22). Real non-speech (pieces of five music tracks,
sequences of instrument and effect sounds, and the two mixed) at random lengths (1-20 s) and
loudness; the label is whether the model's greedy transcript writes any word (a letter or digit
outside brackets, parentheses, asterisks and music signs) that ``transcribe`` keeps (it drops a
window whose no-speech probability is above 0.6 and whose average log-probability is below -1):
on audio without speech, a hallucination. Decoding alone writes a word on nearly every input
("you"); the skipping rule is what makes the outcome vary. Probes read every decoder layer at
the end of the prompt (before any text is written), every encoder layer, the log-mel input and
the conv stem, on held-out groups (a 20 s stretch of a track, a disjoint subset of the sounds),
with the usual controls (``train_probes``), the same probes on a randomly initialised model,
and the model's own no-speech probability as a one-number baseline.

**Repetition loops** (paper: decoder cross-attention at layer 23 resolves 76%). Candidate inputs
are short pieces (0.4 or 0.6 s) of real speech (the clips in tests/data and VoxLingua107's English
clips) repeated four times; a faithful transcript repeats the words four times, a loop keeps
going. A run loops when its tokens end in one block repeated at least eight times (twice what
the audio holds) or it reaches the token cap. Up to ``--max-inputs`` looping inputs per model.
Each intervention runs during generation beside a size-matched control:

- zeroing one decoder layer's cross-attention, self-attention or MLP output, against adding a
  random direction of the same norm at every position (as large a change, in no chosen
  direction);
- that layer's cross-attention keys and values from the piece heard once, against those of
  another input's piece heard once (right audio against any audio);
- zeroing one cross-attention head: the best head is picked on half the source clips and scored
  on the other half, against the average head there (picking the best of many heads on the
  inputs it is scored on would flatter it).

"Resolved" is the share of looping inputs that no longer loop, with a 95% interval from a
bootstrap over source clips (pieces of one clip are not independent) and an exact McNemar test
against the control on the same inputs. The cost of each intervention is the WER on the real clips
in tests/data transcribed under it.

Writes ``results/hallucination.{md,json}`` and plots beside this file.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).parent.parent.parent))
from benchmarks.paper.probing import debian_sounds, mix, probe_hooks, read_clips, side  # noqa: E402
from hooked_whisper import HookedWhisper, load_audio  # noqa: E402
from hooked_whisper.decoding.repetition import trailing_repeat  # noqa: E402
from hooked_whisper.decoding.search import DecodingOptions, WindowResult, decode_window  # noqa: E402
from hooked_whisper.extraction import Manifest  # noqa: E402
from hooked_whisper.metrics import group_bootstrap_interval, mcnemar_p, read_transcripts, word_error_rate  # noqa: E402
from hooked_whisper.patching import Site, patch_hooks  # noqa: E402
from hooked_whisper.plots import _pyplot, plot_probes  # noqa: E402
from hooked_whisper.probing import extract_activations, train_probes  # noqa: E402

HERE = Path(__file__).parent
TESTS_DATA = HERE.parent.parent / "tests" / "data"
SR = 16000
TILES = 4
MAX_NEW_TOKENS = 96
PAPER = {
    "prediction": "93.4% (decoder layer 22 of 32)",
    "loops": "76% resolved by decoder cross-attention at layer 23 of 32",
}
Hooks = list[tuple[str, Callable]]


# ---------------------------------------------------------------- decoding and scoring


def decode(model: HookedWhisper, encoder_out: torch.Tensor, hooks: Hooks, max_new_tokens: int, chunk: int = 32, **kw):
    """Greedy transcripts of one window per row, ``chunk`` rows at a time (bounded cross-attention
    K/V memory); hooks whose sources hold one row per input need every row at once (chunk=0)."""
    language = "en" if model.cfg.is_multilingual else None
    options = DecodingOptions(language=language, max_new_tokens=max_new_tokens, **kw)
    out: list[WindowResult] = []
    chunk = chunk or len(encoder_out)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for start in range(0, len(encoder_out), chunk):
            out += decode_window(model, encoder_out[start : start + chunk], options)
    return out


def encode(model: HookedWhisper, waves: list[torch.Tensor], batch: int = 16) -> torch.Tensor:
    with torch.no_grad():
        parts = [model.encode(model.to_mel(waves[i : i + batch], sample_rate=SR)) for i in range(0, len(waves), batch)]
    return torch.cat(parts)


def loops(tokens: list[int]) -> bool:
    return trailing_repeat(tokens)[1] >= 2 * TILES


def looped(results: list[WindowResult]) -> list[bool]:
    return [loops(r.tokens) or len(r.tokens) >= MAX_NEW_TOKENS for r in results]


NOT_WORDS = re.compile(r"\([^)]*\)|\[[^\]]*\]|\*[^*]*\*|♪")


def writes_words(text: str) -> bool:
    """A letter or digit outside (sound descriptions), [tags], *actions* and music signs."""
    return re.search(r"[^\W_]", NOT_WORDS.sub(" ", text)) is not None


def skipped(r: WindowResult) -> bool:
    """``transcribe``'s rule (openai's defaults): a window that is probably not speech and whose
    text is not confident is dropped, so its words never reach the transcript."""
    return r.no_speech_prob > 0.6 and r.avg_logprob < -1.0


# ---------------------------------------------------------------- study 1: prediction


def non_speech_set(sounds: dict[str, list[torch.Tensor]], seed: int = 0) -> Manifest:
    """Music pieces, sound sequences and the two mixed, 1-20 s, RMS 0.001-0.1 (log-uniform).
    Groups: a 20 s stretch of a track; one of eight disjoint subsets of the sounds."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=gen))

    def scaled(x: torch.Tensor) -> torch.Tensor:
        return x * 10 ** uniform(-3, -1) / x.pow(2).mean().sqrt().clamp(min=1e-8)

    icons = sounds["sound-icons"]
    subsets = [icons[k::8] for k in range(8)]

    def sequence(subset: list[torch.Tensor], n: int) -> torch.Tensor:
        parts, length = [], 0
        while length < n:
            sound = subset[int(torch.randint(len(subset), (1,), generator=gen))]
            parts += [sound, torch.zeros(int(torch.randint(800, 8000, (1,), generator=gen)))]
            length += parts[-2].shape[0] + parts[-1].shape[0]
        return torch.cat(parts)[:n]

    waves, groups, kinds = [], [], []
    stretch = 20 * SR
    tracks = [name for name in sorted(sounds) if name != "sound-icons"]
    for name in tracks:
        track = sounds[name][0]
        for k in range(track.shape[0] // stretch):
            for _ in range(2):
                n = int(uniform(1, 20) * SR)
                start = k * stretch + int(torch.randint(stretch - n + 1, (1,), generator=gen))
                waves.append(scaled(track[start : start + n]))
                groups.append(f"{name}@{20 * k}s")
                kinds.append("music")
    for k, subset in enumerate(subsets):
        for _ in range(10):
            waves.append(scaled(sequence(subset, int(uniform(1, 20) * SR))))
            groups.append(f"sound-icons/{k}")
            kinds.append("sounds")
    for k, subset in enumerate(subsets):  # a subset's sounds over a stretch of music, at 0-10 dB
        for _ in range(5):
            name = tracks[int(torch.randint(len(tracks), (1,), generator=gen))]
            track = sounds[name][0]
            n = int(uniform(1, 20) * SR)
            start = int(torch.randint(track.shape[0] - n, (1,), generator=gen))
            waves.append(scaled(mix(sequence(subset, n), track[start : start + n], uniform(0, 10))))
            groups.append(f"sound-icons/{k}")
            kinds.append("sounds over music")
    manifest = Manifest(waves, [None] * len(waves), groups)
    manifest.kinds = kinds  # type: ignore[attr-defined]
    return manifest


def prediction_study(name: str, model: HookedWhisper, random_model: HookedWhisper, items: Manifest, args) -> dict:
    results = decode(model, encode(model, items.clips), [], max_new_tokens=64)
    labels = ["words" if not skipped(r) and writes_words(r.text) else "no words" for r in results]
    hooks = probe_hooks(model)
    n_enc = model.cfg.n_encoder_layers
    out = {"n": len(labels), "words": labels.count("words"), "by kind": {}}
    for kind in sorted(set(items.kinds)):  # type: ignore[attr-defined]
        rows = [i for i, k in enumerate(items.kinds) if k == kind]  # type: ignore[attr-defined]
        out["by kind"][kind] = (sum(labels[i] == "words" for i in rows), len(rows))
    out["examples"] = sorted({r.text.strip() for r, label in zip(results, labels) if label == "words"})[:12]
    # The model's own P(no speech), read at the same position before any text: half of the
    # skipping rule, so the baseline a probe has to beat.
    no_speech = torch.tensor([[r.no_speech_prob, math.log(max(r.no_speech_prob, 1e-9))] for r in results])
    reports = {}
    for label, m in ((name, model), (f"{name} (random init)", random_model)):
        store = extract_activations(
            m, items, hooks, decoder_pooling="prompt_end", out_dir=args.cache / f"hallucination-{label}",
            batch_size=8, shard_size=64, sample_rate=SR,
        )  # fmt: skip
        features = {h: store[h] for h in hooks}
        if m is model:
            features["no_speech_prob"] = no_speech
        report = train_probes(features, labels, groups=items.groups, permutations=args.permutations, code_length=True)
        reports[label] = {
            "encoder": side(report, hooks[: 2 + n_enc], n_enc),
            "decoder": side(report, hooks[2 + n_enc :], model.cfg.n_decoder_layers),
            "no_speech_prob": next((r for r in report.results if r.hook == "no_speech_prob"), None),
        }
    out["reports"] = reports
    return out


# ---------------------------------------------------------------- study 2: loops


def speech_sources(data: Path | None) -> dict[str, torch.Tensor]:
    sources = {clip.stem: load_audio(clip) for clip in sorted(TESTS_DATA.glob("*.wav"))}
    if data is not None:
        for row in read_clips(data):
            if row["language"] == "en":
                sources[Path(row["path"]).stem[:11]] = load_audio(row["path"])
    return sources


def loop_candidates(sources: dict[str, torch.Tensor]) -> list[tuple[str, str, torch.Tensor, torch.Tensor]]:
    """(source, name, the piece tiled, the piece once) at four starts and two lengths per clip."""
    out = []
    for source, audio in sources.items():
        for start_s in (0.3, 1.0, 1.7, 2.4):
            for length_s in (0.4, 0.6):
                piece = audio[int(start_s * SR) : int((start_s + length_s) * SR)]
                if len(piece) == int(length_s * SR) and piece.abs().max() > 0.01:
                    out.append((source, f"{source}@{start_s}s+{length_s}s", piece.repeat(TILES), piece))
    return out


def random_direction(seed: int) -> Callable:
    """A hook adding, at every position, a random direction with the norm of the output itself:
    the size of a zero ablation, in no chosen direction."""
    gen = torch.Generator().manual_seed(seed)

    def hook_fn(x: torch.Tensor, hook) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=gen).to(x)
        return x + noise * x.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True)

    return hook_fn


def loop_study(name: str, model: HookedWhisper, sources: dict[str, torch.Tensor], max_inputs: int) -> dict:
    references = read_transcripts(TESTS_DATA)
    clips = sorted(references)
    clip_enc = encode(model, [load_audio(TESTS_DATA / c) for c in clips])
    pool = loop_candidates(sources)
    chosen: list[int] = []
    loop_enc = []
    for start in tqdm(range(0, len(pool), 32), desc=f"{name}: finding loops", unit="batch"):
        enc = encode(model, [tiled for _, _, tiled, _ in pool[start : start + 32]])
        flags = looped(decode(model, enc, [], MAX_NEW_TOKENS, stop_on_loop=loops))
        keep = [i for i, flag in enumerate(flags) if flag]
        chosen += [start + i for i in keep]
        loop_enc.append(enc[keep])
        if len(chosen) >= max_inputs:
            break
    n_screened = min(len(pool), start + 32)
    chosen, encoder_out = chosen[:max_inputs], torch.cat(loop_enc)[:max_inputs]
    if len(chosen) < 2:
        raise SystemExit(f"{name}: {len(chosen)} looping inputs found in {n_screened} candidates")
    groups = [pool[i][0] for i in chosen]
    ref_enc = encode(model, [pool[i][3] for i in chosen])
    with torch.no_grad():
        ref_kv = [block.cross_kv(ref_enc) for block in model.decoder_blocks]
    n = len(chosen)

    def other_source(i: int) -> int:  # the next input from another source clip (if any)
        return (i + next((j for j in range(1, n) if groups[(i + j) % n] != groups[i]), 1)) % n

    other = [other_source(i) for i in range(n)]

    def still_looping(hooks: Hooks) -> list[bool]:
        return looped(decode(model, encoder_out, hooks, MAX_NEW_TOKENS, chunk=0, stop_on_loop=loops))

    def clip_wer(hooks: Hooks) -> float:
        # Capped and stopped at a loop: a broken model's garbage costs no more than 96 tokens.
        results = decode(model, clip_enc, hooks, MAX_NEW_TOKENS, stop_on_loop=True)
        return sum(word_error_rate(references[c], r.text) for c, r in zip(clips, results)) / len(clips)

    baseline_wer = clip_wer([])
    # (kind, layer, intervention hooks, control hooks, WER hooks of each: the K/V patch has
    # none, since on a real clip the reference is the clip itself)
    pairs = []
    for l in range(model.cfg.n_decoder_layers):
        for kind, hook in (("cross-attention", "hook_cross_attn_out"), ("self-attention", "hook_attn_out"),
                           ("MLP", "hook_mlp_out")):  # fmt: skip
            site = f"decoder_blocks.{l}.{hook}"
            zero = patch_hooks(model, [Site(site)], [0.0])
            control = [(site, random_direction(seed=1000 * l + len(pairs)))]
            pairs.append((kind, l, "zero", "random direction, same norm", zero, control, zero, control))
        kv_sites = [Site(f"decoder_blocks.{l}.cross_attn.hook_{p}") for p in "kv"]
        own = patch_hooks(model, kv_sites, list(ref_kv[l]))
        mismatched = patch_hooks(model, kv_sites, [t[other] for t in ref_kv[l]])
        pairs.append(("cross-attention K/V", l, "from the piece heard once", "from another input's piece", own,
                      mismatched, [], None))  # fmt: skip
    rows = []
    for kind, layer, what, control_what, hooks, control, wer_hooks, wer_control in tqdm(
        pairs, desc=f"{name}: layer interventions", unit="pair"
    ):
        resolved = [not flag for flag in still_looping(hooks)]
        control_resolved = [not flag for flag in still_looping(control)]
        rows.append({
            "kind": kind, "layer": layer, "intervention": what, "control": control_what,
            "resolved": sum(resolved) / len(resolved), "ci": group_bootstrap_interval(resolved, groups),
            "control_resolved": sum(control_resolved) / len(control_resolved),
            "control_ci": group_bootstrap_interval(control_resolved, groups),
            "p_vs_control": mcnemar_p(resolved, control_resolved),
            "wer": clip_wer(wer_hooks) if wer_hooks else baseline_wer,
            "control_wer": clip_wer(wer_control) if wer_control is not None else None,
        })  # fmt: skip
    heads, head_hooks = {}, {}
    for l in range(model.cfg.n_decoder_layers):
        for h in range(model.cfg.n_heads):
            head_hooks[l, h] = patch_hooks(model, [Site(f"decoder_blocks.{l}.cross_attn.hook_z", head=h)], [0.0])
            heads[l, h] = [not flag for flag in still_looping(head_hooks[l, h])]
    names = sorted(set(groups))
    shuffled = torch.randperm(len(names), generator=torch.Generator().manual_seed(0)).tolist()
    half_of = {names[k]: position % 2 for position, k in enumerate(shuffled)}
    held_out = []
    for pick in (0, 1):
        pick_rows = [i for i, g in enumerate(groups) if half_of[g] == pick]
        score_rows = [i for i, g in enumerate(groups) if half_of[g] != pick]

        def rate(flags, rows):
            return sum(flags[i] for i in rows) / max(1, len(rows))

        best = max(heads, key=lambda lh: rate(heads[lh], pick_rows))
        held_out.append({
            "head": f"XL{best[0]}H{best[1]}", "picked_on": len(pick_rows), "scored_on": len(score_rows),
            "resolved": rate(heads[best], score_rows),
            "ci": group_bootstrap_interval([heads[best][i] for i in score_rows], [groups[i] for i in score_rows]),
            "average_head": sum(rate(f, score_rows) for f in heads.values()) / len(heads),
            "wer": clip_wer(head_hooks[best]),
        })  # fmt: skip
    return {
        "model": name,
        "candidates_screened": n_screened,
        "looping": len(chosen),
        "sources": len(names),
        "inputs": [pool[i][1] for i in chosen],
        "baseline_wer": baseline_wer,
        "rows": rows,
        "heads": {f"XL{l}H{h}": sum(f) / len(f) for (l, h), f in heads.items()},
        "held_out_heads": held_out,
    }


# ---------------------------------------------------------------- reports


def prediction_markdown(name: str, r: dict) -> list[str]:
    lines = [
        f"### Predicting hallucination, {name}",
        "",
        f"{r['n']} non-speech inputs; the greedy transcript writes words on {r['words']} "
        + "(" + ", ".join(f"{k}: {a}/{b}" for k, (a, b) in r["by kind"].items()) + "). "
        + "Examples: " + "; ".join(repr(t[:40]) for t in r["examples"][:6]) + ".",
        "",
    ]  # fmt: skip
    for label, rep in r["reports"].items():
        for stack in ("encoder", "decoder"):
            where = "mean over the audio frames" if stack == "encoder" else "at the prompt's end"
            lines += [f"{label}, {stack} ({where}):", "", rep[stack].table(), ""]
        if rep["no_speech_prob"] is not None:
            b = rep["no_speech_prob"]
            lines += [
                f"The model's own no-speech probability as the only feature: balanced accuracy "
                f"{b.balanced_accuracy:.3f} (accuracy {b.accuracy:.3f}, p {b.p_value:.3f}).",
                "",
            ]
    return lines


def loop_markdown(r: dict) -> list[str]:
    lines = [
        f"### Repetition loops, {r['model']}",
        "",
        f"{r['looping']} looping inputs (from {r['sources']} source clips; {r['candidates_screened']} candidates "
        f"screened). WER on the real clips without intervention: {r['baseline_wer']:.3f}. Resolved: share of the "
        "looping inputs that no longer loop, [95% interval, bootstrap over source clips]; p: exact McNemar test "
        "against the control on the same inputs.",
        "",
        "| layer | component | intervention | resolved | WER | control | control resolved | control WER | p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        control_wer = f"{x['control_wer']:.2f}" if x["control_wer"] is not None else "-"
        lines.append(
            f"| {x['layer']} | {x['kind']} | {x['intervention']} | {100 * x['resolved']:.0f}% "
            f"[{100 * x['ci'][0]:.0f}-{100 * x['ci'][1]:.0f}] | {x['wer']:.2f} | {x['control']} | "
            f"{100 * x['control_resolved']:.0f}% [{100 * x['control_ci'][0]:.0f}-{100 * x['control_ci'][1]:.0f}] | "
            f"{control_wer} | {x['p_vs_control']:.3g} |"
        )
    lines += ["", "Single cross-attention heads, zeroed: picked on half the source clips, scored on the rest:", ""]
    lines += ["| picked | scored on | resolved | average head there | WER |", "|---|---|---|---|---|"]
    for h in r["held_out_heads"]:
        lines.append(
            f"| {h['head']} (on {h['picked_on']} inputs) | {h['scored_on']} inputs | {100 * h['resolved']:.0f}% "
            f"[{100 * h['ci'][0]:.0f}-{100 * h['ci'][1]:.0f}] | {100 * h['average_head']:.0f}% | {h['wer']:.2f} |"
        )
    top = sorted(r["heads"].items(), key=lambda kv: -kv[1])[:5]
    lines += ["", "Every head on every input (selected on the same inputs, so optimistic): "
              + ", ".join(f"{k} {100 * v:.0f}%" for k, v in top), ""]  # fmt: skip
    return lines


def plot_loops(r: dict, path: Path) -> None:
    plt = _pyplot()
    kinds = ["cross-attention", "cross-attention K/V", "self-attention", "MLP"]
    n_layers = max(x["layer"] for x in r["rows"]) + 1
    fig, axes = plt.subplots(1, len(kinds), figsize=(14, 3.6), sharey=True)
    for ax, kind in zip(axes, kinds):
        rows = sorted((x for x in r["rows"] if x["kind"] == kind), key=lambda x: x["layer"])
        for offset, key, ci, label, colour in (
            (-0.2, "resolved", "ci", rows[0]["intervention"], "tab:red"),
            (0.2, "control_resolved", "control_ci", rows[0]["control"], "tab:grey"),
        ):
            values = [100 * x[key] for x in rows]
            low = [100 * (x[key] - x[ci][0]) for x in rows]
            high = [100 * (x[ci][1] - x[key]) for x in rows]
            ax.bar([x["layer"] + offset for x in rows], values, 0.4, yerr=[low, high], capsize=2, label=label,
                   color=colour)  # fmt: skip
        ax.set_xticks(range(n_layers), [f"L{l}" for l in range(n_layers)])
        ax.set_title(kind)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("% of loops resolved")
    fig.suptitle(f"{r['model']}: {r['looping']} looping inputs, 95% intervals over source clips")
    fig.savefig(path, dpi=130, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="VoxLingua107 folder (clips.tsv): its English clips add sources")
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--max-inputs", type=int, default=48)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--studies", nargs="+", default=["prediction", "loops"], choices=["prediction", "loops"])
    parser.add_argument("--cache", type=Path, default=HERE / "activations", help="activation shards and sounds")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    items = non_speech_set(debian_sounds(args.cache)) if "prediction" in args.studies else None
    sources = speech_sources(args.data) if "loops" in args.studies else None
    # Results merge into what earlier runs wrote, so one model (or one study) can be rerun alone.
    path = args.out / "hallucination.json"
    results: dict = json.loads(path.read_text()) if path.exists() else {}
    results = {"paper": PAPER, "prediction": results.get("prediction", {}), "loops": results.get("loops", {})}

    def write() -> None:
        path.write_text(json.dumps(results, indent=1))
        lines = [line for study in ("prediction", "loops") for r in results[study].values() for line in r["markdown"]]
        (args.out / "hallucination.md").write_text("\n".join(lines))

    for name in args.models:
        model = HookedWhisper.from_pretrained(name)
        if items is not None:
            torch.manual_seed(0)
            random_model = HookedWhisper(model.cfg, model.tokenizer, model.generation_config).eval()
            r = prediction_study(name, model, random_model, items, args)
            plot_probes(
                {label: rep["decoder"] for label, rep in r["reports"].items()},
                args.out / f"hallucination_prediction_{name}.png",
                title=f"{name}: will the transcript of non-speech hold words? (decoder, prompt end)",
                chance=0.5,
            )
            lines = prediction_markdown(name, r)
            print("\n".join(lines))
            results["prediction"][name] = r | {
                "markdown": lines,
                "reports": {
                    label: {stack: [vars(x) for x in rep[stack].results] for stack in ("encoder", "decoder")}
                    | {"no_speech_prob": vars(rep["no_speech_prob"]) if rep["no_speech_prob"] else None}
                    for label, rep in r["reports"].items()
                },
            }
            write()
        if sources is not None:
            torch.manual_seed(0)
            r = loop_study(name, model, sources, args.max_inputs)
            plot_loops(r, args.out / f"hallucination_loops_{name}.png")
            lines = loop_markdown(r)
            print("\n".join(lines))
            results["loops"][name] = r | {"markdown": lines}
            write()


if __name__ == "__main__":
    main()
