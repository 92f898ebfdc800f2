"""Every view on a tiny random Whisper and a tiny random Qwen2-Audio: the PNG is written, the page
opens in headless Chromium without a JavaScript error (a screenshot lands in pytest's tmp dir),
and the values the page decodes equal the model's activations, computed here from the cache."""

from __future__ import annotations

import copy
import html
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hooked_whisper.lens import encoder_lens, logit_lens
from hooked_whisper.patching import Receiver, frames, head_sites, layer_sites
from hooked_whisper.views import (
    circuitsvis_attention,
    clip_report,
    encoder_attention_view,
    encoder_lens_view,
    path_patching_view,
    sweep_view,
)
from hooked_whisper.views.page import (
    MAX_PAGE_CELLS,
    Axis,
    Heatmap,
    bin_time,
    document,
    figures_png,
    time_bins,
    write_page,
)
from tests.toolkit.test_families import SAMPLE_RATE, clip, tiny_qwen2_audio, tiny_whisper

K = 75


@pytest.fixture(scope="module", params=["whisper", "qwen2_audio"])
def views(request, tmp_path_factory) -> SimpleNamespace:
    """A model, the tokens it read, its full cache of one clip, and the views of that clip."""
    folder = tmp_path_factory.mktemp(request.param)
    audio = clip(0)
    if request.param == "whisper":
        model = tiny_whisper()
        tokens = torch.tensor([model.prompt_tokens() + [model.special.eot - 100, model.special.eot - 50]])
        first_text = len(model.prompt_tokens())
    else:
        model = tiny_qwen2_audio(folder)
        # The chat prompt and a fixed answer: a random model's greedy answer may hold audio placeholders.
        prompt = model.tokens_for(model.to_mel(audio, SAMPLE_RATE), None)
        tokens = torch.cat([prompt, torch.tensor([model.tokenizer.encode("the audio.")])], 1)
        first_text = prompt.shape[1]
    with torch.no_grad():
        _, cache = model.run_with_cache(audio, tokens, sample_rate=SAMPLE_RATE)
        # The same patterns in float64: float32's own error on them, measured, bounds run-to-run differences.
        model64 = copy.deepcopy(model).double()
        kept = ("hook_pattern", "hook_resid_pre", "hook_resid_post")
        _, exact = model64.run_with_cache(
            audio, tokens, sample_rate=SAMPLE_RATE, names_filter=lambda name: name.endswith(kept)
        )
    report = clip_report(model, audio, tokens, sample_rate=SAMPLE_RATE)
    encoder = encoder_attention_view(model, audio, k=K, sample_rate=SAMPLE_RATE)
    return SimpleNamespace(
        model=model,
        tokens=tokens,
        first_text=first_text,
        cache=cache,
        exact=exact,
        model64=model64,
        report=report,
        encoder=encoder,
        folder=folder,
    )


def audio_attention(v, cache) -> np.ndarray:
    """[layer, head, text row, audio position] straight from the cache: each generated token's row
    (the position before it) to the audio (Whisper's encoder positions of the clip; the audio
    LLM's placeholder positions)."""
    model, rows = v.model, slice(v.first_text - 1, v.tokens.shape[1] - 1)
    if model.has_cross_attention:
        keys = torch.arange(model.real_position_count("audio_position", clip(0).shape[0]))
        names = [model.hook_name("decoder", l, "cross_attn.hook_pattern") for l in range(model.layer_count("decoder"))]
    else:
        keys = (v.tokens[0] == model.cfg.audio_token_id).nonzero().flatten()
        names = [model.hook_name("decoder", l, "attn.hook_pattern") for l in range(model.layer_count("decoder"))]
    return np.stack([cache[n][0][:, rows][:, :, keys].float().numpy() for n in names])


def run_bound(values: np.ndarray, exact: np.ndarray) -> float:
    """How far another float32 run's values may be from these (a view runs the model again): a
    few times float32's error on them, measured against float64, plus float32 rounding."""
    eps = float(np.finfo(np.float32).eps)
    return 4 * float(np.abs(values - exact).max()) + eps * float(np.abs(values).max())


def page_bound(values: np.ndarray, exact: np.ndarray) -> float:
    """... and a page's decoded values: half of one uint8 step over the panel's range more."""
    return float(values.max() - values.min()) / 255 / 2 + run_bound(values, exact)


# One JavaScript call reads what a test compares (each page.evaluate is a round trip to the browser).
READ_REPORT = """() => ({
  shape: HW.figs[0].F.shape, sel: HW.figs[0].sel,
  first: Array.from(HW.figs[0].panel(0)), last: Array.from(HW.figs[0].panel(HW.figs[0].F.panels.length - 1)),
  lens: Array.from(HW.figs[1].panel(0)),
  spans: [...document.querySelectorAll('.tok')].map(n => n.textContent),
  token: document.getElementById('focus').dataset.token, picture: document.getElementById('focus').toDataURL(),
  shown: window.report.shown,
  lensColumn: [...document.querySelectorAll('#lensrow tr td:nth-child(2)')].map(n => n.textContent),
})"""


def test_clip_report_holds_the_cache_values_and_hovering_a_token_shows_them(views, open_page):
    model, report = views.model, views.report
    if model.has_cross_attention:  # one picture per view: the report's maps are drawn as the others are
        assert report.png(views.folder / "report.png").stat().st_size > 5000
    page, errors = open_page(report.html(views.folder / "report.html"))
    page.wait_for_selector("body[data-ready='1']")
    page.screenshot(path=str(views.folder / "report.screenshot.png"))
    before = page.evaluate(READ_REPORT)
    page.hover(".tok[data-i='1']")
    after = page.evaluate(READ_REPORT)
    assert errors == []
    expected, exact = audio_attention(views, views.cache), audio_attention(views, views.exact)
    assert before["shape"] == list(expected.shape)
    for drawn, index in [(before["first"], (0, 0)), (before["last"], (-1, -1))]:
        want = expected[index]
        assert np.abs(np.reshape(drawn, want.shape) - want).max() <= page_bound(want, exact[index])
    lens = logit_lens(model, views.cache)
    probs = lens.top_probs[:, 0, :, 0].numpy()
    exact_probs = logit_lens(views.model64, views.exact).top_probs[:, 0, :, 0].numpy()
    assert np.abs(np.reshape(before["lens"], probs.shape) - probs).max() <= page_bound(probs, exact_probs)
    # The transcript under the player is the generated text, one span per token.
    assert before["spans"] == model.to_str_tokens(views.tokens[0, views.first_text :])

    # Hovering token 1 redraws the panel with its cross-attention over time: its row of the map as
    # shown (every layer and head averaged), and lists its lens column (the position predicting it).
    assert (before["token"], after["token"]) == ("0", "1") and after["picture"] != before["picture"]
    assert after["sel"] == [-1, -1]
    panels, exact_panels = expected.reshape(-1, *expected.shape[2:]), exact.reshape(-1, *exact.shape[2:])
    bound = max(page_bound(p, e) for p, e in zip(panels, exact_panels))  # a mean of panels errs no more
    assert np.abs(np.array(after["shown"]) - expected[:, :, 1].mean(axis=(0, 1))).max() <= bound
    first_guess = model.to_str_tokens(lens.top_tokens[0, 0, views.first_text, :1])[0]
    assert len(after["lensColumn"]) == len(lens.labels) and after["lensColumn"][0] == first_guess


def test_encoder_attention_and_locality_equal_the_cache(views, open_page):
    model, view = views.model, views.encoder
    n = model.real_position_count("audio_position", clip(0).shape[0])
    names = [model.hook_name("encoder", l, "attn.hook_pattern") for l in range(model.layer_count("encoder"))]

    def local_share(cache) -> np.ndarray:  # by its definition, query by query (in the cache's precision)
        return np.array(
            [
                [
                    float(torch.stack([p[h, q, max(0, q - K) : q + K + 1].sum() for q in range(n)]).mean())
                    for h in range(len(p))
                ]
                for p in (cache[name][0] for name in names)
            ]
        )

    share, exact_share = local_share(views.cache), local_share(views.exact)
    assert np.abs(view.locality.values - share).max() <= run_bound(share, exact_share)
    # The profile at K is the same share; it grows with the distance, up to all of it.
    profile = view.profile.values
    assert np.abs(profile[..., view.profile.cols.labels.index(str(K))] - view.locality.values).max() == 0
    assert (np.diff(profile, axis=-1) >= 0).all() and np.abs(profile[..., -1] - 1).max() <= run_bound(
        share, exact_share
    )
    last, exact_last = (c[names[-1]][0, -1, :n, :n].float().numpy() for c in (views.cache, views.exact))
    assert np.abs(view.pattern.values[-1, -1] - last).max() <= run_bound(last, exact_last)  # a short clip: no bins
    if model.has_cross_attention:  # the page and the picture once: both families draw through the same template
        return
    assert view.png(views.folder / "encoder.png").stat().st_size > 5000
    page, errors = open_page(view.html(views.folder / "encoder.html"))
    page.wait_for_selector("body[data-ready='1']")
    page.screenshot(path=str(views.folder / "encoder.screenshot.png"))
    drawn = page.evaluate(
        "() => [Array.from(HW.figs[0].panel(HW.figs[0].F.panels.length - 1)), Array.from(HW.figs[1].panel(0))]"
    )
    assert errors == []
    assert np.abs(np.reshape(drawn[0], last.shape) - last).max() <= page_bound(last, exact_last)
    assert np.abs(np.reshape(drawn[1], share.shape) - share).max() <= page_bound(share, exact_share)


def test_decoder_self_attention_exports_to_circuitsvis_form(views):
    data = circuitsvis_attention(views.model, views.cache, views.tokens, layer=1)
    pattern = views.cache[views.model.hook_name("decoder", 1, "attn.hook_pattern")][0].numpy()
    assert set(data) == {"tokens", "attention"}  # attention_patterns(tokens=..., attention=...)
    assert data["tokens"] == views.model.to_str_tokens(views.tokens[0])
    assert data["attention"].shape == (views.model.head_count("decoder"), len(data["tokens"]), len(data["tokens"]))
    np.testing.assert_array_equal(data["attention"], pattern)
    with pytest.raises(ValueError, match="out of range"):
        circuitsvis_attention(views.model, views.cache, views.tokens, layer=9)


def test_patching_maps_and_encoder_lens_lay_out_their_values(tmp_path, open_page):
    model = tiny_whisper()
    sites = head_sites(model)  # 2 layers x 2 heads
    values = torch.arange(len(sites), dtype=torch.float32) - 1.5
    heads = sweep_view(model, sites, values, metric="logit diff")
    assert heads.rows.labels == ["0", "1"] and heads.cols.labels == ["H0", "H1"] and heads.diverging
    np.testing.assert_array_equal(heads.values, values.reshape(2, 2).numpy())
    windows = [
        site
        for start in (0.0, 0.5, 1.0)
        for site in layer_sites(model, "encoder:hook_resid_post", positions=frames(start, start + 0.5))
    ]
    by_time = sweep_view(model, windows, torch.arange(6.0), metric="log p")
    assert by_time.cols.labels == ["0-0.5 s", "0.5-1 s", "1-1.5 s"] and by_time.cols.name == "time window"
    np.testing.assert_array_equal(by_time.values, np.arange(6.0).reshape(3, 2).T)  # rows: layers
    senders = ["encoder_blocks.0.hook_resid_post", "encoder_blocks.1.hook_resid_post"]
    receivers = [Receiver(l, h) for l in range(2) for h in range(2)]
    paths = path_patching_view(senders, receivers, torch.arange(8.0).reshape(2, 4), metric="logit diff")
    assert paths.cols.labels == [r.name for r in receivers]
    rows = encoder_lens(model, clip(0), max_new_tokens=3, sample_rate=SAMPLE_RATE)
    lens = encoder_lens_view(rows)
    assert lens.png(tmp_path / "encoder_lens.png").stat().st_size > 3000
    # Every map's png() is figures_png of its one heatmap: the three maps in one picture here.
    assert figures_png(tmp_path / "maps.png", [(heads, {}), (by_time, {}), (paths, {})]).stat().st_size > 5000
    # Each map's page is the shared template around its figure: the three open together here.
    for name, text in [("maps", document("maps", [heads, by_time, paths])), ("encoder_lens", lens.page())]:
        page, errors = open_page(write_page(tmp_path / f"{name}.html", text))
        page.wait_for_selector("body[data-ready='1']")
        page.screenshot(path=str(tmp_path / f"{name}.screenshot.png"))
        assert errors == []
    assert len(page.query_selector_all("tr")) == len(rows)  # the encoder lens: one row per layer
    for view in (heads, lens):  # Jupyter shows the same page in an iframe
        assert html.unescape(view._repr_html_().split('srcdoc="')[1].split('" style=')[0]) == view.page()
    with pytest.raises(ValueError, match="expected"):
        path_patching_view(senders, receivers, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="full grid"):
        sweep_view(model, sites[:3] + sites[:1], torch.zeros(4))


def test_big_views_are_binned_in_time_to_the_page_budget_and_keep_each_bins_mean():
    # 32 layers x 20 heads x 150 tokens x a 30 s window (1500 positions) fits MAX_PAGE_CELLS once binned.
    factor = time_bins(32 * 20, 150, 1500, 1)
    assert 32 * 20 * 150 * -(-1500 // factor) <= MAX_PAGE_CELLS < 32 * 20 * 150 * -(-1500 // (factor - 1))
    x = np.random.default_rng(0).random((3, 10)).astype(np.float32)
    binned = bin_time(x, 4, axis=1)
    np.testing.assert_allclose(binned, np.stack([x[:, :4].mean(1), x[:, 4:8].mean(1), x[:, 8:].mean(1)], axis=1))
    heatmap = Heatmap(x[None], Axis("row", list("abc")), Axis("t", seconds_per_step=0.02), [Axis("layer", ["0"])])
    data, low, step = heatmap.quantised()
    assert np.abs(low[0] + data[0] * step[0] - x).max() <= step[0] / 2 + 1e-7
    spec = json.loads(json.dumps(heatmap.spec()))
    assert spec["shape"] == [1, 3, 10] and spec["cols"]["step"] == 0.02
    with pytest.raises(ValueError, match="the axes say"):
        Heatmap(x, Axis("row", list("ab")), Axis("t", seconds_per_step=0.02))
