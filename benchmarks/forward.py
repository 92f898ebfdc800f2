"""Forward-pass speed: HookedWhisper (no hooks) against Hugging Face (sdpa and eager attention),
side by side in one process on the same inputs. Median of several runs after a warm-up,
reported as ratios (HookedWhisper time / Hugging Face time; below 1 is faster).

    python benchmarks/forward.py [--models tiny.en base] [--batch 1 4] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from benchmarks.common import median_time  # noqa: E402
from hooked_whisper import HookedWhisper
from weights_conversion import save_hf_folder

CLIP = Path(__file__).parent.parent / "tests" / "data" / "librivox_0870.wav"


def bench_model(name: str, batches: list[int], repeats: int) -> list[dict]:
    from transformers import WhisperForConditionalGeneration

    model = HookedWhisper.from_pretrained(name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_hf_folder(model, tmp)
        hf = {
            impl: WhisperForConditionalGeneration.from_pretrained(folder, attn_implementation=impl).eval()
            for impl in ("sdpa", "eager")
        }
    rows = []
    with torch.inference_mode():
        tokens_one = model.generate(CLIP)[:, :-1]  # prompt + transcript
        for batch in batches:
            mel = model.to_mel(CLIP).expand(batch, -1, -1).contiguous()
            tokens = tokens_one.expand(batch, -1)
            ours = median_time(partial(model, mel, tokens), repeats)
            row = {"model": name, "batch": batch, "tokens": tokens.shape[1], "hooked_s": ours}
            for impl, ref in hf.items():
                row[f"hf_{impl}_s"] = median_time(partial(ref, input_features=mel, decoder_input_ids=tokens), repeats)
                row[f"ratio_vs_hf_{impl}"] = ours / row[f"hf_{impl}_s"]
            rows.append(row)
            print(
                f"{name} batch {batch}: hooked {ours * 1e3:.0f} ms, HF sdpa {row['hf_sdpa_s'] * 1e3:.0f} ms "
                f"(ratio {row['ratio_vs_hf_sdpa']:.2f}), HF eager {row['hf_eager_s'] * 1e3:.0f} ms "
                f"(ratio {row['ratio_vs_hf_eager']:.2f})",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    rows = [r for name in args.models for r in bench_model(name, args.batch, args.repeats)]
    machine = (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "forward.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    lines = [
        f"Forward pass, fp32 CPU ({machine}); median of {args.repeats} runs; ratio = HookedWhisper / HF.",
        "",
        "| model | batch | tokens | HookedWhisper ms | HF sdpa ms | ratio vs sdpa | HF eager ms | ratio vs eager |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['batch']} | {r['tokens']} | {r['hooked_s'] * 1e3:.0f} | {r['hf_sdpa_s'] * 1e3:.0f} | "
        f"{r['ratio_vs_hf_sdpa']:.2f} | {r['hf_eager_s'] * 1e3:.0f} | {r['ratio_vs_hf_eager']:.2f} |"
        for r in rows
    ]
    (out / "forward.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
