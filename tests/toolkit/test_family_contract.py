"""The calls both families share mean the same thing on both: text out of a batch of rows, audio
in as a log-mel, and a generated answer read back teacher-forced."""

from __future__ import annotations

import copy

import pytest
import torch

from hooked_whisper.qwen2_audio import LanguageModelCache
from tests.support import assert_within_float32_spread
from tests.toolkit.test_families import SAMPLE_RATE, clip, tiny_qwen2_audio, tiny_whisper


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return tiny_qwen2_audio(tmp_path_factory.mktemp("qwen2_audio_contract"))


@pytest.mark.parametrize("family", ["whisper", "qwen2_audio"])
def test_to_string_of_a_batch_is_one_string_per_row(family, qwen):
    model = tiny_whisper() if family == "whisper" else qwen
    rows = torch.tensor([model.to_tokens("the audio.")[0].tolist()] * 2)
    assert model.to_string(rows) == [model.to_string(rows[0])] * 2


def test_a_bare_log_mel_is_refused_by_the_audio_llm_in_any_layout(qwen):
    """A ``[n_mels, 3000]`` mel is one clip's log-mel, not 128 clips of 0.19 s."""
    mel = qwen.to_mel(clip(0), SAMPLE_RATE).mel
    for bare in (mel, mel[0], mel.numpy(), mel[0].numpy()):
        with pytest.raises(ValueError, match="a log-mel alone does not say how many of its frames are audio"):
            qwen.to_mel(bare, SAMPLE_RATE)


def test_a_generated_audio_placeholder_reads_as_in_generation(qwen):
    """A placeholder the audio LLM generated reads its own embedding in ``generate``'s KV-cached
    steps; read back teacher-forced (``model(audio, generate(audio))``) it must do the same, not
    fail on the count of placeholders nor take an audio embedding."""
    audio = clip(0)
    prompt = qwen.tokens_for(qwen.to_mel(audio, SAMPLE_RATE), None)
    answer = torch.tensor([[qwen.cfg.audio_token_id, *qwen.tokenizer.encode("the audio.")]])
    tokens = torch.cat([prompt, answer], 1)
    runs = []
    with torch.no_grad():
        for model in (qwen, copy.deepcopy(qwen).double()):
            teacher_forced = model(audio, tokens, sample_rate=SAMPLE_RATE)[0, prompt.shape[1] :]
            cache = LanguageModelCache.empty(model.cfg.n_layers)
            model.decode(prompt, model.encode(audio, SAMPLE_RATE), cache)
            runs.append((teacher_forced, model.decode(answer, cache=cache)[0]))
    (teacher_forced, cached), (exact, _) = runs
    assert_within_float32_spread(teacher_forced, cached, exact, "teacher-forced vs cached")
    assert qwen.audio_slot(tokens)[0].sum() == prompt.eq(qwen.cfg.audio_token_id).sum()
    assert qwen.prompt_length(tokens[0]) == prompt.shape[1]
