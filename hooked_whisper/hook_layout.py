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
from typing import Literal, Protocol, TypeVar

from torch import nn
from transformer_lens.hook_points import HookPoint

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


# A unit given by where a hook sits rather than fixed: "stream" is what the positions of the
# residual stream around it count, "keys" what its attention's keys count (the stream's own
# positions, unless the module is placed on a stream whose keys differ: cross-attention).
Role = Literal["stream", "keys"]


@dataclass(frozen=True)
class HookAxes:
    """What one hook point's axes hold, declared where the point is created (``hook_point``):
    the shape comment as data. Stack and layer are not declared: they come from where the module
    sits in the model (``hook_layouts_of``)."""

    pos_axis: int = 1  # axis of the positions, batch first
    unit: Unit | Role = "stream"
    head_axis: int | None = None
    key_unit: Unit | Role | None = None  # attention scores and patterns: what the last axis counts
    writes_residual: bool = False  # added to a residual stream, or the stream itself: a path-patching sender


def hook_point(
    pos_axis: int = 1,
    unit: Unit | Role = "stream",
    head_axis: int | None = None,
    key_unit: Unit | Role | None = None,
    writes_residual: bool = False,
) -> HookPoint:
    """A TransformerLens ``HookPoint`` carrying its declared axes (``HookAxes``)."""
    point = HookPoint()
    point.axes = HookAxes(pos_axis, unit, head_axis, key_unit, writes_residual)
    return point


ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class Stream:
    """Where a module's hooks sit: the stack, what the positions of the residual stream there
    count, and what attention keys count (the stream's own positions unless set). A module
    placed on a stream (``holds``) passes it to everything below it; a field left None is the
    enclosing stream's."""

    stack: Stack | None = None
    unit: Unit | None = None
    keys: Unit | None = None

    def holds(self, module: ModuleT) -> ModuleT:
        """Place ``module`` (and the hooks below it) on this stream; returns it."""
        module.hook_stream = self
        return module

    def inside(self, outer: Stream) -> Stream:
        """This stream within ``outer``: unset fields are ``outer``'s; a new unit brings its own keys."""
        keys = self.keys or (None if self.unit else outer.keys)
        return Stream(self.stack or outer.stack, self.unit or outer.unit, keys)

    def resolve(self, unit: Unit | Role) -> Unit:
        if unit == "keys":
            unit = self.keys or "stream"
        resolved = self.unit if unit == "stream" else unit
        assert resolved is not None
        return resolved


AUDIO_FRONT_END = Stream("audio", "audio_position")  # the stem's output; its first convolution declares mel frames
ENCODER_STREAM = Stream("encoder", "audio_position")
POOLED_AUDIO = Stream("encoder", "audio_token")  # an audio LLM's encoder output after pooling
TEXT_STREAM = Stream("decoder", "token")


_NOWHERE = Stream()


def hook_layouts_of(
    module: nn.Module, stream: Stream = _NOWHERE, layer: int | None = None, prefix: str = ""
) -> dict[str, HookLayout]:
    """The layout of every hook point below ``module``, by its module path (TransformerLens'
    hook names): its declared axes on the stream it sits on, and the layer of the block it is
    in (a block's index in a ``ModuleList``)."""
    stream = getattr(module, "hook_stream", _NOWHERE).inside(stream)
    layouts = {}
    if isinstance(module, HookPoint):
        axes = getattr(module, "axes", None)
        if axes is None:
            raise TypeError(f"hook {prefix} declares no axes: create it with hooked_whisper.hook_layout.hook_point()")
        if stream.stack is None or stream.unit is None:
            raise TypeError(f"hook {prefix} sits on no stream: place its module with Stream(...).holds(module)")
        key_unit = None if axes.key_unit is None else stream.resolve(axes.key_unit)
        layouts[prefix] = HookLayout(
            stream.stack, layer, axes.pos_axis, stream.resolve(axes.unit), axes.head_axis, key_unit
        )
    for name, child in module.named_children():
        child_layer = int(name) if isinstance(module, nn.ModuleList) else layer
        layouts |= hook_layouts_of(child, stream, child_layer, f"{prefix}.{name}" if prefix else name)
    return layouts


def writes_residual(model: _HasHooks, name: str) -> bool:
    """Whether hook ``name`` is added to a residual stream (or is one): what a path-patching
    sender is, as its hook point declares."""
    return model.hook_dict[name].axes.writes_residual


def hook_owner(model: nn.Module, name: str) -> nn.Module:
    """The module hook point ``name`` belongs to (an attention module for its ``hook_z``)."""
    return model.get_submodule(name.rpartition(".")[0])


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

    def name(self, stack: str, layer: int, *leaf: str) -> str:
        """The hook ``leaf`` (e.g. ``hook_resid_post``, ``attn.hook_z``, or its parts ``"attn",
        "hook_z"``) of block ``layer``."""
        return ".".join((self.prefix(stack), str(layer), *leaf))

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


class _HasHooks(Protocol):
    hook_dict: dict[str, HookPoint]


def get_act_name(model: _HasNaming | HookNaming, stack: str, layer: int, leaf: str) -> str:
    """The hook name of ``leaf`` in block ``layer`` of ``stack`` in ``model`` (a hooked model or
    its family's ``HookNaming``), as TransformerLens' ``get_act_name`` for these families:
    ``get_act_name(whisper, "decoder", 2, "cross_attn.hook_z")`` is
    ``"decoder_blocks.2.cross_attn.hook_z"``; for a HookedQwen2Audio it is ``"blocks.2..."``."""
    naming = model if isinstance(model, HookNaming) else model.hook_naming
    return naming.name(stack, layer, leaf)


class _NamesHooks(Protocol):
    def hook_name(self, stack: str, layer: int, *leaf: str) -> str: ...
    def hook_layout(self, name: str) -> HookLayout: ...
    def layer_count(self, stack: str) -> int: ...


def hooks_across_layers(model: _NamesHooks, template: str) -> list[str]:
    """One hook per layer of a stack, from a name with ``{l}`` for the layer
    (``"decoder_blocks.{l}.hook_cross_attn_out"``) or from a stack and a leaf
    (``"decoder:hook_resid_post"``, which names the hook in any family)."""
    stack, sep, leaf = template.partition(":")
    if sep:
        return [model.hook_name(stack, layer, leaf) for layer in range(model.layer_count(stack))]
    if "{l}" not in template:
        raise ValueError(f"{template!r} has no {{l}} for the layer; e.g. 'decoder_blocks.{{l}}.hook_resid_post'")
    layout = model.hook_layout(template.format(l=0))
    if layout.layer is None:
        raise ValueError(f"{template.format(l=0)} is not inside a block: layer_sites needs a block hook")
    return [template.format(l=layer) for layer in range(model.layer_count(layout.stack))]


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


def hook_leaf(name: str) -> str:
    """The hook point's own name, without the modules above it (``hook_z`` of
    ``decoder_blocks.3.attn.hook_z``), for results that keep hook names without their model."""
    return name.rpartition(".")[2]


def in_conv_stem(name: str) -> bool:
    """Whether hook ``name`` (of either family) is on the audio stem's convolutions, for results
    that keep hook names without their model (a probe's depth between the input and block 0)."""
    return name.startswith("encoder_embed.hook_conv")


def layer_template(name: str) -> str:
    """``name`` with its block index replaced by ``{l}`` (``decoder_blocks.3.hook_z`` ->
    ``decoder_blocks.{l}.hook_z``), to group a hook across layers; other names are unchanged."""
    block = _any_block(name)
    return f"{block[0]}.{{l}}.{block[2]}" if block else name


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


def sae_hook_layouts(hook: str, parent: HookLayout, module: nn.Module) -> dict[str, HookLayout]:
    """The layouts of the hooks of ``module`` (an autoencoder spliced in at ``hook``, laid out as
    ``parent``), by name: their declared axes over the parent hook's positions, stack and layer."""
    return hook_layouts_of(module, Stream(parent.stack, parent.unit), parent.layer, f"{hook}.sae")


def sae_layout(parent: HookLayout) -> HookLayout:
    """The layout of an autoencoder's hooks at a hook laid out as ``parent``: the same
    positions, one feature axis last (heads, if the hook had them, are flattened into it)."""
    return HookLayout(parent.stack, parent.layer, parent.pos_axis, parent.unit)
