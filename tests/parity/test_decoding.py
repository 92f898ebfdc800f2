"""Decoding against the references on real weights: Hugging Face generate for short-form greedy
decoding (with and without timestamps, language detection, translation, batches), openai-whisper
for beam search, long-form transcription and word timestamps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_whisper import load_audio
from hooked_whisper.metrics import normalize_text, word_error_rate
from tests.support import CLIPS, DATA, long_clip, read_transcripts


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
    """Clips of 1 to 7 s in one batch (five for tiny.en, a short and a long one for the slower base; base's
    multilingual prompt, language detected per clip, with timestamps; base without timestamps
    is the translation test's decoding)."""
    model = request.getfixturevalue("tiny_en" if name == "tiny.en" else "base")
    hf = hf_reference(model, name, attn="sdpa")
    clips = CLIPS[::2] if name == "tiny.en" else CLIPS[::6]
    mel = model.to_mel([DATA / c for c in clips]).mel
    tokens = model.generate(mel, timestamps=timestamps)
    ours = tokens.tolist()
    kwargs = {"task": "transcribe"} if model.cfg.is_multilingual else {}
    ref = hf_generate(hf, mel, return_timestamps=timestamps, **kwargs)
    n_prompt = len(model.prompt_tokens("en" if model.cfg.is_multilingual else None, timestamps=timestamps))
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


def test_language_detection_and_translation_match_hf(base, hf_reference):
    """One clip (batched detection is the greedy test's, on base's multilingual prompt)."""
    hf = hf_reference(base, "base", attn="sdpa")
    mel = base.to_mel(DATA / "librivox_0870.wav").mel
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
    mel = tiny_en.to_mel(DATA / clip).mel
    options = whisper.DecodingOptions(language="en", beam_size=5, fp16=False, without_timestamps=True)
    ref = whisper.decode(ref_model, mel[0], options)
    ours = tiny_en.generate(mel, beam_size=5)[0].tolist()
    assert ours == tiny_en.prompt_tokens() + ref.tokens + [tiny_en.special.eot]


def test_beam_search_with_timestamps_equals_openai(tiny_en, openai_reference):
    whisper = pytest.importorskip("whisper")
    ref_model = openai_reference(tiny_en, "tiny.en")
    mel = tiny_en.to_mel(DATA / "cards_005.wav").mel
    ref = whisper.decode(ref_model, mel[0], whisper.DecodingOptions(language="en", beam_size=3, fp16=False))
    ours = tiny_en.generate(mel, beam_size=3, timestamps=True)[0].tolist()
    assert ours == tiny_en.prompt_tokens(timestamps=True) + ref.tokens + [tiny_en.special.eot]


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
