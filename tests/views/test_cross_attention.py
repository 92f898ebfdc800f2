import base64

import numpy as np
import pytest

from hooked_whisper.views import cross_attention_view

CLIP = "tests/data/goforward.wav"


def test_cross_attention_view_png_and_embedded_data_match_the_cache(tiny_en, tmp_path):
    view = cross_attention_view(tiny_en, CLIP)
    layers, heads = tiny_en.layer_count("decoder"), tiny_en.head_count("decoder")
    assert view.patterns.shape[:3] == (layers, heads, len(view.tokens))
    png = view.png(tmp_path / "cross.png")
    assert png.stat().st_size > 1000
    page = view.html(tmp_path / "cross.html").read_text()
    assert "http" not in page.split("<script")[1].lower()  # self-contained: nothing fetched
    # The page's bytes, decoded as its JavaScript does, give the cache's values within one step.
    data, scale = view.quantised()
    encoded = base64.b64encode(data[1, 2].tobytes()).decode()
    assert encoded in page
    decoded = np.frombuffer(base64.b64decode(encoded), dtype=np.uint8).reshape(data.shape[2:]) * scale[1, 2]
    assert np.abs(decoded - view.patterns[1, 2]).max() <= scale[1, 2] / 2 + 1e-7


def test_cross_attention_page_draws_without_errors_and_decodes_the_cache_values(tiny_en, tmp_path, open_page):
    view = cross_attention_view(tiny_en, CLIP)
    page, errors = open_page(view.html(tmp_path / "cross.html"))
    page.screenshot(path=str(tmp_path / "cross.png"))
    assert errors == []
    assert page.evaluate("document.getElementById('view').dataset.shown") == "-1,-1"
    drawn = np.array(page.evaluate("Array.from(window.crossAttention.head(1, 2))"), dtype=np.float32)
    _, scale = view.quantised()
    error = np.abs(drawn.reshape(view.patterns.shape[2:]) - view.patterns[1, 2]).max()
    assert error <= scale[1, 2] / 2 + 1e-6  # within half a quantisation step (plus float32 rounding in JS)
    page.select_option("#layer", "1")
    assert page.evaluate("document.getElementById('view').dataset.shown") == "1,-1"


def test_a_model_without_cross_attention_is_refused_naming_its_family(tmp_path):
    from tests.toolkit.test_families import clip, tiny_qwen2_audio

    with pytest.raises(ValueError, match="HookedQwen2Audio"):
        cross_attention_view(tiny_qwen2_audio(tmp_path), clip(0))
