"""hooked-whisper: Whisper rewritten with a TransformerLens HookPoint at every site."""

from hooked_whisper.audio import load_audio
from hooked_whisper.cache import WhisperActivationCache
from hooked_whisper.config import HookedWhisperConfig
from hooked_whisper.model import DecoderCache, HookedWhisper

__all__ = ["DecoderCache", "HookedWhisper", "HookedWhisperConfig", "WhisperActivationCache", "load_audio"]
__version__ = "0.1.0"
