"""The decoder logit lens."""

from __future__ import annotations

import pytest
import torch

from hooked_whisper.lens import logit_lens
from tests.support import DATA, assert_close, spread_bound


@pytest.fixture(scope="module")
def cards_005(tiny_en):
    """tiny.en on a real clip reading its greedy transcript: logits and every activation."""
    with torch.no_grad():
        return tiny_en.run_with_cache(DATA / "cards_005.wav")


def test_last_layer_of_the_lens_is_the_model(tiny_en, cards_005, float32_spread):
    logits, cache = cards_005
    lens = logit_lens(tiny_en, cache, k=3)
    assert lens.labels == ["embed", "block 0", "block 1", "block 2", "block 3"]
    probs = logits.softmax(-1)
    assert torch.equal(lens.final_token, logits.argmax(-1))
    assert_close(lens.top_probs[-1], probs.topk(3, dim=-1).values, float32_spread, "lens probabilities")
    assert (lens.final_rank[-1] == 0).all()
    # Saturation: from that layer on, the lens's top-1 is the final prediction.
    # Saturation: from that block on (row block + 1, after the embedding row), the lens's top-1
    # is the final prediction; labels and saturation count blocks the same way.
    for pos, block in enumerate(lens.saturation_layer[0].tolist()):
        row = block + 1
        assert lens.labels[row] == ("embed" if block == -1 else f"block {block}")
        assert (lens.top_tokens[row:, 0, pos, 0] == lens.final_token[0, pos]).all()
        if row > 0:
            assert lens.top_tokens[row - 1, 0, pos, 0] != lens.final_token[0, pos]


def test_encoder_lens_last_layer_is_the_transcript(tiny_en):
    from hooked_whisper.lens import encoder_lens

    clip = DATA / "goforward.wav"
    rows = encoder_lens(tiny_en, clip, layers=[1, 3], reference="go forward ten meters")
    assert [r.layer for r in rows] == [1, 3]
    assert rows[-1].tokens == tiny_en.generate(clip)[0, len(tiny_en.prompt_tokens()) : -1].tolist()
    assert rows[-1].wer_vs_final == 0.0 and rows[-1].wer_vs_reference is not None
    assert rows[0].wer_vs_final > 0  # an early layer does not read as the final transcript
    no_ln = encoder_lens(tiny_en, clip, layers=[3], apply_ln=False)
    assert no_ln[0].tokens != rows[-1].tokens  # without the LayerNorm the decoder is off-distribution
    with pytest.raises(ValueError, match="encoder layer 4 out of range: this model has layers 0..3"):
        encoder_lens(tiny_en, clip, layers=[4])


def test_logit_attribution_sums_to_the_logit(tiny_en, float32_spread):
    from hooked_whisper.lens import logit_attribution

    model = tiny_en
    with torch.no_grad():
        logits, cache = model.run_with_cache(DATA / "librivox_0880.wav")
    tol = spread_bound(float32_spread, logits)
    for position in (-1, 5):
        token = int(logits[0, position].argmax())
        attr = logit_attribution(model, cache, token, position=position)
        assert abs(attr.total - float(logits[0, position, token])) <= tol
        n = model.cfg.n_decoder_layers * model.cfg.n_heads
        assert len(attr.labels) == len(attr.values) == 2 + 2 * n + model.cfg.n_decoder_layers + 2
        assert "XL3H5" in attr.labels and "mlp 3" in attr.labels
    other = int(logits[0, 5].topk(2).indices[1])
    diff = logit_attribution(model, cache, token, position=5, incorrect_token=other)
    assert abs(diff.total - float(logits[0, 5, token] - logits[0, 5, other])) <= 2 * tol
    with pytest.raises(ValueError, match="outside the vocabulary"):
        logit_attribution(model, cache, 10**6)


def test_plots_are_written(tiny_en, tmp_path):
    pytest.importorskip("matplotlib")
    from hooked_whisper.lens import encoder_lens
    from hooked_whisper.plots import plot_encoder_lens, plot_logit_lens

    _, cache = tiny_en.run_with_cache(DATA / "cards_001.wav")
    plot_logit_lens(logit_lens(tiny_en, cache), tiny_en, tmp_path / "lens.png")
    plot_encoder_lens(encoder_lens(tiny_en, DATA / "cards_001.wav", reference="ten of clubs"), tmp_path / "enc.png")
    assert (tmp_path / "lens.png").stat().st_size > 10_000 and (tmp_path / "enc.png").stat().st_size > 10_000


def test_encoder_lens_reads_an_array_at_the_sample_rate_given(tiny_en):
    import torchaudio.functional

    from hooked_whisper import load_audio
    from hooked_whisper.lens import encoder_lens

    at_8k = torchaudio.functional.resample(load_audio(DATA / "goforward.wav"), 16000, 8000)
    told = encoder_lens(tiny_en, at_8k, layers=[3], sample_rate=8000)
    assert told[0].tokens == encoder_lens(tiny_en, load_audio(at_8k, 8000), layers=[3], sample_rate=16000)[0].tokens


def test_logit_lens_k_must_be_a_positive_count(tiny_en, cards_005):
    _, cache = cards_005
    for k in (0, -1, tiny_en.cfg.d_vocab + 1):
        with pytest.raises(ValueError, match=r"k \(tokens shown per layer\) must be a whole number in \[1, 51864\]"):
            logit_lens(tiny_en, cache, k=k)
