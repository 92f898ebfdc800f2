"""Corpus-scale activation extraction: clips in (a manifest file or a list), a folder of
safetensors shards plus one index out. The same code runs in one process or in one process per
GPU under ``torchrun`` (``torch.distributed`` gives the rank, the world size and the barriers):
the manifest is cut into shards of ``shard_size`` rows, shard ``k`` belongs to rank
``k % world_size``, and each rank writes its own.

A shard is written to a temporary name and renamed when complete, so a crash leaves no shard
that looks finished; a rerun checks every shard it finds (its rows, its hooks) and redoes the
rest. ``settings.json`` records the model, hooks, pooling, dtype and the manifest's hash: a rerun
with other settings into the same folder is refused. Clips that fail to load are recorded with
the reason and skipped. ``index.json`` (written once every rank is done) maps each manifest row
to its shard and row, or to its error. ``ActivationStore.open(folder)`` reads it back lazily.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hooked_whisper.audio import SAMPLE_RATE, load_audio

INDEX, SETTINGS = "index.json", "settings.json"
ROWS_KEY = "__rows__"  # in each shard: the manifest rows it holds, in order


@dataclass
class Manifest:
    """Clips to extract, with optional labels and groups (speaker, video, source clip)."""

    clips: list  # paths or waveforms
    labels: list[str | None]
    groups: list[str | None]

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """A text file of paths (one per line), or a TSV whose header names a ``path`` column and
        optionally ``label`` and ``group`` (or ``language``/``video`` as in VoxLingua's
        ``clips.tsv``). Relative paths are relative to the manifest's folder."""
        path = Path(path)
        lines = path.read_text().splitlines()
        if not lines:
            raise ValueError(f"{path} is empty: a manifest lists one clip per line")
        root = path.parent
        if "\t" not in lines[0]:
            clips = [root / line.strip() for line in lines if line.strip()]
            return cls(clips, [None] * len(clips), [None] * len(clips))
        rows = list(csv.DictReader(lines, delimiter="\t"))
        if "path" not in rows[0]:
            raise ValueError(f"{path}: a TSV manifest needs a 'path' column; its columns are {list(rows[0])}")

        def column(*names: str) -> list:
            name = next((n for n in names if n in rows[0]), None)
            return [row[name] if name else None for row in rows]

        return cls([root / row["path"] for row in rows], column("label", "language"), column("group", "video"))

    def digest(self) -> str:
        """A hash of the clips (paths, or the samples of arrays), labels and groups."""
        h = hashlib.sha256()
        for clip, label, group in zip(self.clips, self.labels, self.groups):
            if isinstance(clip, (str, Path)):
                h.update(str(clip).encode())
            else:
                h.update(torch.as_tensor(clip).contiguous().numpy().tobytes())
            h.update(f"\0{label}\0{group}\n".encode())
        return h.hexdigest()


def distributed() -> tuple[int, int, bool]:
    """(rank, world size, whether this call started the process group). Under ``torchrun`` or
    ``accelerate launch`` (``WORLD_SIZE`` > 1) the group is started here if it is not yet:
    NCCL on GPUs, gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, False
    import torch.distributed as dist

    started = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        started = True
    return dist.get_rank(), dist.get_world_size(), started


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _check_settings(folder: Path, settings: dict, rank: int, world: int) -> None:
    """Rank 0 records the settings of a new folder; every rank refuses a folder made with others."""
    path = folder / SETTINGS
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(settings, indent=1))
            os.replace(tmp, path)
    _barrier(world)
    recorded = json.loads(path.read_text())
    changed = sorted(k for k in set(settings) | set(recorded) if settings.get(k) != recorded.get(k))
    if changed:
        detail = "; ".join(f"{k}: {recorded.get(k)!r} there, {settings.get(k)!r} now" for k in changed)
        raise ValueError(f"{folder} holds an extraction with other settings ({detail}): use a new folder")


def _shard_path(folder: Path, shard: int) -> Path:
    return folder / f"shard-{shard:05d}.safetensors"


def _read_shard(path: Path) -> tuple[list[int], dict[str, str], set[str]]:
    """(the manifest rows a shard holds, the rows that failed with their reasons, its keys)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        failed = json.loads((f.metadata() or {}).get("failed", "{}"))
        return f.get_tensor(ROWS_KEY).tolist(), failed, set(f.keys())


def _shard_is_complete(path: Path, rows: range, hooks: Sequence[str]) -> bool:
    """A shard counts as done only if it opens and holds every hook and exactly its rows (the
    ones that loaded; the rest are listed as failed in its metadata)."""
    if not path.is_file():
        return False
    try:
        held, failed, keys = _read_shard(path)
    except Exception:
        return False
    expected = [r for r in rows if str(r) not in failed]
    has_hooks = all(h in keys or any(k.startswith(f"{h}/") for k in keys) for h in hooks)
    return held == expected and has_hooks


def extract_to_folder(
    clips: Manifest,
    folder: str | Path,
    hooks: Sequence[str],
    pooled_batch: Callable[[list[torch.Tensor]], dict[str, list[torch.Tensor]]],
    settings: dict,
    batch_size: int = 8,
    shard_size: int = 256,
    dtype: torch.dtype = torch.float32,
    sample_rate: int | None = None,
    max_seconds: float | None = None,
    progress: bool = True,
) -> Path:
    """Extract ``clips`` into ``folder`` (see the module docstring); ``pooled_batch`` turns a
    list of 16 kHz waveforms into one pooled tensor per clip and hook. Returns the folder."""
    if shard_size % batch_size:
        raise ValueError(f"shard_size ({shard_size}) must be a multiple of batch_size ({batch_size})")
    folder = Path(folder)
    rank, world, started = distributed()
    n = len(clips.clips)
    settings = {**settings, "hooks": list(hooks), "dtype": str(dtype).removeprefix("torch."), "n_rows": n}
    settings |= {"shard_size": shard_size, "batch_size": batch_size, "manifest_sha256": clips.digest()}
    _check_settings(folder, settings, rank, world)
    mine = [s for s in range(math.ceil(n / shard_size)) if s % world == rank]
    todo = [s for s in mine if not _shard_is_complete(_shard_path(folder, s), _rows(s, shard_size, n), hooks)]
    total = sum(len(_rows(s, shard_size, n)) for s in todo)
    desc = f"rank {rank}/{world}" if world > 1 else "extracting activations"
    with tqdm(total=total, desc=desc, unit="clip", position=rank, disable=not progress) as bar:
        for shard in todo:
            _write_shard(
                clips, folder, shard, _rows(shard, shard_size, n), pooled_batch, batch_size, dtype, sample_rate,
                max_seconds, bar,
            )  # fmt: skip
    _barrier(world)
    if rank == 0:
        _write_index(folder, n, shard_size, clips)
    _barrier(world)
    if started:
        import torch.distributed as dist

        dist.destroy_process_group()
    return folder


def _rows(shard: int, shard_size: int, n: int) -> range:
    return range(shard * shard_size, min(n, (shard + 1) * shard_size))


def _write_shard(clips, folder, shard, rows, pooled_batch, batch_size, dtype, sample_rate, max_seconds, bar) -> None:
    from safetensors.torch import save_file

    kept: list[int] = []
    failed: dict[str, str] = {}
    pooled: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(rows), batch_size):
        waves, batch_rows = [], []
        for row in rows[start : start + batch_size]:
            try:
                clip = clips.clips[row]
                wave = load_audio(clip, None if isinstance(clip, (str, Path)) else sample_rate or SAMPLE_RATE)
                if max_seconds is not None and wave.shape[0] > max_seconds * SAMPLE_RATE:
                    raise ValueError(f"lasts {wave.shape[0] / SAMPLE_RATE:.1f} s, over the {max_seconds:.0f} s window")
                if wave.shape[0] == 0:
                    raise ValueError("holds no samples")
                waves.append(wave)
                batch_rows.append(row)
            except Exception as err:  # recorded in the index, not fatal
                failed[str(row)] = f"{type(err).__name__}: {err}"
        if waves:
            for hook, values in pooled_batch(waves).items():
                pooled.setdefault(hook, []).extend(v.detach().to("cpu", dtype) for v in values)
            kept += batch_rows
        bar.update(len(rows[start : start + batch_size]))
    tensors: dict[str, torch.Tensor] = {ROWS_KEY: torch.tensor(kept, dtype=torch.int64)}
    for hook, values in pooled.items():
        if len({tuple(v.shape) for v in values}) == 1:
            tensors[hook] = torch.stack(values).contiguous()
        else:  # pooling="none": one tensor per clip
            tensors.update({f"{hook}/{row}": v.contiguous() for row, v in zip(kept, values)})
    path = _shard_path(folder, shard)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"failed": json.dumps(failed)})
    os.replace(tmp, path)  # only complete shards carry the final name


def _write_index(folder: Path, n: int, shard_size: int, clips: Manifest) -> None:
    entries: list[dict] = []
    shards = []
    for shard in range(math.ceil(n / shard_size)):
        path = _shard_path(folder, shard)
        held, failed, _ = _read_shard(path)
        shards.append(path.name)
        position = {row: i for i, row in enumerate(held)}
        for row in _rows(shard, shard_size, n):
            entry: dict = {"shard": shard, "row": position[row]} if row in position else {"error": failed[str(row)]}
            clip = clips.clips[row]
            entry |= {"clip": str(clip) if isinstance(clip, (str, Path)) else f"array {row}"}
            entry |= {"label": clips.labels[row], "group": clips.groups[row]}
            entries.append(entry)
    settings = json.loads((folder / SETTINGS).read_text())
    tmp = folder / (INDEX + ".tmp")
    tmp.write_text(json.dumps({**settings, "shards": shards, "rows": entries}, indent=1))
    os.replace(tmp, folder / INDEX)
