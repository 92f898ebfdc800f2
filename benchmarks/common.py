"""Helpers shared by the benchmark scripts: timing, peak memory, and writing results."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
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


def alternated_times(fns: dict[str, callable], repeats: int, warm_up: bool = True) -> dict[str, float]:
    """Median wall time of each of ``fns`` over ``repeats`` rounds, the functions taking turns
    within each round (after a warm-up round), so that a machine's drift in speed (clocks,
    other load) falls on all of them alike and their ratios stay fair."""
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else lambda: None
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + warm_up):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if round_ >= warm_up:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


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
    table = markdown_table(header, columns, rows, formats)
    (RESULTS / f"{name}.md").write_text(table)
    return table


def markdown_table(header: str, columns: list[str], rows: list[dict], formats: dict[str, str]) -> str:
    """``header``, then a Markdown table of ``columns`` (``formats`` per column; '-' where missing)."""
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = ["-" if row.get(c) is None else format(row[c], formats.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def debian_files(folder: Path, packages: list[str]) -> Path:
    """Debian ``packages`` fetched with ``apt-get download`` into ``folder`` (once) and unpacked
    there; returns the folder they unpacked into."""
    unpacked = folder / "x"
    if not unpacked.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["apt-get", "download", *packages], cwd=folder, check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as err:
            hint = f"could not fetch {packages} with apt-get download ({err}); run it by hand into {folder}"
            raise SystemExit(hint) from err
        for deb in folder.glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    return unpacked
