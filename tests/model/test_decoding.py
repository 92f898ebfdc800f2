"""The decoding engine's own behaviour on real weights: batches, seeds, hooks at every step, loops,
silence, short and long audio, bad options."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hooked_whisper import load_audio
from hooked_whisper.decoding import DecodingOptions
from hooked_whisper.decoding.repetition import is_looping
from tests.support import CLIPS, DATA, long_clip


def strip_padding(rows: list[list[int]], eot: int) -> list[list[int]]:
    """Each row up to its end-of-text (which the reference leaves off its longest row)."""
    return [row[: row.index(eot)] if eot in row else row for row in rows]


def test_batch_equals_one_by_one(tiny_en):
    clips = [DATA / c for c in CLIPS[:4]]
    eot = tiny_en.special.eot
    batched = strip_padding(tiny_en.generate(clips).tolist(), eot)
    assert batched == [strip_padding(tiny_en.generate(c).tolist(), eot)[0] for c in clips]


def test_sampling_is_repeatable_with_a_seed(small):
    """Seeding is the same for any weights: the small random model, told its language."""
    clip, options = DATA / "cards_005.wav", dict(max_new_tokens=20, language="en")
    first = small.generate(clip, temperature=1.0, best_of=3, seed=7, **options)
    assert torch.equal(first, small.generate(clip, temperature=1.0, best_of=3, seed=7, **options))
    samples = {tuple(small.generate(clip, temperature=1.5, seed=s, **options)[0].tolist()) for s in range(3)}
    assert len(samples) > 1  # sampling does sample


def test_hooks_fire_at_every_step(tiny_en):
    """Self-attention hooks see the prompt, then one new position per step; cross-attention K/V
    hooks fire once, when K/V are computed."""
    shapes: dict[str, list[tuple[int, ...]]] = {"self": [], "cross": []}
    hooks = [
        ("decoder_blocks.0.attn.hook_k", lambda x, hook: shapes["self"].append(tuple(x.shape))),
        ("decoder_blocks.0.cross_attn.hook_k", lambda x, hook: shapes["cross"].append(tuple(x.shape))),
    ]
    tokens = tiny_en.generate(DATA / "librivox_0880.wav", fwd_hooks=hooks)
    n_prompt, n_generated = len(tiny_en.prompt_tokens()), tokens.shape[1] - len(tiny_en.prompt_tokens())
    assert shapes["cross"] == [(1, 1500, 6, 64)]
    assert [s[1] for s in shapes["self"]] == [n_prompt] + [1] * (n_generated - 1)
    assert not any(hp.has_hooks() for hp in tiny_en.hook_dict.values())


def test_stop_on_loop(tiny_en):
    """Without the audio, the decoder loops; stop_on_loop ends it once the loop is plain."""
    deaf = [(f"decoder_blocks.{l}.hook_cross_attn_out", lambda x, hook: torch.zeros_like(x)) for l in range(4)]
    capped = tiny_en.generate(DATA / "cards_004.wav", fwd_hooks=deaf, max_new_tokens=60)
    stopped = tiny_en.generate(DATA / "cards_004.wav", fwd_hooks=deaf, max_new_tokens=60, stop_on_loop=True)
    assert is_looping(capped[0, 2:].tolist()) and stopped.shape[1] < capped.shape[1]
    assert stopped[0, -1] == tiny_en.special.eot


def test_silence_and_noise_report_no_speech(tiny_en):
    silence = torch.zeros(5 * 16000)
    noise = torch.randn(5 * 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    with pytest.warns(UserWarning, match="digital silence"):
        quiet = tiny_en.transcribe(silence, sample_rate=16000, progress=False)
    hiss = tiny_en.transcribe(noise, sample_rate=16000, progress=False)
    for result in (quiet, hiss):
        assert len(result.windows) == 1 and 0 <= result.windows[0].no_speech_prob <= 1
    assert quiet.windows[0].no_speech_prob > 0.6 and quiet.windows[0].skipped and quiet.text == ""


def test_very_short_clip(tiny_en):
    clip = load_audio(DATA / "librivox_0880.wav")[:1600]  # 0.1 s
    result = tiny_en.transcribe(clip, sample_rate=16000, word_timestamps=True, progress=False)
    assert len(result.windows) == 1
    assert tiny_en.generate(clip, sample_rate=16000).shape[0] == 1


def test_unsupported_language_is_a_clear_error(tiny_en, small):
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        small.transcribe(DATA / "goforward.wav", language="xx")  # a multilingual model
    with pytest.raises(ValueError, match="English-only"):
        tiny_en.generate(DATA / "goforward.wav", language="de")
    with pytest.raises(ValueError, match="beam_size and best_of"):
        tiny_en.generate(DATA / "goforward.wav", beam_size=2, best_of=2, temperature=0.5)
    with pytest.raises(TypeError, match="beam_sise.*fields are: .*beam_size"):
        tiny_en.generate(DATA / "goforward.wav", beam_sise=2)


def test_generate_takes_one_options_object_and_keyword_overrides(tiny_en):
    options = DecodingOptions(max_new_tokens=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_new_tokens = 6  # type: ignore[misc]
    capped = tiny_en.generate(DATA / "goforward.wav", options)
    assert torch.equal(capped, tiny_en.generate(DATA / "goforward.wav", max_new_tokens=5))
    longer = tiny_en.generate(DATA / "goforward.wav", options, max_new_tokens=8)  # a keyword wins
    assert longer.shape[1] > capped.shape[1]


def test_long_audio_is_refused_by_forward_but_transcribed(tiny_en):
    with pytest.raises(ValueError, match="use model.transcribe"):
        tiny_en.run_with_cache(long_clip(), sample_rate=16000)


THREE_MINUTES = """
import resource, sys, torch
from hooked_whisper import HookedWhisper
from tests.support import long_clip
model = HookedWhisper.from_pretrained("tiny.en")
piece = torch.cat([long_clip()[: 6 * 16000], torch.zeros(24 * 16000)])  # 6 s speech, 24 s silence
model.transcribe(piece, progress=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = model.transcribe(piece.repeat(6), progress=False)  # 3 minutes
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(result.windows), result.segments[-1].end, (after - before) / 1024)
"""


def test_three_minute_clip_in_bounded_memory():
    """Memory grows with the audio itself (3 min at 16 kHz: 12 MB), not with the transcript."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", THREE_MINUTES], capture_output=True, text=True, check=True)
    windows, last_end, growth_mib = done.stdout.split()
    print(f"\n3-minute clip: {windows} windows, last segment ends at {float(last_end):.1f} s, RSS +{growth_mib} MiB")
    assert int(windows) >= 6 and float(last_end) > 150 and float(growth_mib) < 400
