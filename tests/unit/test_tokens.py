"""Special tokens per vocabulary."""

from __future__ import annotations

import pytest

from hooked_whisper.tokenizer import SpecialTokens


def test_special_tokens_per_vocabulary():
    en, v2, v3 = (SpecialTokens.for_vocab_size(v) for v in (51864, 51865, 51866))
    assert (en.eot, en.sot, en.no_timestamps, en.timestamp_begin) == (50256, 50257, 50362, 50363)
    assert (v2.eot, v2.sot, v2.transcribe, v2.no_timestamps, v2.timestamp_begin) == (50257, 50258, 50359, 50363, 50364)
    assert (v3.translate, v3.transcribe, v3.no_timestamps, len(v3.languages)) == (50359, 50360, 50364, 100)
    with pytest.raises(ValueError, match="unknown Whisper vocabulary size 50000"):
        SpecialTokens.for_vocab_size(50000)
