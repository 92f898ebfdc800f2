"""Long-form transcription: the loop-aware fallback, batched clips, left-padded rows and half precision."""

from __future__ import annotations

import copy

import pytest
import torch

from hooked_whisper import load_audio
from hooked_whisper.decoding.repetition import LoopReport
from hooked_whisper.kv_cache import DecoderCache
from hooked_whisper.metrics import word_error_rate
from tests.support import DATA, assert_close, long_clip


def looping_tail() -> torch.Tensor:
    """29 s of real speech, then 0.4 s of "Go forward" heard four times: the last window, which
    starts near the end of the speech, makes tiny.en repeat "F-go" until the token cap."""
    piece = load_audio(DATA / "goforward.wav")[int(0.3 * 16000) : int(0.7 * 16000)]
    return torch.cat([long_clip()[: 29 * 16000], piece.repeat(4)])


def decoder_steps(model):
    """A hook counting decoder forward passes, and the list it appends to."""
    steps: list[int] = []
    return steps, [("hook_tokens", lambda x, hook: steps.append(x.shape[1]))]


def test_loop_aware_fallback_gives_openai_text_in_fewer_steps(tiny_en):
    audio = looping_tail()
    options = dict(sample_rate=16000, max_new_tokens=96, progress=False)
    exact_steps, exact_hooks = decoder_steps(tiny_en)
    exact = tiny_en.transcribe(audio, fallback="openai", fwd_hooks=exact_hooks, **options)
    aware_steps, aware_hooks = decoder_steps(tiny_en)
    aware = tiny_en.transcribe(audio, fwd_hooks=aware_hooks, **options)

    assert len(exact.windows) == 2 and exact.windows[-1].temperature > 0  # the tail window fell back
    assert aware.text == exact.text
    assert [(s.start, s.end, s.tokens) for s in aware.segments] == [(s.start, s.end, s.tokens) for s in exact.segments]
    # The looping attempt at temperature 0 stops after a few repeats instead of at the cap.
    print(f"\nlooping tail: {len(exact_steps)} decoder passes exact, {len(aware_steps)} loop-aware")
    assert len(aware_steps) < 0.8 * len(exact_steps)


def test_loop_aware_at_temperature_zero_cuts_the_loop(tiny_en):
    audio = looping_tail()
    options = dict(sample_rate=16000, temperature=0.0, max_new_tokens=96, progress=False)
    exact = tiny_en.transcribe(audio, fallback="openai", **options)
    aware = tiny_en.transcribe(audio, **options)
    tail = [s for s in exact.segments if s.start >= exact.windows[-1].start]
    assert LoopReport.of(sum((s.tokens for s in tail), []), " ".join(s.text for s in tail)).looping
    assert aware.windows[-1].looped and not exact.windows[-1].looped
    aware_tail = [t for s in aware.segments if s.start >= aware.windows[-1].start for t in s.tokens]
    assert not LoopReport.of(aware_tail, tiny_en.to_string(aware_tail)).looping
    first = [(s.start, s.tokens) for s in exact.segments if s.start < exact.windows[-1].start]
    assert [(s.start, s.tokens) for s in aware.segments][: len(first)] == first  # the first window is untouched
    assert len(aware.text) < len(exact.text)


def test_batched_transcription_equals_one_by_one(tiny_en):
    clips = [
        load_audio(DATA / "librivox_0880.wav"),
        long_clip()[: 35 * 16000],  # two windows, the second conditioned on the first's text
        load_audio(DATA / "cards_001.wav"),
        torch.zeros(2 * 16000) + 1e-4 * torch.randn(2 * 16000, generator=torch.Generator().manual_seed(0)),
    ]
    alone = [tiny_en.transcribe(c, sample_rate=16000, progress=False) for c in clips]
    together = tiny_en.transcribe(clips, sample_rate=16000, batch_size=3, progress=False)
    for a, b in zip(alone, together):
        assert b.text == a.text
        assert [(s.start, s.end, s.tokens) for s in b.segments] == [(s.start, s.end, s.tokens) for s in a.segments]
        assert [(w.start, w.skipped) for w in b.windows] == [(w.start, w.skipped) for w in a.windows]
    assert len(together[1].windows) == 2 and together[3].text == ""
    assert word_error_rate("he was not an ill disposed young man", together[0].text) < 0.5
    # Sampling draws from each clip's own generator: the batch does not change what it samples.
    sampled = dict(temperature=1.0, sample_rate=16000, progress=False, seed=3)
    short = [clips[0], clips[2]]
    assert [t.text for t in tiny_en.transcribe(short, batch_size=2, **sampled)] == [
        tiny_en.transcribe(c, **sampled).text for c in short
    ]


def test_batched_transcription_options_are_checked(tiny_en):
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="batch_size must be"):
            tiny_en.transcribe(DATA / "cards_001.wav", batch_size=bad)
    with pytest.raises(ValueError, match="fallback must be one of"):
        tiny_en.transcribe(DATA / "cards_001.wav", fallback="fast")


def test_left_padded_rows_compute_what_they_compute_alone(tiny_en, float32_spread):
    """A row with two padding slots in front gives the logits it gives alone, at every position
    (the prompt forward pass and KV-cached steps), and position-addressed patches refuse it."""
    from hooked_whisper.patching import Site, patch_hooks

    encoder_out = tiny_en.encode(DATA / "librivox_0880.wav")
    prompt = tiny_en.to_tokens(" He was not")[0].tolist()
    eot = tiny_en.special.eot
    with torch.no_grad():
        alone = tiny_en.decode(torch.tensor([prompt]), encoder_out)
        step_alone = tiny_en.decode(torch.tensor([[prompt[-1]]]), cache=_cache_after(tiny_en, encoder_out, prompt))
        cache = tiny_en.new_decoder_cache(encoder_out.repeat(2, 1, 1))
        cache.pad = torch.tensor([2, 0])
        rows = torch.tensor([[eot, eot, *prompt], [*prompt, prompt[-1], prompt[-1]]])
        padded = tiny_en.decode(rows, cache=cache)
        step_padded = tiny_en.decode(torch.tensor([[prompt[-1]], [prompt[-1]]]), cache=cache)
    assert_close(padded[0, 2:], alone[0], float32_spread, "prompt pass")
    assert_close(step_padded[0], step_alone[0], float32_spread, "KV-cached step")
    assert torch.isfinite(padded).all()
    hooks = patch_hooks(tiny_en, [Site("decoder_blocks.0.hook_resid_post", positions=[3])], [0.0])
    with pytest.raises(ValueError, match="left-padded"), torch.no_grad(), tiny_en.hooks(fwd_hooks=hooks):
        tiny_en.decode(rows, cache=_padded(tiny_en, encoder_out))


def _cache_after(model, encoder_out, prompt) -> DecoderCache:
    cache = model.new_decoder_cache(encoder_out)
    model.decode(torch.tensor([prompt[:-1]]), cache=cache)
    model.decode(torch.tensor([[prompt[-1]]]), cache=cache)
    return cache


def _padded(model, encoder_out) -> DecoderCache:
    cache = model.new_decoder_cache(encoder_out.repeat(2, 1, 1))
    cache.pad = torch.tensor([2, 0])
    return cache


def test_half_precision_on_the_cpu_transcribes_like_float32(tiny_en):
    """bfloat16 and float16 read the weights in nn.Linear's order (ten times faster on the CPU
    than the transposed order) and write the float32 transcripts on the test clips."""
    clips = [DATA / "goforward.wav", DATA / "cards_001.wav"]
    full = [t.text for t in tiny_en.transcribe(clips, batch_size=2, progress=False)]
    for dtype in (torch.bfloat16, torch.float16):
        half = copy.deepcopy(tiny_en).to(dtype)
        assert half.embed.W_E.is_contiguous() and half.encoder_blocks[0].mlp.W_in.T.is_contiguous()
        low = [t.text for t in half.transcribe(clips, batch_size=2, progress=False)]
        print(f"\n{dtype}: {low} vs float32 {full}")
        assert low == full
    assert tiny_en.embed.W_E.T.is_contiguous()  # the float32 original keeps its own layout
