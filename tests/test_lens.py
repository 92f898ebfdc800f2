"""The decoder logit lens."""

from __future__ import annotations

import torch

from hooked_whisper.lens import logit_lens
from tests.conftest import DATA


def test_last_layer_of_the_lens_is_the_model(tiny_en):
    with torch.no_grad():
        logits, cache = tiny_en.run_with_cache(DATA / "cards_005.wav")
    lens = logit_lens(tiny_en, cache, k=3)
    assert lens.labels == ["embed", "block 0", "block 1", "block 2", "block 3"]
    probs = logits.softmax(-1)
    assert torch.equal(lens.final_token, logits.argmax(-1))
    assert torch.allclose(lens.top_probs[-1], probs.topk(3, dim=-1).values, atol=1e-5)
    assert (lens.final_rank[-1] == 0).all()
    # Saturation: from that layer on, the lens's top-1 is the final prediction.
    for pos, layer in enumerate(lens.saturation_layer[0].tolist()):
        assert (lens.top_tokens[layer:, 0, pos, 0] == lens.final_token[0, pos]).all()
        if layer > 0:
            assert lens.top_tokens[layer - 1, 0, pos, 0] != lens.final_token[0, pos]
