"""What each hook's activation holds: which part of the model it is on, which layer, and what
its axes mean. The model declares one ``HookLayout`` per hook name (``model.hook_layouts``);
the toolkit (patching sites, time windows, pooling, cache views) reads it instead of parsing
names, so a new hook or a new model only has to be described here once.

Positions come in these units: mel frames (100 per second: ``hook_mel`` and the first
convolution), audio positions (50 per second: after the stride-2 convolution, the encoder, and
the keys and values cross-attention reads), pooled audio tokens (25 per second, in an audio LLM)
and decoder tokens.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

Stack = Literal["audio", "encoder", "decoder"]  # audio: the front end before the first encoder block
Unit = Literal["mel_frame", "audio_position", "audio_token", "token"]

# audio_token: an audio LLM's encoder output after pooling pairs of positions (40 ms each).
POSITIONS_PER_SECOND: dict[str, int] = {"mel_frame": 100, "audio_position": 50, "audio_token": 25}


@dataclass(frozen=True)
class HookLayout:
    stack: Stack
    layer: int | None  # block index, None outside the blocks
    pos_axis: int  # axis of the positions, batch first
    unit: Unit  # what those positions count
    head_axis: int | None = None
    key_unit: Unit | None = None  # attention scores and patterns: what the last axis (keys) counts

    @property
    def is_encoder_side(self) -> bool:
        """Upstream of the encoder output (the front end or the encoder): a change here reaches
        the decoder only through cross-attention."""
        return self.stack != "decoder"

    @property
    def positions_per_second(self) -> int | None:
        return POSITIONS_PER_SECOND.get(self.unit)

    def positions(self, start_s: float, end_s: float) -> tuple[int, ...]:
        """The positions of this hook covering ``[start_s, end_s)`` seconds of audio."""
        rate = self.positions_per_second
        if rate is None:
            raise ValueError("a time window needs a hook whose positions are audio, not decoder tokens")
        return tuple(range(int(start_s * rate), math.ceil(end_s * rate)))


_HEADED = {"hook_q": 2, "hook_k": 2, "hook_v": 2, "hook_z": 2, "hook_result": 2}
_PATTERNS = ("hook_attn_scores", "hook_pattern")


def layout_of(name: str) -> HookLayout:
    """The layout of a Whisper hook, from its place in the module tree."""
    if name == "hook_mel":
        return HookLayout("audio", None, 2, "mel_frame")
    if name.startswith("encoder_embed."):
        return HookLayout("audio", None, 1, "mel_frame" if name.endswith("hook_conv1") else "audio_position")
    match = re.match(r"^(encoder|decoder)_blocks\.(\d+)\.(.*)$", name)
    stack: Stack = "encoder" if name.startswith(("encoder", "hook_encoder_out")) else "decoder"
    layer = int(match.group(2)) if match else None
    rest = match.group(3) if match else name
    leaf = rest.rsplit(".", 1)[-1]
    cross = rest.startswith("cross_attn.") or leaf.startswith("hook_cross_")
    query_unit: Unit = "audio_position" if stack == "encoder" else "token"
    key_unit: Unit = "audio_position" if stack == "encoder" or cross else "token"
    if leaf in _PATTERNS:
        return HookLayout(stack, layer, 2, query_unit, head_axis=1, key_unit=key_unit)
    if leaf in ("hook_k", "hook_v", "hook_cross_k_input", "hook_cross_v_input"):
        return HookLayout(stack, layer, 1, key_unit, head_axis=2)
    if leaf in _HEADED or leaf.endswith("_input"):
        return HookLayout(stack, layer, 1, query_unit, head_axis=2)
    return HookLayout(stack, layer, 1, query_unit)


_POOLED = ("hook_pooled", "hook_encoder_out", "hook_audio_embeds")


def qwen2_audio_layout_of(name: str) -> HookLayout:
    """The layout of a HookedQwen2Audio hook: Whisper's for the audio encoder, pooled audio
    positions (25 per second) from the pooling to the projector, tokens in the language model
    (the audio is there too, as the placeholder positions)."""
    if name.startswith(("hook_mel", "encoder_embed.", "encoder_blocks.")):
        return layout_of(name)
    if name in _POOLED or name.startswith("encoder_ln_final."):
        return HookLayout("encoder", None, 1, "audio_token")
    match = re.match(r"^blocks\.(\d+)\.(.*)$", name)
    layer = int(match.group(1)) if match else None
    leaf = name.rsplit(".", 1)[-1]
    if leaf in _PATTERNS:
        return HookLayout("decoder", layer, 2, "token", head_axis=1, key_unit="token")
    if leaf in ("hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_z"):
        return HookLayout("decoder", layer, 1, "token", head_axis=2)
    return HookLayout("decoder", layer, 1, "token")
