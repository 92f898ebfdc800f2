"""Word-timing helpers."""

from __future__ import annotations

import torch

from hooked_whisper.decoding.timing import median_filter


def testmedian_filter_any_rank():
    x = torch.randn(2, 3, 4, 50, generator=torch.Generator().manual_seed(0))
    out = median_filter(x, 7)
    padded = torch.nn.functional.pad(x.reshape(-1, 1, 50), (3, 3), mode="reflect").reshape(2, 3, 4, 56)
    expected = torch.stack([padded[..., i : i + 7].median(-1).values for i in range(50)], dim=-1)
    assert out.shape == x.shape and torch.equal(out, expected)
    assert torch.equal(median_filter(x[0, 0, 0], 7), expected[0, 0, 0])
