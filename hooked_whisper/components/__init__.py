"""The building blocks of HookedWhisper, one small module each."""

from hooked_whisper.components.attention import Attention
from hooked_whisper.components.blocks import DecoderBlock, EncoderBlock
from hooked_whisper.components.embeddings import AudioEmbed, PosEmbed, TokenEmbed
from hooked_whisper.components.layer_norm import LayerNorm
from hooked_whisper.components.mlp import MLP

__all__ = ["MLP", "Attention", "AudioEmbed", "DecoderBlock", "EncoderBlock", "LayerNorm", "PosEmbed", "TokenEmbed"]
