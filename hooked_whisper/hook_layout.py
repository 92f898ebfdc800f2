"""What each hook's activation holds: which part of the model it is on, which layer, and what
its axes mean. The model declares one ``HookLayout`` per hook name (``model.hook_layouts``);
the toolkit (patching sites, time windows, pooling, cache views) reads it instead of parsing
names, so a new hook or a new model only has to be described here once.

Positions come in these units: mel frames (100 per second: ``hook_mel`` and the first
convolution), audio positions (50 per second: after the stride-2 convolution, the encoder, and
the keys and values cross-attention reads), pooled audio tokens (25 per second, in an audio LLM)
and decoder tokens.

Hook names are built and read here alone (``HookNaming``): the toolkit asks the model for
``model.hook_name(stack, layer, leaf)`` or ``model.hook_layout(name)`` and never writes or
parses a name itself, so a family whose blocks are named differently (Qwen2-Audio's language
model is ``blocks.{l}``, not ``decoder_blocks.{l}``) needs no change outside this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

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


BlockStack = Literal["encoder", "decoder"]
BLOCK_STACKS: tuple[BlockStack, ...] = ("encoder", "decoder")


@dataclass(frozen=True)
class HookNaming:
    """How one model family names the hooks inside its blocks: the module list holding each
    stack's blocks (``{prefix}.{layer}.{leaf}``)."""

    encoder_prefix: str
    decoder_prefix: str

    def prefix(self, stack: str) -> str:
        if stack == "encoder":
            return self.encoder_prefix
        if stack == "decoder":
            return self.decoder_prefix
        raise ValueError(f"stack must be 'encoder' or 'decoder', not {stack!r}")

    def name(self, stack: str, layer: int, leaf: str) -> str:
        """The hook ``leaf`` (e.g. ``hook_resid_post``, ``attn.hook_z``) of block ``layer``."""
        return f"{self.prefix(stack)}.{layer}.{leaf}"

    def parse(self, name: str) -> tuple[BlockStack, int, str] | None:
        """``(stack, layer, leaf)`` of a hook inside a block; None for a hook outside the blocks."""
        head, _, rest = name.partition(".")
        layer, _, leaf = rest.partition(".")
        if not (layer.isdigit() and leaf):
            return None
        # The encoder is tried first: a family may give both stacks one prefix (ONE_STACK).
        for stack in BLOCK_STACKS:
            if head == self.prefix(stack):
                return stack, int(layer), leaf
        return None


WHISPER_NAMING = HookNaming("encoder_blocks", "decoder_blocks")
QWEN2_AUDIO_NAMING = HookNaming("encoder_blocks", "blocks")  # the language model is TransformerLens' decoder-only
# TransformerLens' one-stack names, under which ``cache.encoder`` and ``cache.decoder`` show each stack.
ONE_STACK_NAMING = HookNaming("blocks", "blocks")


def one_stack_name(layer: int, leaf: str) -> str:
    """The name TransformerLens gives hook ``leaf`` of block ``layer`` (``blocks.{layer}.{leaf}``),
    as the per-stack cache views (``cache.encoder``, ``cache.decoder``) use it."""
    return ONE_STACK_NAMING.name("decoder", layer, leaf)


class _HasNaming(Protocol):
    hook_naming: HookNaming


def get_act_name(model: _HasNaming | HookNaming, stack: str, layer: int, leaf: str) -> str:
    """The hook name of ``leaf`` in block ``layer`` of ``stack`` in ``model`` (a hooked model or
    its family's ``HookNaming``), as TransformerLens' ``get_act_name`` for these families:
    ``get_act_name(whisper, "decoder", 2, "cross_attn.hook_z")`` is
    ``"decoder_blocks.2.cross_attn.hook_z"``; for a HookedQwen2Audio it is ``"blocks.2..."``."""
    naming = model if isinstance(model, HookNaming) else model.hook_naming
    return naming.name(stack, layer, leaf)


def whisper_stack_view_name(name: str, stack: BlockStack) -> str:
    """The name HookedWhisper hook ``name`` has in the one-stack view of ``stack``
    (``cache.encoder``, ``cache.decoder``), as TransformerLens names a one-stack model's hooks:
    blocks as ``blocks.{l}``, the stack's final LayerNorm as ``ln_final``, and in the encoder
    view the conv stem's output as ``hook_embed`` (before positions are added) and the
    sinusoids as ``hook_pos_embed``."""
    block = WHISPER_NAMING.parse(name)
    if block is not None and block[0] == stack:
        return one_stack_name(block[1], block[2])
    ln_final = f"{stack}_ln_final."
    if name.startswith(ln_final):
        return "ln_final." + name[len(ln_final) :]
    if stack == "encoder":
        return _ENCODER_VIEW_EMBEDS.get(name, name)
    return name


_ENCODER_VIEW_EMBEDS = {"encoder_embed.hook_conv2": "hook_embed", "encoder_embed.hook_pos_embed": "hook_pos_embed"}


def _any_block(name: str) -> tuple[str, int, str] | None:
    """``(module list, layer, leaf)`` of a hook inside the blocks of any family here (every
    block list's name ends in ``blocks``); None outside the blocks."""
    head, _, rest = name.partition(".")
    layer, _, leaf = rest.partition(".")
    if head.endswith("blocks") and layer.isdigit() and leaf:
        return head, int(layer), leaf
    return None


def layer_of(name: str) -> int | None:
    """The block index of a hook of any family, None outside the blocks (for results that keep
    hook names without their model, such as probe reports)."""
    block = _any_block(name)
    return block[1] if block else None


def layer_template(name: str) -> str:
    """``name`` with its block index replaced by ``{l}`` (``decoder_blocks.3.hook_z`` ->
    ``decoder_blocks.{l}.hook_z``), to group a hook across layers; other names are unchanged."""
    block = _any_block(name)
    return f"{block[0]}.{{l}}.{block[2]}" if block else name


_HEADED = {"hook_q": 2, "hook_k": 2, "hook_v": 2, "hook_z": 2, "hook_result": 2}
_PATTERNS = ("hook_attn_scores", "hook_pattern")


def layout_of(name: str) -> HookLayout:
    """The layout of a Whisper hook, from its place in the module tree."""
    if name == "hook_mel":
        return HookLayout("audio", None, 2, "mel_frame")
    if name.startswith("encoder_embed."):
        return HookLayout("audio", None, 1, "mel_frame" if name.endswith("hook_conv1") else "audio_position")
    block = WHISPER_NAMING.parse(name)
    stack: Stack = "encoder" if name.startswith(("encoder", "hook_encoder_out")) else "decoder"
    layer = block[1] if block else None
    rest = block[2] if block else name
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
    block = QWEN2_AUDIO_NAMING.parse(name)
    layer = block[1] if block else None
    leaf = name.rsplit(".", 1)[-1]
    if leaf in _PATTERNS:
        return HookLayout("decoder", layer, 2, "token", head_axis=1, key_unit="token")
    if leaf in ("hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_z"):
        return HookLayout("decoder", layer, 1, "token", head_axis=2)
    return HookLayout("decoder", layer, 1, "token")


# A sparse autoencoder spliced in at a hook (``model.saes``) hangs below that hook point as
# ``{hook}.sae``, with these hooks of its own (sae-lens' names for them).
SAE_LEAVES = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error")


def sae_hook_name(hook: str, leaf: str = "hook_sae_acts_post") -> str:
    """The name of hook ``leaf`` of the autoencoder spliced in at ``hook``:
    ``sae_hook_name("encoder_blocks.2.hook_resid_post")`` is
    ``"encoder_blocks.2.hook_resid_post.sae.hook_sae_acts_post"``."""
    if leaf not in SAE_LEAVES:
        raise ValueError(f"an autoencoder's hooks are {', '.join(SAE_LEAVES)}; not {leaf!r}")
    return f"{hook}.sae.{leaf}"


def is_sae_hook(name: str) -> bool:
    """Whether ``name`` is one of a spliced autoencoder's own hooks (``sae_hook_name``)."""
    parent, _, leaf = name.rpartition(".sae.")
    return bool(parent) and leaf in SAE_LEAVES


def sae_layout(parent: HookLayout) -> HookLayout:
    """The layout of an autoencoder's hooks at a hook laid out as ``parent``: the same
    positions, one feature axis last (heads, if the hook had them, are flattened into it)."""
    return HookLayout(parent.stack, parent.layer, parent.pos_axis, parent.unit)
