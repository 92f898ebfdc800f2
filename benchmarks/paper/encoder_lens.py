"""The seed paper's encoder lens on real weights: the decoder reads each encoder layer's output
(through the final LayerNorm) and transcribes a real LibriVox clip; WER against the final
transcript and the reference, loops marked.

    .venv/bin/python benchmarks/paper/encoder_lens.py [--models tiny.en base]

Writes ``results/encoder_lens.{md,json}`` and ``results/encoder_lens_{model}.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hooked_whisper import HookedWhisper
from hooked_whisper.lens import encoder_lens
from hooked_whisper.metrics import read_transcripts
from hooked_whisper.plots import plot_encoder_lens

HERE = Path(__file__).parent
DATA = HERE.parent.parent / "tests" / "data"
CLIP = "librivox_0870.wav"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    args = parser.parse_args()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    reference = read_transcripts(DATA)[CLIP]
    results, lines = {}, [f"Encoder lens on {CLIP} (WER vs the final transcript / vs the reference):", ""]
    for name in args.models:
        rows = encoder_lens(HookedWhisper.from_pretrained(name), DATA / CLIP, reference=reference)
        plot_encoder_lens(rows, out / f"encoder_lens_{name}.png", title=f"{name}: encoder lens, {CLIP}")
        results[name] = [
            {"layer": r.layer, "text": r.text, "wer_vs_final": r.wer_vs_final, "wer_vs_reference": r.wer_vs_reference,
             "looping": r.loop.looping}
            for r in rows
        ]  # fmt: skip
        lines += [
            f"- {name} layer {r.layer}: {r.wer_vs_final:.2f} / {r.wer_vs_reference:.2f}"
            f"{' (loop)' if r.loop.looping else ''}: {r.text[:80]!r}"
            for r in rows
        ]
    (out / "encoder_lens.json").write_text(json.dumps(results, indent=1))
    (out / "encoder_lens.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
