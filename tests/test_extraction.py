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
from tests.conftest import CLIPS, DATA

BIN = Path(sys.executable).parent
HOOKS = ["encoder_blocks.1.hook_resid_post", "decoder_blocks.2.hook_resid_post"]
# torchrun gives each process one thread; the single-process runs use one too, so that the
# kernels, and so the floats, are the same.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Eight clips with labels (the card-game recordings against the rest) and groups (one per
    file), and one row whose file does not exist."""
    folder = tmp_path_factory.mktemp("manifest")
    rows = ["path\tlabel\tgroup"]
    for clip in CLIPS[:8]:
        kind = "cards" if clip.startswith("cards") else "other"
        rows.append(f"{DATA / clip}\t{kind}\t{clip}")
    rows.insert(4, "missing.wav\tcards\tnone")
    path = folder / "clips.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


def command(manifest: Path, out: Path, hooks=HOOKS) -> list[str]:
    """The README's command (with the model and hooks of this test)."""
    args = ["extract", str(manifest), "--model", "tiny.en", "--hooks", *hooks, "--out", str(out)]
    return [str(BIN / "hooked-whisper"), *args, "--batch-size", "2", "--shard-size", "2"]


@pytest.fixture(scope="module")
def single(manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "acts"
    subprocess.run(command(manifest, out), env=ENV, check=True, capture_output=True)
    return out


def test_two_processes_equal_one(manifest, single, tmp_path):
    out = tmp_path / "acts"
    torchrun = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--no-python"]
    done = subprocess.run(torchrun + command(manifest, out), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = ActivationStore.open(single), ActivationStore.open(out)
    for hook in HOOKS:
        assert one[hook].shape == (8, 384) and torch.equal(one[hook], two[hook]), hook
    assert (
        json.loads((single / "index.json").read_text())["rows"] == json.loads((out / "index.json").read_text())["rows"]
    )
    missing = str(manifest.parent / "missing.wav")
    assert list(one.failed) == [missing] and "no audio file" in one.failed[missing]
    assert one.labels[:4] == ["cards"] * 4 and len(one.labels) == one.n == 8
    probes = [train_probes(store, store.labels, groups=store.groups, folds=2, progress=False) for store in (one, two)]
    assert [r.accuracy for r in probes[0].results] == [r.accuracy for r in probes[1].results]


def test_a_killed_run_resumes_without_redoing_finished_shards(manifest, single, tmp_path):
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
    (out / "shard-00004.safetensors.tmp").write_bytes(b"half a shard")  # what a crash mid-write leaves
    subprocess.run(command(manifest, out), env=ENV, check=True, capture_output=True)
    for name, mtime in done_before.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was recomputed"
    resumed, whole = ActivationStore.open(out), ActivationStore.open(single)
    for hook in HOOKS:
        assert torch.equal(resumed[hook], whole[hook])
    assert len(list(out.glob("shard-*.safetensors"))) == 5


def test_other_settings_into_the_same_folder_are_refused(manifest, single):
    done = subprocess.run(command(manifest, single, hooks=HOOKS[:1]), env=ENV, capture_output=True, text=True)
    assert done.returncode == 1
    assert "other settings" in done.stderr and "hooks" in done.stderr and "Traceback" not in done.stderr
