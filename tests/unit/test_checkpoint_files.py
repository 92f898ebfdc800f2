"""Files that are not checkpoints, or broken ones, are refused with the file named; unknown names
without the Hub say so."""

from __future__ import annotations

import shutil

import pytest
import torch

from hooked_whisper import HookedWhisper
from weights_conversion import CheckpointError, bundled_model


def test_truncated_model_bin(tmp_path):
    folder, parts = bundled_model("tiny.en")
    data = parts[0].read_bytes()
    (tmp_path / "model.bin").write_bytes(data[: len(data) // 3])
    shutil.copyfile(folder / "config.json", tmp_path / "config.json")
    with pytest.raises(ValueError, match="truncated"):
        HookedWhisper.from_pretrained(tmp_path)


def test_not_a_model_file(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\x01\x00\x00\x00garbage")
    with pytest.raises(ValueError, match="version 1 is not supported"):
        HookedWhisper.from_pretrained(tmp_path)
    bad_pt = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(2)}, bad_pt)
    with pytest.raises(CheckpointError, match="not an openai-whisper checkpoint"):
        HookedWhisper.from_pretrained(bad_pt)


def test_unknown_name_without_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="could not find weights for 'no-such-model-xyz'"):
        HookedWhisper.from_pretrained("no-such-model-xyz")
