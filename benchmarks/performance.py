"""The performance matrix in one command: HookedWhisper against Hugging Face (and, for greedy
transcription, openai-whisper and CTranslate2), side by side in one process on the same inputs.

1. encoder, decoder (teacher-forced over a real transcript) and full forward, no hooks, against
   HF sdpa and eager, batch 1/4/16;
2. ``run_with_cache`` of every hook, and of the residual stream only, against HF eager with
   ``output_hidden_states`` and ``output_attentions``; the size of each cache;
3. greedy transcription (``benchmarks/decoding.py``);
4. peak memory of each run above (the process's peak resident memory is reset before each run,
   Linux ``/proc/self/clear_refs``; reported as MiB above the memory in use before it);
5. ``from_pretrained`` time and peak memory, and the memory held after one ``generate``, in a
   fresh process per model (and one for Hugging Face loading the same weights), against the
   model's size.

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
    one_mel = model.to_mel(CLIP).mel
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
    mel, tokens = model.to_mel(CLIP).mel, model.generate(CLIP)[:, :-1]
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


def library_mib() -> float:
    """Resident MiB of the shared libraries mapped into this process (``/proc/self/smaps``)."""
    total, library = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header: address range ... path
                parts = line.split()
                library = len(parts) > 5 and ".so" in Path(parts[5]).name
            elif first == "Rss:" and library:
                total += int(line.split()[1])
    return total / 1024


def parameter_mib(model: torch.nn.Module) -> float:
    """MiB of the model's parameters and buffers, each storage once (tied weights share one)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in model.state_dict().values()}
    return sum(storages.values()) / 2**20


def resident_mib() -> float:
    """Resident memory now, after handing freed heap back to the system."""
    gc.collect()
    # Later collections skip what survived this one: in a process holding many objects (a test
    # worker, a notebook) a full collection per measurement costs a fifth of a second or more.
    gc.freeze()
    _LIBC.malloc_trim(0)
    return proc_status_mib("VmRSS")


LOAD = """
import json, sys, time
sys.path.insert(0, {root!r})
import torch
from benchmarks.performance import CLIP, library_mib, parameter_mib, peak_extra_mib, resident_mib
from hooked_whisper import HookedWhisper, load_audio
from hooked_whisper.audio import log_mel_spectrogram, pad_or_trim
mel = log_mel_spectrogram(pad_or_trim(load_audio(CLIP)))[None]  # the same input for both, outside the count
if {hf!r}:
    from transformers import WhisperForConditionalGeneration

    load = lambda: WhisperForConditionalGeneration.from_pretrained({source!r}).eval()
else:
    load = lambda: HookedWhisper.from_pretrained({source!r})
before, libraries_before = resident_mib(), library_mib()
box = {{}}
start = time.perf_counter()
peak = peak_extra_mib(lambda: box.setdefault("m", load()))
seconds = time.perf_counter() - start
with torch.no_grad():
    box["m"].generate(mel)  # greedy, in both
resident = resident_mib() - before
held = resident - (library_mib() - libraries_before)
size = parameter_mib(box["m"])
row = {{"seconds": seconds, "peak_mib": peak, "model_mib": size, "resident_mib": resident, "held_mib": held}}
print(json.dumps(row))
"""


def _load_in_fresh_process(source: str, hf: bool = False) -> dict:
    root = str(Path(__file__).parent.parent)
    code = LOAD.format(root=root, source=source, hf=hf)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def loading_row(name: str) -> dict:
    """``from_pretrained`` time and peak, and memory after it plus one greedy ``generate``, as a
    multiple of the parameter bytes, for HookedWhisper and for Hugging Face loading the same
    weights (an exported folder), each in a fresh process. ``resident``: all of the process's
    resident memory; ``held``: the same without the pages of shared libraries (torch's kernels,
    mapped in by their first use, shared with every process using torch): the tensors, heap and
    mapped weight files the model itself holds."""
    ours = _load_in_fresh_process(name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_hf_folder(HookedWhisper.from_pretrained(name), tmp)
        ref = _load_in_fresh_process(str(folder), hf=True)
    row = {"model": name, **{k: ours[k] for k in ("seconds", "peak_mib", "model_mib")}, "hf_seconds": ref["seconds"]}
    row["peak_over_size"] = ours["peak_mib"] / ours["model_mib"]
    row["held_over_size"] = ours["held_mib"] / ours["model_mib"]
    row["hf_held_over_size"] = ref["held_mib"] / ref["model_mib"]
    row["resident_over_size"] = ours["resident_mib"] / ours["model_mib"]
    row["hf_resident_over_size"] = ref["resident_mib"] / ref["model_mib"]
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
        over = ["peak_over_size", "held_over_size", "hf_held_over_size", "resident_over_size", "hf_resident_over_size"]
        write_results(
            "performance_loading",
            "from_pretrained of the bundled checkpoints (CTranslate2 fp16 files, loaded to fp32) against Hugging "
            "Face loading the same weights (an exported folder), each in a fresh process; peak = MiB above the "
            "memory in use before loading; after loading and one greedy generate (freed heap returned first), "
            "over the parameter bytes (each tensor once; a tied embedding is one tensor): resident = the process's "
            "resident memory, held = the same without the pages of shared libraries (torch's kernels, mapped in "
            "by their first use).",
            ["model", "seconds", "hf_seconds", "peak_mib", "model_mib", *over],
            [loading_row(name) for name in args.models],
            {"seconds": ".2f", "hf_seconds": ".2f", "peak_mib": ".0f", "model_mib": ".0f"} | dict.fromkeys(over, ".2f"),
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
