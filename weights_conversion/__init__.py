"""Whisper checkpoints (Hugging Face, openai-whisper, CTranslate2) to and from HookedWhisper."""

from weights_conversion.convert import (
    Checkpoint,
    CheckpointError,
    convert_state_dict,
    load_ctranslate2_folder,
    load_hf_folder,
    load_openai_checkpoint,
    save_hf_folder,
    save_openai_checkpoint,
)
from weights_conversion.resolve import bundled_model, load_checkpoint

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "bundled_model",
    "convert_state_dict",
    "load_checkpoint",
    "load_ctranslate2_folder",
    "load_hf_folder",
    "load_openai_checkpoint",
    "save_hf_folder",
    "save_openai_checkpoint",
]
