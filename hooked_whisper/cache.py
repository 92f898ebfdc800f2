"""The activation cache, with one TransformerLens-style view per stack.

TransformerLens' cache methods (``accumulated_resid``, ``decompose_resid``,
``stack_head_results``, ``apply_ln_to_stack``) expect ``blocks.{l}`` names and a model with one
stack. ``cache.encoder`` and ``cache.decoder`` present each stack that way, sharing the same
tensors: ``cache.decoder["blocks.3.hook_resid_post"]`` is ``cache["decoder_blocks.3.hook_resid_post"]``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformer_lens import ActivationCache
from transformer_lens.utilities import Slice, get_act_name

from hooked_whisper.hook_layout import one_stack_name, whisper_stack_view_name

if TYPE_CHECKING:
    from hooked_whisper.model import HookedWhisper


class MissingActivation(KeyError):
    """A KeyError whose message reads as a sentence (KeyError's own ``str`` quotes it)."""

    def __str__(self) -> str:
        return str(self.args[0])


class ExplainedCache(ActivationCache):
    """TransformerLens' cache, whose missing activation names the hook and the fix: its methods
    (``accumulated_resid``, ``decompose_resid``...) read many hooks, which a ``names_filter`` may
    have left out, and would otherwise fail on a view's renamed key the user never wrote."""

    def __getitem__(self, key) -> torch.Tensor:
        try:
            return super().__getitem__(key)
        except KeyError:
            raise MissingActivation(_why_missing(self, key)) from None


def _why_missing(cache: ActivationCache, key: Any) -> str:
    stack = getattr(cache.model, "side", None)  # set on a one-stack view's model
    model = getattr(cache.model, "full", cache.model)
    if isinstance(key, str):
        name = key
    else:  # TransformerLens' (name, layer, ...) shorthand, a negative layer counted from the end
        layer = key[1] if len(key) > 1 else None
        layer = cache.model.cfg.n_layers + layer if layer is not None and layer < 0 else layer
        name = get_act_name(key[0], layer, *key[2:])
    original = name
    if stack is not None:
        on_stack = [n for n, lay in model.hook_layouts.items() if lay.is_encoder_side == (stack == "encoder")]
        original = next((n for n in on_stack if whisper_stack_view_name(n, stack) == name), name)
    shown = f"{original!r}" + (f" (the {stack} view's {name!r})" if original != name else "")
    if original in model.hook_dict:
        return (
            f"this cache holds no {shown}: the run that made it left it out with a names_filter. Rerun "
            "run_with_cache without names_filter, or with one that keeps it (accumulated_resid and "
            "decompose_resid read every block's residual-stream hooks)"
        )
    return f"{shown} is not an activation of this model; model.hook_dict lists them"


class _StackModel:
    """What TransformerLens' cache methods read from a model, for one of Whisper's two stacks."""

    def __init__(self, model: HookedWhisper, side: Literal["encoder", "decoder"]):
        self.side, self.full = side, model  # for errors naming the full model's hook
        cfg = model.cfg
        n_layers = model.layer_count(side)
        self.cfg = SimpleNamespace(
            n_layers=n_layers,
            n_heads=cfg.n_heads,
            d_model=cfg.d_model,
            d_head=cfg.d_head,
            d_mlp=cfg.d_mlp,
            d_vocab=cfg.d_vocab,
            normalization_type="LN",
            attn_only=False,
            final_rms=False,
        )
        self.blocks = model.blocks_of(side)
        self.ln_final = model.encoder_ln_final if side == "encoder" else model.decoder_ln_final
        if side == "decoder":
            self.W_U = model.W_U
            self.tokens_to_residual_directions = lambda tokens: model.W_U[:, tokens].T
            self.to_single_token = lambda text: _single_token(model, text)


def _single_token(model: HookedWhisper, text: str) -> int:
    ids = model.tokenizer.encode(text)
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {len(ids)} tokens, not one")
    return ids[0]


def _view(
    cache_dict: dict[str, torch.Tensor], model: HookedWhisper, side: Literal["encoder", "decoder"]
) -> dict[str, torch.Tensor]:
    """The cached activations of one stack, renamed as a one-stack TransformerLens model names
    them. The encoder view holds the audio front end too: its "embedding" is the conv stem's
    output, before positions are added."""
    out = {}
    for name, tensor in cache_dict.items():
        layout = model.hook_layouts.get(name)
        if layout is None or layout.is_encoder_side != (side == "encoder"):
            continue
        out[whisper_stack_view_name(name, side)] = tensor
    return out


class WhisperActivationCache(ExplainedCache):
    """Every cached activation under its HookedWhisper name, plus ``.encoder``/``.decoder`` views."""

    model: Any

    @property
    def encoder(self) -> ActivationCache:
        return ExplainedCache(
            _view(self.cache_dict, self.model, "encoder"), _StackModel(self.model, "encoder"), self.has_batch_dim
        )

    @property
    def decoder(self) -> DecoderStackCache:
        return DecoderStackCache(
            _view(self.cache_dict, self.model, "decoder"), _StackModel(self.model, "decoder"), self.has_batch_dim
        )


class DecoderStackCache(ExplainedCache):
    """The decoder view. Each block writes three times into the residual stream (self-attention,
    cross-attention, MLP), so the decompositions list cross-attention terms too, and the MLP's
    LayerNorm is ``ln3``."""

    def decompose_resid(  # type: ignore[override]
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: Literal["all", "mlp", "attn"] = "all",
        apply_ln: bool = False,
        pos_slice: Any = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ):
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        n_layers = self.model.cfg.n_layers
        layer = n_layers if layer is None or layer == -1 else layer
        names, labels = [], []
        if incl_embeds:
            names += ["hook_embed", "hook_pos_embed"]
            labels += ["embed", "pos_embed"]
        for l in range(layer):
            parts = (["hook_attn_out", "hook_cross_attn_out"] if mode != "mlp" else []) + (
                ["hook_mlp_out"] if mode != "attn" else []
            )
            names += [one_stack_name(l, p) for p in parts]
            labels += [f"{l}_{p.removeprefix('hook_')}" for p in parts]
        if mlp_input and mode != "mlp" and layer < n_layers:
            names += [one_stack_name(layer, "hook_attn_out"), one_stack_name(layer, "hook_cross_attn_out")]
            labels += [f"{layer}_attn_out", f"{layer}_cross_attn_out"]
        components = torch.stack([pos_slice.apply(self[n], dim=-2) for n in names])
        if apply_ln:
            components = self.apply_ln_to_stack(components, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (components, labels) if return_labels else components

    def stack_head_results(  # type: ignore[override]
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: Any = None,
        apply_ln: bool = False,
        incl_cross: bool = True,
    ):
        """Every head's write to the residual stream: self-attention heads ``DL{l}H{h}`` and,
        unless ``incl_cross=False``, cross-attention heads ``XL{l}H{h}``, layer by layer."""
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        n_layers = self.model.cfg.n_layers
        layer = n_layers if layer is None or layer == -1 else layer
        heads, labels = [], []
        for l in range(layer):
            block = self.model.blocks[l]
            sides = [("attn.hook_result", "attn.hook_z", block.attn, "DL")]
            if incl_cross:
                sides.append(("cross_attn.hook_result", "cross_attn.hook_z", block.cross_attn, "XL"))
            for result_leaf, z_leaf, attn, tag in sides:
                result = self.cache_dict.get(one_stack_name(l, result_leaf))
                if result is None:
                    z = self[one_stack_name(l, z_leaf)]
                    result = torch.einsum("...hd,hdm->...hm", z, attn.W_O.to(z.dtype))
                heads.append(pos_slice.apply(result, dim=-3).movedim(-2, 0))
                labels += [f"{tag}{l}H{h}" for h in range(self.model.cfg.n_heads)]
        components = torch.cat(heads) if heads else torch.zeros(0, *self["hook_embed"].shape)
        if incl_remainder:
            remainder = pos_slice.apply(self[one_stack_name(layer - 1, "hook_resid_post")], dim=-2) - components.sum(0)
            components = torch.cat([components, remainder[None]])
            labels.append("remainder")
        if apply_ln:
            components = self.apply_ln_to_stack(components, layer, pos_slice=pos_slice)
        return (components, labels) if return_labels else components

    def _get_cached_ln_scale(self, layer, mlp_input, pos_slice, batch_slice=None):
        if mlp_input and layer is not None and layer < self.model.cfg.n_layers:
            scale = pos_slice.apply(self[one_stack_name(layer, "ln3.hook_scale")], dim=-2)
            return batch_slice.apply(scale) if batch_slice is not None and self.has_batch_dim else scale
        return super()._get_cached_ln_scale(layer, mlp_input, pos_slice, batch_slice)
