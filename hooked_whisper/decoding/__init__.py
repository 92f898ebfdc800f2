"""Decoding: one-window search (greedy, sampling, beam), long-form transcription, word timing."""

from hooked_whisper.config import GenerationConfig
from hooked_whisper.decoding.results import Segment, Transcript, Word
from hooked_whisper.decoding.search import DecodingOptions, WindowResult, decode_window, detect_language
from hooked_whisper.decoding.timing import WordAlignment, word_alignment
from hooked_whisper.decoding.transcribe import transcribe
from hooked_whisper.kv_cache import DecoderCache

__all__ = [
    "DecoderCache",
    "DecodingOptions",
    "GenerationConfig",
    "Segment",
    "Transcript",
    "WindowResult",
    "Word",
    "WordAlignment",
    "decode_window",
    "detect_language",
    "transcribe",
    "word_alignment",
]
