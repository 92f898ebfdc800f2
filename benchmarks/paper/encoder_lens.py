"""The seed paper's two lenses on real weights, over many real utterances:

    .venv/bin/python benchmarks/paper/encoder_lens.py --prompts DEBIAN --data ../shared/data/voxlingua107-dev-subset

**Encoder lens**: the decoder reads each encoder layer's output (through the final LayerNorm,
``hooked_whisper.lens.encoder_lens``) and transcribes; per layer, the mean WER against the
reference transcript and against the model's own final transcript, and the share of runs that
loop, each with a 95% bootstrap interval over utterances. Utterances: a seeded sample of the
human-read prompts of Debian's ``asterisk-core-sounds-en-wav`` (one speaker; transcripts from
``asterisk-core-sounds-en``) and the transcribed clips in tests/data.

**Logit-lens saturation**: on the model's own greedy transcript of real speech (teacher-forced),
the first decoder block from whose output the top-1 token stays the final prediction
(``logit_lens(...).saturation_layer``), for every predicted token (each transcript token and the
end of text). Windows: the prompts joined into windows of at most 25 s, and VoxLingua107's English
clips joined into 30 s windows; the distribution over layers has a 95% bootstrap interval over
windows (tokens of one window are not independent).

Writes ``results/encoder_lens.{md,json}`` and ``results/encoder_lens_{model}.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).parent.parent.parent))
from benchmarks.paper.hallucination_speech_data import asterisk_prompts  # noqa: E402
from benchmarks.paper.probing import read_clips  # noqa: E402
from hooked_whisper import HookedWhisper, load_audio  # noqa: E402
from hooked_whisper.lens import encoder_lens, logit_lens  # noqa: E402
from hooked_whisper.metrics import read_transcripts  # noqa: E402
from hooked_whisper.plots import _pyplot  # noqa: E402

HERE = Path(__file__).parent
TESTS_DATA = HERE.parent.parent / "tests" / "data"
SR = 16000
MAX_NEW_TOKENS = 128  # the utterances hold at most about 100 tokens; a loop is stopped when it forms


def utterances(prompts: list, n: int, seed: int) -> list[tuple[str, str, torch.Tensor, str]]:
    """(id, speaker, audio, reference): the clips of tests/data and a seeded sample of prompts, ``n`` in all."""
    out = [
        (f"tests/data:{f}", f.split("_")[0], load_audio(TESTS_DATA / f), t)
        for f, t in read_transcripts(TESTS_DATA).items()
    ]
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    for i in order:
        audio = load_audio(prompts[i].path)
        if len(out) < n and len(audio) <= 20 * SR:  # one window each; the few long menu prompts are left out
            out.append((prompts[i].id, "asterisk", audio, prompts[i].text))
    return out


def split_at_pauses(audio: torch.Tensor, most: int) -> list[torch.Tensor]:
    """``audio`` cut into pieces of at most ``most`` samples, each cut at the quietest 50 ms of the
    last third of the piece (a pause between words, not a word cut in two)."""
    frame, pieces = SR // 20, []
    while len(audio) > most:
        start = 2 * most // 3
        frames = audio[start:most][: (most - start) // frame * frame].reshape(-1, frame)
        cut = start + int(frames.pow(2).mean(1).argmin()) * frame + frame // 2
        pieces.append(audio[:cut])
        audio = audio[cut:]
    return pieces + [audio]


def windows(prompts: list, data: Path | None) -> list[tuple[str, torch.Tensor]]:
    """Long real speech for the logit lens: the prompts and the clips of tests/data joined (0.3 s apart)
    into windows of at most 25 s (a prompt longer than that is cut at pauses into pieces of at most
    25 s); VoxLingua107's English clips joined into 30 s windows, the remainder a last shorter one."""
    out, parts, length = [], [], 0
    gap = torch.zeros(int(0.3 * SR))
    clips = [load_audio(p.path) for p in prompts] + [load_audio(TESTS_DATA / f) for f in read_transcripts(TESTS_DATA)]
    for audio in (piece for clip in clips for piece in split_at_pauses(clip, 25 * SR)):
        if length + len(audio) > 25 * SR and parts:
            out.append((f"prompts-{len(out)}", torch.cat(parts)))
            parts, length = [], 0
        parts += [audio, gap]
        length += len(audio) + len(gap)
    if parts:
        out.append((f"prompts-{len(out)}", torch.cat(parts)))
    if data is not None:
        english = [load_audio(row["path"]) for row in read_clips(data) if row["language"] == "en"]
        if english:
            long = torch.cat(english)
            out += [
                (f"voxlingua-en@{30 * k}s", long[k * 30 * SR : (k + 1) * 30 * SR])
                for k in range(-(-len(long) // (30 * SR)))
                if len(long) - k * 30 * SR >= SR  # a last window under a second holds no word
            ]
    return out


def cached(cache: Path | None, name: str, key: str, compute, *args):
    """``compute(*args)``, stored as one JSON line per ``key`` in ``cache/name.jsonl`` so an interrupted run
    resumes where it stopped (no cache: computed every time)."""
    if cache is None:
        return compute(*args)
    path = cache / f"{name}.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["key"] == key:
                return entry["value"]
    value = compute(*args)
    with path.open("a") as f:
        f.write(json.dumps({"key": key, "value": value}) + "\n")
    return value


def bootstrap_mean(values: torch.Tensor, repeats: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` (one per utterance), resampling utterances."""
    pick = torch.randint(len(values), (repeats, len(values)), generator=torch.Generator().manual_seed(seed))
    means = values.double()[pick].mean(1)
    return float(means.quantile(0.025)), float(means.quantile(0.975))


def lens_rows(model: HookedWhisper, item: tuple) -> list[dict]:
    uid, speaker, audio, reference = item
    return [
        {"id": uid, "speaker": speaker, "layer": r.layer, "text": r.text,
         "wer_vs_reference": r.wer_vs_reference, "wer_vs_final": r.wer_vs_final, "looping": r.loop.looping}
        for r in encoder_lens(model, audio, reference=reference, max_new_tokens=MAX_NEW_TOKENS, sample_rate=16000)
    ]  # fmt: skip


def lens_study(name: str, model: HookedWhisper, items: list, cache: Path | None = None) -> dict:
    rows = []
    for item in tqdm(items, desc=f"{name}: encoder lens", unit="utterance"):
        rows += cached(cache, f"encoder_lens_{name}", f"{item[0]}:{len(item[2])}", lens_rows, model, item)
    examples = {r["layer"]: r["text"] for r in rows if r["id"] == items[-1][0]}
    lens = {"utterances": len(items), "speakers": len({s for _, s, _, _ in items}),
            "example": {"id": items[-1][0], "reference": items[-1][3], "texts": examples}, "rows": rows}  # fmt: skip
    return lens | {"layers": layer_summaries(rows)}


def layer_summaries(rows: list[dict]) -> list[dict]:
    """Per encoder layer read: mean WER (against the reference and the final transcript) and share
    looping, each with its interval, and the paired difference in WER against the last layer's."""
    n_layers = 1 + max(r["layer"] for r in rows)

    def values(layer: int, key: str) -> torch.Tensor:  # one per utterance, in the same utterance order for every layer
        x = torch.tensor([float(r[key]) for r in rows if r["layer"] == layer])
        # WER can exceed 1 (a loop inserts words): capped at 1 for the mean, so a few loops do not dominate it.
        return x.clamp(max=1.0) if key != "looping" else x

    last = values(n_layers - 1, "wer_vs_reference")
    layers = []
    for layer in range(n_layers):
        summary = {"layer": layer}
        for key in ("wer_vs_reference", "wer_vs_final", "looping"):
            x = values(layer, key)
            summary |= {"n": len(x), key: float(x.mean()), key + "_ci": bootstrap_mean(x)}
        # Paired over utterances (the same utterances resampled for both layers).
        difference = values(layer, "wer_vs_reference") - last
        summary["minus_last_layer"] = float(difference.mean())
        summary["minus_last_layer_ci"] = bootstrap_mean(difference)
        layers.append(summary)
    return layers


def saturation_counts(model: HookedWhisper, audio: torch.Tensor, prompt_len: int) -> list[int]:
    """Per layer (index 0 the embedding, then blocks 0..n-1), how many predicted tokens saturate there."""
    n_blocks = model.cfg.n_decoder_layers
    names = [
        model.hook_name("decoder", l, leaf) for l in range(n_blocks) for leaf in ("hook_resid_pre", "hook_resid_post")
    ]
    with torch.no_grad():
        _, cache = model.run_with_cache(audio, names_filter=names)
    saturation = logit_lens(model, cache, k=1).saturation_layer[0, prompt_len - 1 :]
    return torch.bincount(saturation + 1, minlength=n_blocks + 1).tolist()


def saturation_study(
    name: str, model: HookedWhisper, items: list[tuple[str, torch.Tensor]], cache: Path | None = None
) -> dict:
    prompt_len = len(model.prompt_tokens(language="en") if model.cfg.is_multilingual else model.prompt_tokens())
    n_blocks = model.cfg.n_decoder_layers
    per_window = [
        cached(cache, f"saturation_{name}", f"{wid}:{len(audio)}", saturation_counts, model, audio, prompt_len)
        for wid, audio in tqdm(items, desc=f"{name}: logit lens", unit="window")
    ]
    counts = torch.tensor(per_window, dtype=torch.float64)  # [windows, layers]
    pick = torch.randint(len(counts), (2000, len(counts)), generator=torch.Generator().manual_seed(0))
    shares = counts[pick].sum(1) / counts[pick].sum((1, 2))[:, None]
    depth = torch.arange(-1, n_blocks, dtype=torch.float64)
    mean_layer = (shares * depth).sum(1)
    total = counts.sum(0)
    return {
        "windows": len(items),
        "tokens": int(total.sum()),
        "labels": ["embed"] + [f"block {l}" for l in range(n_blocks)],
        "share": (total / total.sum()).tolist(),
        "share_ci": list(zip(shares.quantile(0.025, 0).tolist(), shares.quantile(0.975, 0).tolist())),
        "mean_layer": float((total * depth).sum() / total.sum()),
        "mean_layer_ci": (float(mean_layer.quantile(0.025)), float(mean_layer.quantile(0.975))),
        "before_last_block": float(total[:-1].sum() / total.sum()),
        "before_last_block_ci": (
            float(shares[:, :-1].sum(1).quantile(0.025)),
            float(shares[:, :-1].sum(1).quantile(0.975)),
        ),
    }


def markdown(name: str, lens: dict | None, saturation: dict | None) -> list[str]:
    lines = []
    if lens is not None:
        lines += [
            f"### Encoder lens, {name}",
            "",
            f"{lens['utterances']} utterances ({lens['speakers']} speakers, most from one: an interval over "
            "utterances, not speakers). Mean WER (capped at 1 per utterance) [95% bootstrap interval over utterances]:",
            "",
            "| encoder layer read | WER vs reference | minus the last layer's (paired) | WER vs final transcript "
            "| looping |",
            "|---|---|---|---|---|",
        ]
        for x in lens["layers"]:
            lines.append(
                f"| {x['layer']} | {x['wer_vs_reference']:.3f} [{x['wer_vs_reference_ci'][0]:.3f}-"
                f"{x['wer_vs_reference_ci'][1]:.3f}] | {x['minus_last_layer']:+.3f} "
                f"[{x['minus_last_layer_ci'][0]:+.3f}, {x['minus_last_layer_ci'][1]:+.3f}] | "
                f"{x['wer_vs_final']:.3f} [{x['wer_vs_final_ci'][0]:.3f}-"
                f"{x['wer_vs_final_ci'][1]:.3f}] | {100 * x['looping']:.0f}% [{100 * x['looping_ci'][0]:.0f}-"
                f"{100 * x['looping_ci'][1]:.0f}] |"
            )
        ex = lens["example"]
        lines += ["", f"Example, {ex['id']} ({ex['reference']!r}): "
                  + "; ".join(f"layer {k}: {v.strip()[:60]!r}" for k, v in ex["texts"].items()), ""]  # fmt: skip
    if saturation is not None:
        s = saturation
        lines += [
            f"### Logit-lens saturation, {name}",
            "",
            f"{s['tokens']} predicted tokens in {s['windows']} windows of real speech. Share of tokens whose top-1 "
            "stays final from each layer's output on [95% bootstrap interval over windows]:",
            "",
            "| " + " | ".join(s["labels"]) + " |",
            "|" + "---|" * len(s["labels"]),
            "| "
            + " | ".join(
                f"{100 * v:.1f}% [{100 * lo:.1f}-{100 * hi:.1f}]" for v, (lo, hi) in zip(s["share"], s["share_ci"])
            )
            + " |",  # fmt: skip
            "",
            f"Mean saturation layer {s['mean_layer']:.2f} [{s['mean_layer_ci'][0]:.2f}-{s['mean_layer_ci'][1]:.2f}] "
            f"(-1 is the embedding); settled before the last block: {100 * s['before_last_block']:.1f}% "
            f"[{100 * s['before_last_block_ci'][0]:.1f}-{100 * s['before_last_block_ci'][1]:.1f}].",
            "",
        ]
    return lines


def plot(name: str, lens: dict | None, saturation: dict | None, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if lens is not None:
        xs = [x["layer"] for x in lens["layers"]]
        for key, colour in (("wer_vs_reference", "tab:blue"), ("looping", "tab:red")):
            values = [x[key] for x in lens["layers"]]
            low = [x[key] - x[key + "_ci"][0] for x in lens["layers"]]
            high = [x[key + "_ci"][1] - x[key] for x in lens["layers"]]
            axes[0].errorbar(xs, values, yerr=[low, high], marker="o", capsize=3, color=colour,
                             label="WER vs reference" if key != "looping" else "share looping")  # fmt: skip
        axes[0].set_xticks(xs)
        axes[0].set_xlabel("encoder layer read by the decoder")
        axes[0].set_title(f"encoder lens, {lens['utterances']} utterances")
        axes[0].legend(fontsize=8)
    if saturation is not None:
        s = saturation
        low = [100 * (v - lo) for v, (lo, _) in zip(s["share"], s["share_ci"])]
        high = [100 * (hi - v) for v, (_, hi) in zip(s["share"], s["share_ci"])]
        axes[1].bar(range(len(s["labels"])), [100 * v for v in s["share"]], yerr=[low, high], capsize=3)
        axes[1].set_xticks(range(len(s["labels"])), s["labels"], fontsize=8)
        axes[1].set_ylabel("% of tokens")
        axes[1].set_title(f"logit-lens saturation layer, {s['tokens']} tokens")
    fig.suptitle(f"{name}: 95% bootstrap intervals")
    fig.savefig(path, dpi=130, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=Path, required=True, help="unpacked asterisk-core-sounds-en(-wav)")
    parser.add_argument("--data", type=Path, help="VoxLingua107 folder (clips.tsv): English windows for the logit lens")
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--utterances", type=int, default=200)
    parser.add_argument("--windows", type=int, default=0, help="logit-lens windows at most (0: all)")
    parser.add_argument("--studies", nargs="+", default=["encoder", "logit"], choices=["encoder", "logit"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument(
        "--cache", type=Path, help="folder keeping each utterance's and window's result: a rerun resumes"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
    prompts = asterisk_prompts(args.prompts)
    items = utterances(prompts, args.utterances, args.seed) if "encoder" in args.studies else []
    long = windows(prompts, args.data) if "logit" in args.studies else []
    long = long[: args.windows] if args.windows else long
    path = args.out / "encoder_lens.json"
    results: dict = json.loads(path.read_text()) if path.exists() else {}
    results = {k: v for k, v in results.items() if isinstance(v, dict)}  # one model's rerun keeps the others
    for name in args.models:
        model = HookedWhisper.from_pretrained(name)
        torch.manual_seed(args.seed)
        previous = results.get(name, {})
        lens = lens_study(name, model, items, args.cache) if items else previous.get("encoder_lens")
        if lens is not None:  # summaries rebuilt from the stored rows: a rerun of one study keeps the other current
            lens["layers"] = layer_summaries(lens["rows"])
        saturation = saturation_study(name, model, long, args.cache) if long else previous.get("saturation")
        lines = markdown(name, lens, saturation)
        results[name] = {"encoder_lens": lens, "saturation": saturation, "markdown": lines}
        plot(name, lens, saturation, args.out / f"encoder_lens_{name}.png")
        print("\n".join(lines))
        path.write_text(json.dumps(results, indent=1))
        (args.out / "encoder_lens.md").write_text("\n".join(l for r in results.values() for l in r["markdown"]) + "\n")


if __name__ == "__main__":
    main()
