"""Kept for the import path: the generation config lives with the model config."""

from hooked_whisper.config import GenerationConfig

__all__ = ["GenerationConfig"]
