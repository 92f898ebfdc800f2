"""Decoding: greedy short-form transcription with a KV cache that hooks can steer."""

from hooked_whisper.decoding.generation_config import GenerationConfig
from hooked_whisper.decoding.greedy import Transcript, detect_language, greedy_generate

__all__ = ["GenerationConfig", "Transcript", "detect_language", "greedy_generate"]
