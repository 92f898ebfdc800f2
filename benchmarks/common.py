"""Helpers shared by the benchmark scripts: timing, peak memory, and writing results."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).parent.parent / "tests" / "data"


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up run (GPU work is
    waited for)."""
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else lambda: None
    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def proc_status_mib(field: str) -> float:
    """A memory field of ``/proc/self/status`` (VmRSS, VmHWM) in MiB (Linux; NaN elsewhere)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def write_results(name: str, header: str, columns: list[str], rows: list[dict], formats: dict[str, str]) -> str:
    """Write ``results/{name}.json`` and ``results/{name}.md`` (a table of ``columns``)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [format(row[c], formats.get(c, "")) if row.get(c) is not None else "-" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (RESULTS / f"{name}.md").write_text(table)
    return table
