"""The seed paper's repetition-hallucination study on real weights (tiny.en and base), in one
command:

    .venv/bin/python benchmarks/paper/hallucination.py

1. Finds real inputs that make the model loop: short pieces (0.4 or 0.6 s) of the real speech
   clips repeated four times. A faithful transcript repeats the words four times; a loop
   keeps going. A run counts as looping when its tokens repeat one block at least eight times
   back to back (twice what the audio holds), or it reaches the token cap without ending.
   Silence, noise, tones and chords were tried too: they give one short phantom word, not loops.
2. For every decoder layer: zero-ablates cross-attention, self-attention and the MLP, and
   patches that layer's cross-attention keys and values from a non-looping reference (the same
   piece heard once); then zero-ablates every cross-attention head. Each intervention is
   applied during generation; it "resolves" a loop when the run no longer loops. Its cost is
   the WER on the real clips in tests/data transcribed with the same intervention.
3. Writes ``results/hallucination.md``, ``results/hallucination.json`` and plots beside this file.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hooked_whisper import HookedWhisper, load_audio
from hooked_whisper.decoding.repetition import trailing_repeat
from hooked_whisper.decoding.search import DecodingOptions, decode_window
from hooked_whisper.metrics import read_transcripts, word_error_rate
from hooked_whisper.patching import Site, patch_hooks
from hooked_whisper.plots import _pyplot

HERE = Path(__file__).parent
DATA = HERE.parent.parent / "tests" / "data"
TILES = 4
MAX_NEW_TOKENS = 96


def loops(tokens: list[int]) -> bool:
    _, repeats = trailing_repeat(tokens)
    return repeats >= 2 * TILES


def candidates() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, tiled piece, the piece once) for short pieces of every real clip."""
    out = []
    for clip in sorted(DATA.glob("*.wav")):
        audio = load_audio(clip)
        for start_s, length_s in itertools.product((0.3, 0.6, 0.9, 1.2), (0.4, 0.6)):
            piece = audio[int(start_s * 16000) : int((start_s + length_s) * 16000)]
            if len(piece) == int(length_s * 16000) and piece.abs().max() > 0.01:
                out.append((f"{clip.stem}@{start_s}s+{length_s}s", piece.repeat(TILES), piece))
    return out


def transcribe(model, encoder_out, hooks, language):
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        options = DecodingOptions(language=language, max_new_tokens=MAX_NEW_TOKENS, stop_on_loop=loops)
        return decode_window(model, encoder_out, options)


def looped(results) -> list[bool]:
    return [loops(r.tokens) or len(r.tokens) >= MAX_NEW_TOKENS for r in results]


def study(name: str, max_inputs: int) -> dict:
    model = HookedWhisper.from_pretrained(name)
    language = "en" if model.cfg.is_multilingual else None
    references = read_transcripts(DATA)
    clips = sorted(references)
    with torch.no_grad():
        clip_enc = model.encode(model.to_mel([DATA / c for c in clips]))
        pool = candidates()
        pool_enc = model.encode(model.to_mel([tiled for _, tiled, _ in pool]))
    first = transcribe(model, pool_enc, [], language)
    chosen = [i for i, flag in enumerate(looped(first)) if flag][:max_inputs]
    if not chosen:
        raise SystemExit(f"{name}: no looping input found")
    loop_enc = pool_enc[chosen]
    with torch.no_grad():
        ref_enc = model.encode(model.to_mel([pool[i][2] for i in chosen]))
        ref_kv = [block.cross_kv(ref_enc) for block in model.decoder_blocks]

    def clip_wer(hooks) -> float:
        results = transcribe(model, clip_enc, hooks, language)
        return sum(word_error_rate(references[c], r.text) for c, r in zip(clips, results)) / len(clips)

    # (label, kind, layer, head, hooks on the looping inputs, hooks on the real clips)
    interventions: list[tuple[str, str, int, int | None, list, list]] = []
    for l in range(model.cfg.n_decoder_layers):
        for kind, hook in (
            ("cross-attention", "hook_cross_attn_out"),
            ("self-attention", "hook_attn_out"),
            ("MLP", "hook_mlp_out"),
        ):
            site = Site(f"decoder_blocks.{l}.{hook}")
            hooks = patch_hooks(model, [site], [0.0])
            interventions.append((f"zero {kind} L{l}", kind, l, None, hooks, hooks))
        kv_sites = [Site(f"decoder_blocks.{l}.cross_attn.hook_{p}") for p in "kv"]
        # On a real clip the non-looping reference is the clip itself, so the patch changes nothing there.
        interventions.append(
            (
                f"cross-attention K/V L{l} from reference",
                "cross-attention from reference",
                l,
                None,
                patch_hooks(model, kv_sites, list(ref_kv[l])),
                [],
            )
        )
    for l in range(model.cfg.n_decoder_layers):
        for h in range(model.cfg.n_heads):
            site = Site(f"decoder_blocks.{l}.cross_attn.hook_z", head=h)
            hooks = patch_hooks(model, [site], [0.0])
            interventions.append((f"zero XL{l}H{h}", "cross-attention head", l, h, hooks, hooks))

    rows = []
    baseline_wer = clip_wer([])
    for label, kind, layer, head, hooks, clean_hooks in tqdm(
        interventions, desc=f"{name}: interventions", unit="intervention"
    ):
        results = transcribe(model, loop_enc, hooks, language)
        still = looped(results)
        rows.append(
            {
                "intervention": label,
                "kind": kind,
                "layer": layer,
                "head": head,
                "resolved": 1 - sum(still) / len(still),
                "clean_wer": clip_wer(clean_hooks) if clean_hooks else baseline_wer,
            }
        )
    return {
        "model": name,
        "candidates": len(pool),
        "looping": len(chosen),
        "inputs": [pool[i][0] for i in chosen],
        "baseline_texts": [first[i].text[:120] for i in chosen],
        "baseline_clean_wer": baseline_wer,
        "rows": rows,
    }


def plot(result: dict, path: Path) -> None:
    plt = _pyplot()
    rows = result["rows"]
    kinds = ["cross-attention", "cross-attention from reference", "self-attention", "MLP"]
    n_layers = max(r["layer"] for r in rows) + 1
    fig, (ax, hx) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        vals = [next(r["resolved"] for r in rows if r["kind"] == kind and r["layer"] == l) for l in range(n_layers)]
        ax.bar([l + k * width for l in range(n_layers)], [100 * v for v in vals], width, label=kind)
    ax.set_xticks([l + 0.4 - width / 2 for l in range(n_layers)], [f"L{l}" for l in range(n_layers)])
    ax.set_ylabel("% of loops resolved")
    ax.set_title(f"{result['model']}: ablating one decoder layer's component ({result['looping']} looping inputs)")
    ax.legend(fontsize=8)
    heads = [r for r in rows if r["kind"] == "cross-attention head"]
    n_heads = max(r["head"] for r in heads) + 1
    grid = torch.zeros(n_layers, n_heads)
    for r in heads:
        grid[r["layer"], r["head"]] = 100 * r["resolved"]
    image = hx.imshow(grid, cmap="Reds", vmin=0, vmax=100, aspect="auto")
    hx.set_xlabel("cross-attention head")
    hx.set_ylabel("decoder layer")
    hx.set_title("% resolved by zeroing one head")
    fig.colorbar(image, ax=hx)
    fig.savefig(path, dpi=130, bbox_inches="tight")


def markdown(results: list[dict]) -> str:
    lines = []
    for res in results:
        lines += [
            f"### {res['model']}",
            "",
            f"{res['looping']} of {res['candidates']} candidate inputs loop. Baseline WER on the real clips: "
            f"{res['baseline_clean_wer']:.3f}.",
            "",
            "| intervention | loops resolved | WER on real clips |",
            "|---|---|---|",
        ]
        per_layer = [r for r in res["rows"] if r["head"] is None]
        lines += [f"| {r['intervention']} | {100 * r['resolved']:.0f}% | {r['clean_wer']:.3f} |" for r in per_layer]
        heads = sorted((r for r in res["rows"] if r["head"] is not None), key=lambda r: -r["resolved"])[:5]
        lines += [
            "",
            "Best single cross-attention heads: "
            + ", ".join(
                f"{r['intervention'].removeprefix('zero ')} {100 * r['resolved']:.0f}% (WER {r['clean_wer']:.3f})"
                for r in heads
            ),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--max-inputs", type=int, default=10)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [study(name, args.max_inputs) for name in args.models]
    for res in results:
        plot(res, out / f"hallucination_{res['model']}.png")
    (out / "hallucination.json").write_text(json.dumps(results, indent=2))
    (out / "hallucination.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
