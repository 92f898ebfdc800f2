"""Corpus-scale extraction throughput and memory: clips per second and peak resident memory per
rank, for the in-memory path, the sharded path in one process, and the same command under
``torchrun`` with 1 and 2 processes (gloo on the CPU, NCCL on GPUs).

    python benchmarks/extraction.py --data ../shared/data/voxlingua107-dev-subset --clips 64
    python benchmarks/extraction.py --data DIR --nproc 1 2 4 8 --device cuda --model base   # a GPU machine

On a 2-core machine two processes share the same cores: the figure shows the distributed
path's overhead, not a speed-up. Writes ``results/extraction.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from benchmarks.common import proc_status_mib, write_results  # noqa: E402

HOOKS = ["encoder_blocks.3.hook_resid_post", "decoder_blocks.3.hook_resid_post"]


def worker(args: argparse.Namespace) -> None:
    """One rank: load the model, extract, write this rank's timings and peak memory."""
    from hooked_whisper import HookedWhisper
    from hooked_whisper.extraction import Manifest
    from hooked_whisper.probing import extract_activations

    rank = int(os.environ.get("RANK", "0"))
    device = args.device
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    manifest = Manifest.read(args.manifest)
    model = HookedWhisper.from_pretrained(args.model, device=device)
    start = time.perf_counter()
    extract_activations(
        model, manifest, args.hooks, out_dir=args.out or None, batch_size=args.batch_size,
        shard_size=args.shard_size, decoder_pooling="prompt_end", progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    stats = {"rank": rank, "threads": torch.get_num_threads(), "seconds": seconds, "peak_mib": proc_status_mib("VmHWM")}
    Path(args.stats, f"rank{rank}.json").write_text(json.dumps(stats))


def manifest_of(data: Path, n: int, folder: Path) -> Path:
    """The first ``n`` clips of a folder with ``clips.tsv`` (or of its audio files)."""
    data = data.resolve()
    tsv = data / "clips.tsv"
    if tsv.is_file():
        lines = tsv.read_text().splitlines()
        head, rows = lines[0], lines[1 : n + 1]
        text = "\n".join([head] + [str(data / r.split("\t")[0]) + "\t" + r.split("\t", 1)[1] for r in rows])
    else:
        text = "\n".join(str(p) for p in sorted(data.glob("*.wav"))[:n])
    path = folder / "manifest.tsv"
    path.write_text(text + "\n")
    return path


def run(mode: str, nproc: int, args: argparse.Namespace, manifest: Path, n_clips: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp, "stats")
        stats.mkdir()
        out = "" if mode == "in memory" else str(Path(tmp, "acts"))
        me = [sys.executable, __file__, "--worker", "--manifest", str(manifest), "--stats", str(stats)]
        me += ["--model", args.model, "--device", args.device, "--out", out, "--hooks", *args.hooks]
        me += ["--batch-size", str(args.batch_size), "--shard-size", str(args.shard_size)]
        if mode == "torchrun":
            me = [str(Path(sys.executable).parent / "torchrun"), f"--nproc-per-node={nproc}", "--no-python", *me]
        subprocess.run(me, check=True, capture_output=True)
        ranks = [json.loads(p.read_text()) for p in sorted(stats.glob("rank*.json"))]
    slowest = max(r["seconds"] for r in ranks)
    row = {"mode": mode, "processes": nproc, "threads_per_process": ranks[0]["threads"], "clips": n_clips}
    row |= {
        "seconds": slowest,
        "clips_per_s": n_clips / slowest,
        "peak_mib_per_rank": max(r["peak_mib"] for r in ranks),
    }
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path(__file__).parent.parent / "tests" / "data")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--hooks", nargs="+", default=HOOKS)
    parser.add_argument("--nproc", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--stats", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = manifest_of(args.data, args.clips, Path(tmp))
        n = len(manifest.read_text().splitlines()) - (1 if "\t" in manifest.read_text() else 0)
        rows = [run("in memory", 1, args, manifest, n), run("sharded", 1, args, manifest, n)]
        rows += [run("torchrun", k, args, manifest, n) for k in args.nproc]
    write_results(
        "extraction",
        f"Extraction of {n} clips from {args.data.name} ({args.model}, hooks {', '.join(args.hooks)}; "
        f"{args.device}); seconds from model loaded to index written, slowest rank; peak = the largest "
        "resident size of any rank.",
        ["mode", "processes", "threads_per_process", "clips", "seconds", "clips_per_s", "peak_mib_per_rank"],
        rows,
        {"seconds": ".1f", "clips_per_s": ".2f", "peak_mib_per_rank": ".0f"},
    )


if __name__ == "__main__":
    main()
