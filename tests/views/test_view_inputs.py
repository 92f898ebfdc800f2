"""What a view does with the inputs a researcher may hand it: a caller's own prompt, an answer
holding an audio placeholder, values a metric left undefined. No browser: the values are read
off the heatmaps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_whisper.views import Axis, Heatmap, cross_attention_view
from tests.toolkit.test_families import SAMPLE_RATE, clip, tiny_qwen2_audio


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return tiny_qwen2_audio(tmp_path_factory.mktemp("qwen2_audio_views"))


def test_the_audio_llm_view_lays_out_a_callers_prompt_and_keeps_generated_placeholders_as_text(qwen):
    audio = clip(0)
    expanded = qwen.tokens_for(qwen.to_mel(audio, SAMPLE_RATE), None)
    answer = torch.tensor([[qwen.cfg.audio_token_id, *qwen.tokenizer.encode("the audio.")]])
    n_audio = int(expanded.eq(qwen.cfg.audio_token_id).sum())
    one_placeholder = qwen.to_tokens(qwen.chat_prompt())  # the processor's layout before expansion
    views = [
        cross_attention_view(qwen, audio, torch.cat([prompt, answer], 1), sample_rate=SAMPLE_RATE)
        for prompt in (expanded, one_placeholder)
    ]
    for view in views:
        assert view.values.shape[-2:] == (answer.shape[1], n_audio)  # a row per answer token, a column per audio token
        assert view.rows.labels == qwen.to_str_tokens(answer)
    np.testing.assert_array_equal(views[0].values, views[1].values)  # the same run
    with pytest.raises(ValueError, match="1 clips but 2 token sequences"):
        cross_attention_view(qwen, audio, torch.cat([expanded, answer], 1).expand(2, -1), sample_rate=SAMPLE_RATE)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_value_the_metric_left_undefined_is_refused_not_drawn(bad):
    """One NaN or inf would set the panel's quantisation range and blank every cell of it."""
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    values[1, 2] = bad
    with pytest.raises(ValueError, match=r"not finite at \[1, 2\]"):
        Heatmap(values, rows=Axis("layer", ["0", "1"]), cols=Axis("head", ["0", "1", "2"]))


def test_a_picture_of_binned_time_says_so_as_the_page_does():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.ones((2, 4), dtype=np.float32)
    heatmap = Heatmap(values, rows=Axis("token", ["a", "b"]), cols=Axis("audio (s)", seconds_per_step=0.06), binned=3)
    fig, ax = plt.subplots()
    heatmap.draw(ax)
    plt.close(fig)
    assert "time: means of 3 steps" in ax.get_title()
