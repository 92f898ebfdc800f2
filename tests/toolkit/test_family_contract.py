"""The calls both families share mean the same thing on both: text out of a batch of rows, audio
in as a log-mel, and a generated answer read back teacher-forced."""

from __future__ import annotations

import pytest
import torch

from tests.toolkit.test_families import tiny_qwen2_audio, tiny_whisper


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return tiny_qwen2_audio(tmp_path_factory.mktemp("qwen2_audio_contract"))


@pytest.mark.parametrize("family", ["whisper", "qwen2_audio"])
def test_to_string_of_a_batch_is_one_string_per_row(family, qwen):
    model = tiny_whisper() if family == "whisper" else qwen
    rows = torch.tensor([model.to_tokens("the audio.")[0].tolist()] * 2)
    assert model.to_string(rows) == [model.to_string(rows[0])] * 2
