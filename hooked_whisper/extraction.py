"""Corpus-scale activation extraction: clips in (a manifest file or a list), a folder of
safetensors shards plus one index out. The same code runs in one process or in one process per
GPU under ``torchrun`` (``torch.distributed`` gives the rank, the world size and the barriers):
the manifest is cut into shards of ``shard_size`` rows, shard ``k`` belongs to rank
``k % world_size``, and each rank writes its own.

A shard is written to a temporary name and renamed when complete, so a crash leaves no shard
that looks finished. Each shard records what it was computed from: a hash of its clips' bytes
(file contents, or an array's samples with its sample rate), a fingerprint of the model's
weights, the hooks that were active, the options, and a SHA-256 of each tensor it holds. A rerun
keeps a shard only if all of these match and its tensors pass their checksums, recomputes the
rest and says how many and why (a warning); reading a shard back checks its checksums too.

``settings.json`` records the model, hooks, pooling, dtype and the manifest's hash: a rerun with
other settings into the same folder is refused. Clips that fail to load are recorded with the
reason and skipped (an extraction where every clip fails is an error). ``index.json`` (written
once every rank is done) maps each manifest row to its shard and row, or to its error.
``ActivationStore.open(folder)`` reads it back lazily.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hooked_whisper.audio import SAMPLE_RATE, array_rate, load_audio

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


def _open_shard(path: Path):
    """``safe_open`` on a shard, with a clear error for a file that is not a whole shard."""
    from safetensors import safe_open

    try:
        return safe_open(str(path), "pt")
    except Exception as err:  # SafetensorError for a truncated or overwritten file
        raise ValueError(
            f"{path} is not a readable safetensors shard ({err}); it is truncated or damaged: delete it "
            "and rerun the extraction into this folder to recompute it"
        ) from err


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _read_shard(path: Path, verify: bool = False) -> tuple[list[int], dict[str, str], set[str], dict[str, str]]:
    """(the manifest rows a shard holds, the rows that failed with their reasons, its keys, what
    it records of its inputs). With ``verify`` every tensor is checked against its checksum."""
    with _open_shard(path) as f:
        metadata = f.metadata() or {}
        failed = json.loads(metadata.get("failed", "{}"))
        keys = set(f.keys())
        rows = f.get_tensor(ROWS_KEY).tolist() if ROWS_KEY in keys else []
        if verify:
            for key in sorted(keys):
                check_tensor(path, key, f.get_tensor(key), metadata)
        return rows, failed, keys, metadata


def check_tensor(path: Path, key: str, tensor: torch.Tensor, metadata: dict[str, str]) -> None:
    """Refuse a tensor read from a shard whose bytes differ from those written."""
    if "sha256" not in metadata:  # written before shards carried checksums: readable, not verifiable
        warnings.warn(
            f"{path} was written without checksums (an older version): its data is not verified", stacklevel=3
        )
        return
    checksums = json.loads(metadata["sha256"])
    if key not in checksums:
        raise ValueError(
            f"{path} records no checksum for {key!r} (written by an older version, or damaged): rerun the "
            "extraction into a new folder"
        )
    if tensor_digest(tensor) != checksums[key]:
        raise ValueError(
            f"{path} fails its checksum at {key!r}: its bytes changed after it was written (disk or copy "
            "damage); rerun the extraction into this folder to recompute it"
        )


def _shard_status(path: Path, rows: range, hooks: Sequence[str], state: dict[str, str]) -> str | None:
    """None if the shard at ``path`` is complete and was computed from ``state`` (its inputs,
    the model's weights, the active hooks, the options), else why it must be (re)computed.
    A shard counts as complete only if it opens, passes its checksums, and holds every hook and
    exactly its rows (the ones that loaded; the rest are listed as failed in its metadata)."""
    if not path.is_file():
        return "missing"
    try:
        held, failed, keys, metadata = _read_shard(path)
        if "sha256" not in metadata:
            return "written by an older version"
        _read_shard(path, verify=True)
    except Exception:
        return "unreadable or failing its checksum"
    recorded = [("inputs", "audio changed"), ("model", "model weights changed"), ("hooks", "active hooks changed")]
    for key, why in [*recorded, ("options", "options changed")]:
        if metadata.get(key) != state[key]:
            return why
    expected = [r for r in rows if str(r) not in failed]
    has_hooks = all(h in keys or any(k.startswith(f"{h}/") for k in keys) for h in hooks)
    return None if held == expected and has_hooks else "incomplete"


def clip_digest(clip, sample_rate: int | None) -> str:
    """A hash of what one clip is: a file's bytes (so a file replaced under the same path counts
    as changed), or an array's dtype, shape and samples with its sample rate."""
    h = hashlib.sha256()
    if isinstance(clip, (str, Path)):
        path = Path(clip)
        if not path.is_file():
            return "missing"
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    return hashlib.sha256(f"{tensor_digest(torch.as_tensor(clip))}@{sample_rate}".encode()).hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter and persistent buffer (name, dtype, shape, bytes): any weight
    edit changes it. Computed once per extraction run."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}\0{tensor_digest(t)}\n".encode())
    return h.hexdigest()


def active_hooks(model: torch.nn.Module) -> list[str]:
    """The forward hooks attached to the model's hook points, as ``"name: function"``."""
    out = []
    for name, point in getattr(model, "hook_dict", {}).items():
        handles = getattr(point, "fwd_hooks", [])
        fns = [getattr(h, "user_hook", None) for h in handles] or list(point._forward_hooks.values())
        out += [f"{name}: {getattr(fn, '__name__', repr(fn))}" for fn in fns]
        out += [f"{name}: (a torch hook)"] * max(0, len(point._forward_hooks) - len(fns))
    return sorted(out)


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
    model_state: dict[str, str] | None = None,
) -> Path:
    """Extract ``clips`` into ``folder`` (see the module docstring); ``pooled_batch`` turns a
    list of 16 kHz waveforms into one pooled tensor per clip and hook. ``model_state`` records
    what the activations depend on besides the clips: ``{"model": model_fingerprint(model),
    "hooks": json of active_hooks(model)}``. Returns the folder."""
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a whole number of clips, 1 or more; got {value!r}")
    if shard_size % batch_size:
        raise ValueError(f"shard_size ({shard_size}) must be a multiple of batch_size ({batch_size})")
    folder = Path(folder)
    rank, world, started = distributed()
    n = len(clips.clips)
    settings = {**settings, "hooks": list(hooks), "dtype": str(dtype).removeprefix("torch."), "n_rows": n}
    settings |= {"shard_size": shard_size, "batch_size": batch_size, "manifest_sha256": clips.digest()}
    _check_settings(folder, settings, rank, world)
    options = json.dumps({k: settings[k] for k in sorted(settings) if k != "manifest_sha256"}, sort_keys=True)
    base = {"model": "", "hooks": "[]", **(model_state or {}), "options": options}
    mine = [s for s in range(math.ceil(n / shard_size)) if s % world == rank]
    rate = None if all(isinstance(c, (str, Path)) for c in clips.clips) else array_rate(sample_rate)
    states = {s: {**base, "inputs": _inputs_digest(clips, _rows(s, shard_size, n), rate)} for s in mine}
    status = {s: _shard_status(_shard_path(folder, s), _rows(s, shard_size, n), hooks, states[s]) for s in mine}
    todo = [s for s in mine if status[s] is not None]
    redo = [status[s] for s in todo if status[s] != "missing"]
    if redo:
        reasons = ", ".join(f"{redo.count(r)} {r}" for r in sorted(set(redo)))
        warnings.warn(
            f"{folder}: recomputing {len(redo)} of the {len(mine)} shards found there ({reasons})", stacklevel=3
        )
    total = sum(len(_rows(s, shard_size, n)) for s in todo)
    desc = f"rank {rank}/{world}" if world > 1 else "extracting activations"
    with tqdm(total=total, desc=desc, unit="clip", position=rank, disable=not progress) as bar:
        for shard in todo:
            _write_shard(
                clips, folder, shard, _rows(shard, shard_size, n), pooled_batch, batch_size, dtype, rate,
                max_seconds, bar, states[shard],
            )  # fmt: skip
    _barrier(world)
    if rank == 0:
        _write_index(folder, n, shard_size, clips)
    _barrier(world)
    if started:
        import torch.distributed as dist

        dist.destroy_process_group()
    rows = json.loads((folder / INDEX).read_text())["rows"]
    if all("error" in row for row in rows):
        reasons = sorted({row["error"] for row in rows})
        raise ValueError(
            f"every clip failed ({len(rows)} of {len(rows)}), so {folder} holds no activations; the "
            f"reasons: {'; '.join(reasons[:3])}{' ...' if len(reasons) > 3 else ''} (all listed in {folder / INDEX})"
        )
    return folder


def _inputs_digest(clips: Manifest, rows: range, sample_rate: int | None) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(f"{row}:{clip_digest(clips.clips[row], sample_rate)}\n".encode())  # a file's rate is its own
    return h.hexdigest()


def _rows(shard: int, shard_size: int, n: int) -> range:
    return range(shard * shard_size, min(n, (shard + 1) * shard_size))


def _write_shard(
    clips, folder, shard, rows, pooled_batch, batch_size, dtype, sample_rate, max_seconds, bar, state
) -> None:
    from safetensors.torch import save_file

    kept: list[int] = []
    failed: dict[str, str] = {}
    pooled: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(rows), batch_size):
        waves, batch_rows = [], []
        for row in rows[start : start + batch_size]:
            try:
                clip = clips.clips[row]
                wave = load_audio(clip, None if isinstance(clip, (str, Path)) else sample_rate)
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
    checksums = json.dumps({key: tensor_digest(t) for key, t in tensors.items()})
    save_file(tensors, str(tmp), metadata={"failed": json.dumps(failed), "sha256": checksums, **state})
    os.replace(tmp, path)  # only complete shards carry the final name


def _write_index(folder: Path, n: int, shard_size: int, clips: Manifest) -> None:
    entries: list[dict] = []
    shards = []
    for shard in range(math.ceil(n / shard_size)):
        path = _shard_path(folder, shard)
        held, failed, _, _ = _read_shard(path)
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
