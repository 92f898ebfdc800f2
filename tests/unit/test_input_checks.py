"""The input checks both families share (``hooked_whisper.inputs``): each refuses what it should
in one line and passes what it should."""

from __future__ import annotations

import pytest
import torch

from hooked_whisper.audio import N_SAMPLES
from hooked_whisper.inputs import check_tokens, check_window, rows_per_clip


def text_to_tokens(text: str) -> torch.Tensor:
    return torch.tensor([[len(word) for word in text.split()]])


def test_tokens_are_checked_and_laid_out_one_row_per_clip():
    cpu = torch.device("cpu")
    assert check_tokens([1, 2, 3], 10, cpu, text_to_tokens).tolist() == [[1, 2, 3]]
    assert check_tokens("ab cde", 10, cpu, text_to_tokens).tolist() == [[2, 3]]
    with pytest.raises(TypeError, match="tokens must be integer ids, got torch.float32"):
        check_tokens(torch.zeros(1, 2), 10, cpu, text_to_tokens)
    with pytest.raises(ValueError, match=r"token id 10 is outside this model's vocabulary of 10 ids \(0..9\)"):
        check_tokens([1, 10], 10, cpu, text_to_tokens)
    with pytest.raises(ValueError, match="tokens are empty"):
        check_tokens([], 10, cpu, text_to_tokens)
    one = torch.tensor([[1, 2]])
    assert rows_per_clip(one, 3).tolist() == [[1, 2]] * 3
    assert rows_per_clip(torch.tensor([[1], [2]]), 2).shape == (2, 1)
    with pytest.raises(ValueError, match="3 clips but 2 token sequences"):
        rows_per_clip(torch.tensor([[1], [2]]), 3)


def test_the_30_s_window_is_checked_not_truncated():
    long, full, empty = torch.zeros(N_SAMPLES + 1), torch.zeros(N_SAMPLES), torch.zeros(0)
    check_window([full, empty])
    check_window([long], allow_long=True)
    with pytest.raises(ValueError, match="clip 1 lasts 30.00 s, over the 30 s window"):
        check_window([full, long])
    with pytest.raises(ValueError, match="clip 0 is empty"):
        check_window([empty], allow_empty=False)
