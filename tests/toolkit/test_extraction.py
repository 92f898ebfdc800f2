"""Corpus-scale extraction through the command line, as a user runs it: one process and two
(``torchrun``, gloo on the CPU) give the same shards, index and probes; a run killed midway
resumes without redoing finished shards; other settings into the same folder are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hooked_whisper.probing import ActivationStore, train_probes
from tests.support import CLIPS, DATA

BIN = Path(sys.executable).parent
HOOKS = ["encoder_blocks.1.hook_resid_post", "decoder_blocks.2.hook_resid_post"]
# torchrun gives each process one thread; the single-process runs use one too, so that the
# kernels, and so the floats, are the same.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Five clips with labels (card-game recordings against audiobook ones) and groups (one per
    file), and one row whose file does not exist: three shards of two rows."""
    folder = tmp_path_factory.mktemp("manifest")
    rows = ["path\tlabel\tgroup"]
    for clip in CLIPS[2:5] + CLIPS[6:8]:
        kind = "cards" if clip.startswith("cards") else "other"
        rows.append(f"{DATA / clip}\t{kind}\t{clip}")
    rows.insert(3, "missing.wav\tcards\tnone")
    path = folder / "clips.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


def command(manifest: Path, out: Path, hooks=HOOKS) -> list[str]:
    """The README's command (with the model and hooks of this test)."""
    args = ["extract", str(manifest), "--model", "tiny.en", "--hooks", *hooks, "--out", str(out)]
    return [str(BIN / "hooked-whisper"), *args, "--batch-size", "2", "--shard-size", "2"]


def extract_here(model, manifest: Path, out: Path) -> None:
    """What the command does, in this process (one thread, like each torchrun process)."""
    from hooked_whisper.extraction import Manifest
    from hooked_whisper.probing import extract_activations

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = dict(decoder_pooling="prompt_end", batch_size=2, shard_size=2, progress=False)
        extract_activations(model, Manifest.read(manifest), HOOKS, out_dir=out, **settings)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single(manifest, tmp_path_factory, tiny_en) -> Path:
    out = tmp_path_factory.mktemp("single") / "acts"
    extract_here(tiny_en, manifest, out)
    return out


def test_two_processes_equal_one(manifest, single, tmp_path):
    out = tmp_path / "acts"
    torchrun = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--no-python"]
    done = subprocess.run(torchrun + command(manifest, out), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = ActivationStore.open(single), ActivationStore.open(out)
    for hook in HOOKS:
        assert one[hook].shape == (5, 384) and torch.equal(one[hook], two[hook]), hook
    assert (
        json.loads((single / "index.json").read_text())["rows"] == json.loads((out / "index.json").read_text())["rows"]
    )
    missing = str(manifest.parent / "missing.wav")
    assert list(one.failed) == [missing] and "no audio file" in one.failed[missing]
    assert one.labels == ["cards"] * 3 + ["other"] * 2 and one.n == 5
    probes = [train_probes(store, store.labels, groups=store.groups, folds=2, progress=False) for store in (one, two)]
    assert [r.accuracy for r in probes[0].results] == [r.accuracy for r in probes[1].results]


def test_a_killed_run_resumes_without_redoing_finished_shards(manifest, single, tmp_path, tiny_en):
    out = tmp_path / "acts"
    run = subprocess.Popen(command(manifest, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "shard-00000.safetensors"
    deadline = time.monotonic() + 120
    while not first.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    run.kill()
    run.wait()
    assert first.exists() and not (out / "index.json").exists(), "the run should have stopped after its first shard"
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors")}
    (out / "shard-00002.safetensors.tmp").write_bytes(b"half a shard")  # what a crash mid-write leaves
    extract_here(tiny_en, manifest, out)  # the rerun (the same settings, so it resumes)
    for name, mtime in done_before.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was recomputed"
    resumed, whole = ActivationStore.open(out), ActivationStore.open(single)
    for hook in HOOKS:
        assert torch.equal(resumed[hook], whole[hook])
    assert len(list(out.glob("shard-*.safetensors"))) == 3


def test_other_settings_into_the_same_folder_are_refused(manifest, single, tiny_en):
    from hooked_whisper.extraction import Manifest
    from hooked_whisper.probing import extract_activations

    with pytest.raises(ValueError, match=r"other settings \(.*hooks: \['encoder_blocks.1"):
        extract_activations(tiny_en, Manifest.read(manifest), HOOKS[:1], out_dir=single, batch_size=2, shard_size=2)
