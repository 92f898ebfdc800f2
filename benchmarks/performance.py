"""The performance matrix in one command: HookedWhisper against Hugging Face (and, for greedy
transcription, openai-whisper and CTranslate2), side by side in one process on the same inputs.

1. encoder, decoder (teacher-forced over a real transcript) and full forward, no hooks, against
   HF sdpa and eager, batch 1/4/16;
2. ``run_with_cache`` of every hook, and of the residual stream only, against HF eager with
   ``output_hidden_states`` and ``output_attentions``; the size of each cache;
3. greedy transcription (``benchmarks/decoding.py``);
4. peak memory of each run above (the process's peak resident memory is reset before each run,
   Linux ``/proc/self/clear_refs``; reported as MiB above the memory in use before it);
5. ``from_pretrained`` time and peak memory, and resident memory after one ``generate``, in a fresh
   process per model, against the model's size.

Median of ``--repeats`` runs after a warm-up; ratio = HookedWhisper time / reference time.

    python benchmarks/performance.py [--models tiny.en base] [--batch 1 4 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from benchmarks import decoding  # noqa: E402
from benchmarks.common import DATA, RESULTS, machine, median_time, proc_status_mib, write_results  # noqa: E402
from hooked_whisper import HookedWhisper  # noqa: E402
from weights_conversion import save_hf_folder  # noqa: E402

CLIP = DATA / "librivox_0870.wav"
_LIBC = ctypes.CDLL("libc.so.6")


def peak_extra_mib(fn) -> float:
    """MiB of peak memory ``fn()`` needs above what is in use before it: resident memory on the
    CPU, allocated memory on a GPU."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = resident_mib()  # freed heap handed back, so "in use" means live memory
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak to the current resident size
    fn()
    return proc_status_mib("VmHWM") - before


def timed(fn, repeats: int) -> tuple[float, float]:
    return median_time(fn, repeats), peak_extra_mib(fn)


def forward_rows(model: HookedWhisper, hf: dict, name: str, batches: list[int], repeats: int) -> list[dict]:
    rows = []
    one_mel = model.to_mel(CLIP)
    one_tokens = model.generate(CLIP)[:, :-1]  # prompt + transcript
    for batch in batches:
        mel, tokens = one_mel.expand(batch, -1, -1).contiguous(), one_tokens.expand(batch, -1)
        enc = model.encode(mel)
        runs = {
            "encoder": (partial(model.encode, mel), {i: partial(m.model.encoder, mel) for i, m in hf.items()}),
            "decoder": (
                partial(model.decode, tokens, enc),
                {i: partial(m, encoder_outputs=(enc,), decoder_input_ids=tokens) for i, m in hf.items()},
            ),
            "full": (
                partial(model, mel, tokens),
                {i: partial(m, input_features=mel, decoder_input_ids=tokens) for i, m in hf.items()},
            ),
        }
        for part, (ours, refs) in runs.items():
            row = {"model": name, "part": part, "batch": batch}
            row["hooked_s"], row["hooked_peak_mib"] = timed(ours, repeats)
            for impl, ref in refs.items():
                row[f"hf_{impl}_s"], row[f"hf_{impl}_peak_mib"] = timed(ref, repeats)
                row[f"ratio_vs_{impl}"] = row["hooked_s"] / row[f"hf_{impl}_s"]
            rows.append(row)
            print(_brief(row), flush=True)
    return rows


def cache_rows(model: HookedWhisper, hf_eager, name: str, repeats: int) -> list[dict]:
    mel, tokens = model.to_mel(CLIP), model.generate(CLIP)[:, :-1]
    sizes: dict[str, float] = {}

    def ours(names_filter, label):
        _, cache = model.run_with_cache(mel, tokens, names_filter=names_filter)
        sizes[label] = sum(t.numel() * t.element_size() for t in cache.values()) / 2**20

    def reference():
        out = hf_eager(input_features=mel, decoder_input_ids=tokens, output_hidden_states=True, output_attentions=True)
        tensors = [
            *out.encoder_hidden_states,
            *out.decoder_hidden_states,
            *out.encoder_attentions,
            *out.decoder_attentions,
            *out.cross_attentions,
        ]
        sizes["hf"] = sum(t.numel() * t.element_size() for t in tensors) / 2**20

    ref_s, ref_peak = timed(reference, repeats)
    rows = []
    for label, names_filter in (("every hook", None), ("residual stream", lambda n: "resid" in n)):
        t, peak = timed(partial(ours, names_filter, label), repeats)
        row = {
            "model": name,
            "cache": label,
            "hooked_s": t,
            "hooked_peak_mib": peak,
            "cache_mib": sizes[label],
            "hf_outputs_s": ref_s,
            "hf_outputs_peak_mib": ref_peak,
            "hf_outputs_mib": sizes["hf"],
            "ratio_vs_hf_outputs": t / ref_s,
        }
        rows.append(row)
        print(_brief(row), flush=True)
    return rows


def resident_mib() -> float:
    """Resident memory now, after handing freed heap back to the system."""
    gc.collect()
    _LIBC.malloc_trim(0)
    return proc_status_mib("VmRSS")


def warm_torch_kernels() -> None:
    """Run the kernels a transcription uses (STFT, convolutions, attention, matmul) once on
    throwaway tensors, so that torch's own first-use caches (FFT plans, oneDNN primitives,
    thread scratch) are in place before a measurement: the same for any model."""
    import torch.nn.functional as F

    x = torch.randn(1, 80, 3000)
    torch.stft(torch.randn(480000), 400, 160, window=torch.hann_window(400), return_complex=True)
    F.gelu(F.conv1d(F.conv1d(x, torch.randn(64, 80, 3), padding=1), torch.randn(64, 64, 3), stride=2, padding=1))
    q = torch.randn(1, 2, 1500, 32)
    F.scaled_dot_product_attention(q, q, q)
    torch.randn(1500, 64) @ torch.randn(64, 256)


LOAD = """
import json, sys, time
sys.path.insert(0, {root!r})
import torch
from benchmarks.performance import CLIP, peak_extra_mib, resident_mib, warm_torch_kernels
from hooked_whisper import HookedWhisper
if {warm!r}:
    warm_torch_kernels()
before = resident_mib()
box = {{}}
start = time.perf_counter()
peak = peak_extra_mib(lambda: box.setdefault("m", HookedWhisper.from_pretrained({source!r})))
seconds = time.perf_counter() - start
size = sum(p.numel() * p.element_size() for p in box["m"].state_dict().values()) / 2**20
box["m"].generate(CLIP)
resident = resident_mib() - before
print(json.dumps({{"seconds": seconds, "peak_mib": peak, "model_mib": size, "resident_mib": resident}}))
"""


def _load_in_fresh_process(name: str, warm: bool) -> dict:
    root = str(Path(__file__).parent.parent)
    code = LOAD.format(root=root, source=name, warm=warm)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def loading_row(name: str) -> dict:
    """``from_pretrained`` time and peak, and resident memory after it plus one ``generate``,
    as a multiple of the parameter bytes: with torch cold (all of it counted) and with torch's
    kernels warmed on throwaway tensors first (what the model itself holds)."""
    cold, warm = _load_in_fresh_process(name, warm=False), _load_in_fresh_process(name, warm=True)
    row = {"model": name, **{k: cold[k] for k in ("seconds", "peak_mib", "model_mib")}}
    row["peak_over_size"] = cold["peak_mib"] / cold["model_mib"]
    row["resident_over_size"] = cold["resident_mib"] / cold["model_mib"]
    row["resident_over_size_warm_torch"] = warm["resident_mib"] / warm["model_mib"]
    print(_brief(row), flush=True)
    return row


def _brief(row: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


PARTS = ("loading", "forward", "cache", "decoding")


def main() -> None:
    from transformers import WhisperForConditionalGeneration

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which measurements to (re)run")
    parser.add_argument("--device", default="cpu", help="cuda for the GPU section (forward and cache parts)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--tag", default="", help="suffix for the result files, e.g. _gpu")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    ratio, ms = ".2f", ".3f"

    if "loading" in args.parts:
        write_results(
            "performance_loading",
            "from_pretrained of the bundled checkpoints (CTranslate2 fp16 files, loaded to fp32), each in a fresh "
            "process; peak = MiB above the memory in use before loading; resident = memory held after loading "
            "and one generate (freed heap returned first), over the parameter bytes; warm_torch = the same with "
            "torch's kernels (STFT, conv, attention) run once on throwaway tensors beforehand.",
            ["model", "seconds", "peak_mib", "model_mib", "peak_over_size", "resident_over_size"]
            + ["resident_over_size_warm_torch"],
            [loading_row(name) for name in args.models],
            {"seconds": ".2f", "peak_mib": ".0f", "model_mib": ".0f"}
            | dict.fromkeys(["peak_over_size", "resident_over_size", "resident_over_size_warm_torch"], ".2f"),
        )
    if "forward" in args.parts or "cache" in args.parts:
        forward, caches = [], []
        for name in args.models:
            model = HookedWhisper.from_pretrained(name, device=args.device, dtype=dtype)
            with tempfile.TemporaryDirectory() as tmp:
                folder = save_hf_folder(model, tmp)
                hf = {
                    impl: WhisperForConditionalGeneration.from_pretrained(folder, attn_implementation=impl)
                    .to(args.device, dtype)
                    .eval()
                    for impl in ("sdpa", "eager")
                }
            with torch.inference_mode():
                if "forward" in args.parts:
                    forward += forward_rows(model, hf, name, args.batch, args.repeats)
                if "cache" in args.parts:
                    caches += cache_rows(model, hf["eager"], name, args.repeats)
            del model, hf
        if forward:
            peaks = ("hooked_peak_mib", "hf_sdpa_peak_mib", "hf_eager_peak_mib")
            write_results(
                f"performance_forward{args.tag}",
                f"Forward pass without hooks, {args.dtype} on {args.device} ({machine()}); median of {args.repeats}; "
                "ratio = HookedWhisper / HF; peak = MiB above the memory in use before the run.",
                ["model", "part", "batch", "hooked_s", "hf_sdpa_s", "ratio_vs_sdpa", "hf_eager_s", "ratio_vs_eager"]
                + list(peaks),
                forward,
                {"hooked_s": ms, "hf_sdpa_s": ms, "hf_eager_s": ms, "ratio_vs_sdpa": ratio, "ratio_vs_eager": ratio}
                | dict.fromkeys(peaks, ".0f"),
            )
        if caches:
            sizes = ("cache_mib", "hf_outputs_mib", "hooked_peak_mib", "hf_outputs_peak_mib")
            write_results(
                f"performance_cache{args.tag}",
                "run_with_cache (batch 1, a real clip and its transcript) against HF eager returning every hidden "
                "state and attention map; cache sizes in MiB.",
                ["model", "cache", "hooked_s", "hf_outputs_s", "ratio_vs_hf_outputs", *sizes],
                caches,
                {"hooked_s": ms, "hf_outputs_s": ms, "ratio_vs_hf_outputs": ratio} | dict.fromkeys(sizes, ".0f"),
            )
    if "decoding" in args.parts:
        rows = [r for name in args.models for r in decoding.bench(name, args.repeats)]
        header = decoding.header(args.repeats)
        write_results("performance_decoding", header, decoding.COLUMNS, rows, decoding.FORMATS)
    tables = [(RESULTS / f"performance_{part}{tag}.md") for tag in ("", "_gpu") for part in PARTS]
    combined = "\n".join(t.read_text() for t in tables if t.is_file())
    (RESULTS / "performance.md").write_text(combined)
    print(combined)


if __name__ == "__main__":
    main()
