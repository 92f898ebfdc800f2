"""An exported folder works with the transformers pipeline."""

from __future__ import annotations

from hooked_whisper.metrics import word_error_rate
from tests.support import DATA, read_transcripts


def test_exported_folder_works_with_the_transformers_pipeline(tiny_en, hf_export):
    """The folder has what WhisperProcessor and the ASR pipeline read, a generation config
    transformers 5 takes without deprecation warnings, and world-readable files."""
    import warnings

    from transformers import pipeline

    from hooked_whisper import load_audio

    folder = hf_export(tiny_en, "tiny.en")
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in folder.iterdir())
    clip = DATA / "librivox_0880.wav"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        asr = pipeline("automatic-speech-recognition", model=str(folder))
        heard = asr({"raw": load_audio(clip).numpy(), "sampling_rate": 16000})["text"]
    # The pipeline runs its own decoding loop; it must hear the clip (one word differs from our
    # greedy short-form output, " ill-disposed" for " old-sposed", and matches the reference).
    reference = read_transcripts()["librivox_0880.wav"]
    assert word_error_rate(reference, heard) <= word_error_rate(reference, tiny_en.to_string(tiny_en.generate(clip))[0])
    assert word_error_rate(reference, heard) < 0.2
