"""The README's main job: ``hooked-whisper inspect`` on a real checkpoint and a real clip."""

from __future__ import annotations

import json

import pytest

from tests.support import DATA


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """The command line in this process (the model loads faster than a fresh interpreter)."""
    from hooked_whisper.cli import main

    with pytest.raises(SystemExit) as done:
        main(args)
    out, err = capsys.readouterr()
    return done.value.code, out, err


def test_inspect_prints_transcript_reference_cache_and_lens_and_writes_the_clip_report(tmp_path, capsys):
    """In this process (the installed ``hooked-whisper`` command runs in tests/toolkit/test_extraction.py)."""
    report = tmp_path / "report.html"
    code, out, _ = run_cli(["inspect", str(DATA / "librivox_0880.wav"), "--html", str(report)], capsys)
    assert code == 0
    assert "transcript: He was not an" in out
    assert "reference:  he was not an ill disposed young man" in out
    assert "decoder_blocks.{l}.cross_attn.hook_pattern" in out and "[1, 6, 13, 1500]" in out
    lens_rows = [line for line in out.splitlines() if line.strip().startswith(("embed |", "block "))]
    assert len(lens_rows) == 5  # embedding + 4 decoder blocks of tiny.en
    assert "young" in lens_rows[-1]
    # The clip report: the cross-attention map's words are the transcript's, in time order, inside the clip.
    assert f"clip report: {report}" in out
    page = report.read_text()
    figures = json.loads(page.split('<script id="figures" type="application/json">')[1].split("</script>")[0])
    marks = figures[0]["marks"]
    transcript = out.split("transcript: ")[1].splitlines()[0]
    assert "".join(word for _, _, word in marks) == transcript.replace(" ", "")  # punctuation is its own mark
    starts = [start for start, _, _ in marks]
    assert starts == sorted(starts) and 0 <= starts[0] and marks[-1][1] <= figures[0]["mel"]["frames"] / 100
    assert 'src="data:audio/wav;base64,' in page and "http" not in page.split("<script")[-1]


def test_inspect_missing_file_is_a_clear_error(tmp_path, capsys):
    code, out, err = run_cli(["inspect", str(tmp_path / "nope.wav")], capsys)
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("hooked-whisper: ") and "no audio file at" in lines[0]


def test_transcribe_json_with_word_timestamps(capsys):
    code, out, _ = run_cli(["transcribe", str(DATA / "librivox_0880.wav"), "--word-timestamps", "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["text"].strip().startswith("He was not an")
    words = [w for seg in result["segments"] for w in seg["words"]]
    assert [w["word"].strip() for w in words][:3] == ["He", "was", "not"]
    assert all(0 <= w["start"] <= w["end"] <= 30 for w in words)
    assert result["windows"][0]["skipped"] is False


def test_transcribe_reports_bad_files_and_keeps_the_good_ones(tmp_path, capsys):
    """Files are checked before the model loads; a bad one is one line on stderr and an error
    entry in --json; the good ones are transcribed; the exit status says something failed.
    Timestamps are decoded by default, so the whole clip is transcribed."""
    missing = tmp_path / "missing.wav"
    code, out, err = run_cli(["transcribe", "--json", str(DATA / "cards_001.wav"), str(missing)], capsys)
    assert code == 1
    assert err.strip().splitlines() == [f"hooked-whisper: {missing}: no audio file at {missing}"]
    good, bad = json.loads(out)
    assert good["text"].strip() and good["tokens"][0] >= 50363  # decoded with timestamps
    assert bad == {"file": str(missing), "error": f"no audio file at {missing}"}
