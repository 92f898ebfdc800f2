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


def test_a_ctranslate2_config_with_wrong_types_is_refused_at_load(tmp_path):
    import json

    from weights_conversion.ctranslate2 import read_ctranslate2_config

    good = {"suppress_ids": [1, 2], "suppress_ids_begin": [220], "alignment_heads": [[2, 3], [3, 0]]}
    (tmp_path / "config.json").write_text(json.dumps(good))
    read = read_ctranslate2_config(tmp_path)
    assert read["suppress_tokens"] == [1, 2] and read["alignment_heads"] == [[2, 3], [3, 0]]
    for key, bad, what in [
        ("suppress_ids", "1,2", "a list of token ids"),
        ("suppress_ids_begin", [220.5], "a list of token ids"),
        ("alignment_heads", [[2, 3, 4]], r"a list of \[layer, head\] pairs"),
        ("alignment_heads", [["2", "3"]], r"a list of \[layer, head\] pairs"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps(good | {key: bad}))
        with pytest.raises(ValueError, match=rf"config.json: {key} must be {what}.*, got"):
            read_ctranslate2_config(tmp_path)


def test_a_whisper_folder_given_to_qwen2_audio_is_named_as_such(tmp_path):
    import json

    from hooked_whisper import HookedQwen2Audio

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper", "d_model": 384}))
    with pytest.raises(
        CheckpointError, match=r"not a Qwen2-Audio checkpoint.*model_type 'whisper'.*HookedWhisper.from_pretrained"
    ):
        HookedQwen2Audio.from_pretrained(tmp_path)
