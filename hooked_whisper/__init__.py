"""hooked-whisper: Whisper (and the Qwen2-Audio audio LLM) rewritten with a TransformerLens
HookPoint at every site."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hooked_whisper.audio import load_audio
    from hooked_whisper.cache import WhisperActivationCache
    from hooked_whisper.config import HookedWhisperConfig
    from hooked_whisper.inputs import AudioFeatures
    from hooked_whisper.kv_cache import DecoderCache
    from hooked_whisper.model import HookedWhisper
    from hooked_whisper.qwen2_audio import HookedQwen2Audio

__all__ = [
    "AudioFeatures",
    "DecoderCache",
    "HookedQwen2Audio",
    "HookedWhisper",
    "HookedWhisperConfig",
    "WhisperActivationCache",
    "load_audio",
]
__version__ = "0.1.0"

# Imported on first use, so that `hooked-whisper --help` answers without loading torch.
_HOMES = {
    "AudioFeatures": "hooked_whisper.inputs",
    "DecoderCache": "hooked_whisper.kv_cache",
    "HookedQwen2Audio": "hooked_whisper.qwen2_audio",
    "HookedWhisper": "hooked_whisper.model",
    "HookedWhisperConfig": "hooked_whisper.config",
    "WhisperActivationCache": "hooked_whisper.cache",
    "load_audio": "hooked_whisper.audio",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'hooked_whisper' has no attribute {name!r}")
