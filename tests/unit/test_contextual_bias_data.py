"""The contextual-bias data builder (benchmarks/paper/contextual_bias_data.py): the item and
synthesis files, the assembly of pieces with exact word boundaries, and (when a speech engine is
installed: ``apt-get install espeak-ng flite``) a build of a handful of items."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

from benchmarks.paper import contextual_bias_data as data


def test_items_and_voices_are_complete():
    items = data.read_items()  # also refuses an item whose context contains either word
    assert len(items) >= 300 and len({i.id for i in items}) == len(items)
    assert all(i.acoustic != i.contextual for i in items)
    voices = data.settings()["voices"]
    assert len(voices) >= 3 and len({v["engine"] for v in voices}) >= 2
    assert all(v["licence"] and v["engine"] in data.ENGINES for v in voices)


def test_assembly_marks_the_word_exactly():
    rate = 16000
    tone = np.sin(np.arange(1600) / 5).astype(np.float32)
    padded = np.concatenate([np.zeros(800), tone, np.zeros(480)]).astype(np.float32)
    trimmed = data.trim(padded, -40)
    assert len(trimmed) == len(tone) and np.array_equal(trimmed, tone)  # 10 ms frames, silence on both sides
    pieces = [tone[:320], 2 * tone, tone[:640]]
    audio, (start, end) = data.assemble(pieces, 1, gap_s=0.05, edge_s=0.1, rate=rate)
    word = audio[round(start * rate) : round(end * rate)]
    assert np.array_equal(word, 2 * tone)
    assert len(audio) == sum(map(len, pieces)) + 2 * 800 + 2 * 1600


@pytest.mark.skipif(not data.available_engines(), reason="no speech engine installed (apt-get install espeak-ng flite)")
def test_build_a_few_items_twins_share_the_word(tmp_path):
    voice = next(v["name"] for v in data.settings()["voices"] if shutil.which(v["engine"]))
    index = data.build(tmp_path, [voice], limit=3, progress=False)
    rows = data.read_index(tmp_path)
    assert index.exists() and len(rows) == 6
    for context, neutral in zip(rows[::2], rows[1::2]):
        assert (context["id"], context["condition"], neutral["condition"]) == (neutral["id"], "context", "neutral")
        clips = []
        for row in (context, neutral):
            audio, rate = sf.read(tmp_path / row["path"], dtype="float32")
            assert rate == 16000 and abs(len(audio) / rate - float(row["duration"])) < 1 / rate
            clips.append(audio[round(float(row["word_start"]) * rate) : round(float(row["word_end"]) * rate)])
        assert len(clips[0]) > 0.1 * 16000 and np.array_equal(clips[0], clips[1])  # the same word samples
