"""The decoding engine on real weights: Hugging Face ``generate`` for short-form greedy decoding
(with and without timestamps, language detection, translation, batches), openai-whisper for beam
search, long-form transcription and word timestamps; and the engine's behaviour on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_whisper import load_audio
from hooked_whisper.decoding.repetition import is_looping
from hooked_whisper.metrics import normalize_text, word_error_rate
from tests.conftest import CLIPS, DATA, long_clip, read_transcripts


def hf_generate(hf, mel, **kwargs) -> list[list[int]]:
    with torch.no_grad():
        return hf.generate(mel, **kwargs).tolist()


def strip_padding(rows: list[list[int]], eot: int) -> list[list[int]]:
    """Each row up to its end-of-text (which the reference leaves off its longest row)."""
    return [row[: row.index(eot)] if eot in row else row for row in rows]


def generated_part(model, rows: list[list[int]], n_prompt: int) -> list[list[int]]:
    """Rows without the prompt (the reference returns it for some settings and not others) and
    without end-of-text padding."""
    rows = [row[n_prompt:] if row[0] == model.special.sot else row for row in rows]
    return strip_padding(rows, model.special.eot)


@pytest.mark.parametrize(
    "name, timestamps", [("tiny.en", False), ("tiny.en", True), ("base", True)], ids=["tiny.en", "tiny.en-timestamps",
    "base-timestamps"]
)  # fmt: skip
def test_batched_greedy_equals_hf_generate(request, hf_reference, name, timestamps):
    """Clips of 1 to 7 s in one batch (five for tiny.en, three for the slower base; base's
    multilingual prompt, language detected per clip, with timestamps; base without timestamps
    is the translation test's decoding)."""
    model = request.getfixturevalue("tiny_en" if name == "tiny.en" else "base")
    hf = hf_reference(model, name, attn="sdpa")
    clips = CLIPS[::2] if name == "tiny.en" else CLIPS[::3]
    mel = model.to_mel([DATA / c for c in clips])
    tokens = model.generate(mel, timestamps=timestamps)
    ours = tokens.tolist()
    kwargs = {"task": "transcribe"} if model.cfg.is_multilingual else {}
    ref = hf_generate(hf, mel, return_timestamps=timestamps, **kwargs)
    n_prompt = len(model.prompt("en" if model.cfg.is_multilingual else None, timestamps=timestamps))
    ours, ref = generated_part(model, ours, n_prompt), generated_part(model, ref, n_prompt)
    assert ours == ref
    if timestamps:
        assert all(any(t >= model.special.timestamp_begin for t in row) for row in ours)
        print(f"\n{name}: {model.to_string(torch.tensor(ours[0]), skip_special=False)}")
    references = read_transcripts()
    texts = model.to_string(tokens)
    wer = sum(word_error_rate(references[c], t) for c, t in zip(clips, texts)) / len(clips)
    print(f"\n{name}: mean WER over {len(clips)} clips = {wer:.3f}")
    assert wer < 0.5


def test_batch_equals_one_by_one(tiny_en):
    clips = [DATA / c for c in CLIPS[:4]]
    eot = tiny_en.special.eot
    batched = strip_padding(tiny_en.generate(clips).tolist(), eot)
    assert batched == [strip_padding(tiny_en.generate(c).tolist(), eot)[0] for c in clips]


def test_language_detection_and_translation_match_hf(base, hf_reference):
    """One clip (batched detection is the greedy test's, on base's multilingual prompt)."""
    hf = hf_reference(base, "base", attn="sdpa")
    mel = base.to_mel(DATA / "librivox_0870.wav")
    probs = base.detect_language(mel)
    assert next(iter(probs[0])) == "en" and sum(probs[0].values()) == pytest.approx(
        1, abs=len(probs[0]) * torch.finfo(torch.float32).eps
    )  # float32 rounding of each term
    with torch.no_grad():
        ref_lang = hf.detect_language(mel).flatten().tolist()
    assert ref_lang == [base.special.languages["en"]]
    ours = base.generate(mel, task="translate")
    assert (ours[:, 2] == base.special.translate).all()
    ref = hf_generate(hf, mel, task="translate")
    assert generated_part(base, ours.tolist(), 4) == generated_part(base, ref, 4)


@pytest.mark.parametrize("clip", ["librivox_0870.wav", "cards_005.wav"])  # a long sentence and a short one
def test_beam_search_equals_openai(tiny_en, openai_reference, clip):
    """openai-whisper's beam_size=5 (patience 1, length-normalised ranking), without timestamps."""
    whisper = pytest.importorskip("whisper")
    ref_model = openai_reference(tiny_en, "tiny.en")
    mel = tiny_en.to_mel(DATA / clip)
    options = whisper.DecodingOptions(language="en", beam_size=5, fp16=False, without_timestamps=True)
    ref = whisper.decode(ref_model, mel[0], options)
    ours = tiny_en.generate(mel, beam_size=5)[0].tolist()
    assert ours == tiny_en.prompt() + ref.tokens + [tiny_en.special.eot]


def test_beam_search_with_timestamps_equals_openai(tiny_en, openai_reference):
    whisper = pytest.importorskip("whisper")
    ref_model = openai_reference(tiny_en, "tiny.en")
    mel = tiny_en.to_mel(DATA / "cards_005.wav")
    ref = whisper.decode(ref_model, mel[0], whisper.DecodingOptions(language="en", beam_size=3, fp16=False))
    ours = tiny_en.generate(mel, beam_size=3, timestamps=True)[0].tolist()
    assert ours == tiny_en.prompt(timestamps=True) + ref.tokens + [tiny_en.special.eot]


@pytest.fixture(scope="module")
def long_form(tiny_en, openai_reference):
    whisper = pytest.importorskip("whisper")
    audio = long_clip()
    ref = whisper.transcribe(
        openai_reference(tiny_en, "tiny.en"),
        audio.numpy(),
        language="en",
        fp16=False,
        verbose=None,
        word_timestamps=True,
    )
    ours = tiny_en.transcribe(audio, sample_rate=16000, word_timestamps=True, progress=False)
    return audio, ref, ours


def test_long_form_equals_openai_transcribe(long_form):
    audio, ref, ours = long_form
    assert len(audio) / 16000 > 40 and len(ours.windows) >= 2
    assert ours.text == ref["text"]
    assert [(s.start, s.end, s.tokens) for s in ours.segments] == [
        (pytest.approx(s["start"]), pytest.approx(s["end"]), s["tokens"]) for s in ref["segments"]
    ]
    expected = " ".join(read_transcripts()[c] for c in CLIPS)
    wer = word_error_rate(expected, ours.text)
    duration = len(audio) / 16000
    print(f"\nlong-form ({duration:.1f} s, {len(ours.segments)} segments): WER {wer:.3f} vs the clips' transcripts")
    assert wer < 0.5


def test_word_timestamps(long_form):
    audio, ref, ours = long_form
    words = [w for seg in ours.segments for w in seg.words]
    assert [(w.word, w.start, w.end) for w in words] == [
        (w["word"], pytest.approx(w["start"]), pytest.approx(w["end"])) for s in ref["segments"] for w in s["words"]
    ]
    starts, ends = np.array([w.start for w in words]), np.array([w.end for w in words])
    assert (starts <= ends).all() and (np.diff(starts) >= 0).all() and (ends[:-1] <= starts[1:] + 1e-6).all()
    assert starts[0] >= 0 and ends[-1] <= len(audio) / 16000
    assert normalize_text("".join(w.word for w in words)) == normalize_text(ours.text)
    # Words land in the right place: "Go forward" is the sixth clip, which starts after five clips and pauses.
    go = next(w for w in words if w.word.strip() == "Go")
    offset = sum(len(load_audio(DATA / c)) / 16000 + 1.5 for c in CLIPS[:5])
    assert offset - 0.5 < go.start < offset + 1.0


def test_sampling_is_repeatable_with_a_seed(tiny_en):
    clip = DATA / "cards_005.wav"
    first = tiny_en.generate(clip, temperature=1.0, best_of=3, seed=7, max_new_tokens=20)
    assert torch.equal(first, tiny_en.generate(clip, temperature=1.0, best_of=3, seed=7, max_new_tokens=20))
    samples = {tuple(tiny_en.generate(clip, temperature=1.5, seed=s, max_new_tokens=20)[0].tolist()) for s in range(3)}
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
    n_prompt, n_generated = len(tiny_en.prompt()), tokens.shape[1] - len(tiny_en.prompt())
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


def test_unsupported_language_is_a_clear_error(tiny_en, base):
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        base.transcribe(DATA / "goforward.wav", language="xx")
    with pytest.raises(ValueError, match="English-only"):
        tiny_en.generate(DATA / "goforward.wav", language="de")
    with pytest.raises(ValueError, match="beam_size and best_of"):
        tiny_en.generate(DATA / "goforward.wav", beam_size=2, best_of=2, temperature=0.5)


def test_long_audio_is_refused_by_forward_but_transcribed(tiny_en):
    with pytest.raises(ValueError, match="use model.transcribe"):
        tiny_en.run_with_cache(long_clip(), sample_rate=16000)


THREE_MINUTES = """
import resource, sys, torch
from hooked_whisper import HookedWhisper
from tests.conftest import long_clip
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
