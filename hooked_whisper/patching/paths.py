"""Path patching: the effect of a sender (an encoder or decoder component, or one head) on
receiver heads through one route only, with everything in between held at its base value.
Encoder senders reach decoder heads through their cross-attention keys and/or values; decoder
senders reach later heads through their query, key or value input.

In an audio LLM (HookedQwen2Audio) the audio reaches the language model as embeddings at the
audio-placeholder positions: an encoder sender reaches a language-model head (a key/value
group) through its keys and/or values at those positions, by the residual stream directly,
skipping the blocks before it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from hooked_whisper.hook_layout import hook_owner, writes_residual
from hooked_whisper.kv_cache import DecoderCache
from hooked_whisper.patching.activation import prepare, source_activations, source_cache
from hooked_whisper.patching.metrics import Metric, per_row
from hooked_whisper.patching.sites import Site, refuse_padded_rows, resolve

if TYPE_CHECKING:
    from hooked_whisper.hooked_audio_model import HookedAudioModel


@dataclass(frozen=True)
class Receiver:
    """A decoder attention head that receives the sender's effect.

    ``kind="cross_attn"`` with ``via`` in ``"k"``, ``"v"``, ``"kv"``: through the keys and/or
    values it reads from the encoder output (in an audio LLM: key/value group ``head`` of
    language-model layer ``layer``, at the audio positions). ``kind="attn"`` with ``via`` in ``"q"``, ``"k"``,
    ``"v"`` (any combination): through that head's input from the decoder residual stream.
    """

    layer: int
    head: int
    via: str = "kv"
    kind: str = "cross_attn"

    @property
    def name(self) -> str:
        return f"{'XL' if self.kind == 'cross_attn' else 'DL'}{self.layer}H{self.head} via {self.via}"


def cross_attention_receivers(model: HookedAudioModel, via: str = "kv") -> list[Receiver]:
    """Every head that reads the audio: each cross-attention head of each decoder layer (in an
    audio LLM, each key/value group of each language-model layer)."""
    layers, heads = _audio_readers(model)
    return [Receiver(l, h, via) for l in range(layers) for h in range(heads)]


# The per-head copy of a block's input each of a head's query, key and value reads (use_split_qkv_input).
SPLIT_INPUT_HOOKS = {"q": "hook_q_input", "k": "hook_k_input", "v": "hook_v_input"}


def _audio_readers(model: HookedAudioModel) -> tuple[int, int]:
    """(layers, heads per layer) that read the audio directly: cross-attention heads, or in an
    audio LLM the language model's key/value groups (its keys and values carry the audio)."""
    return model.layer_count("decoder"), model.kv_head_count("decoder")


def _audio_llm_receiver_hooks(model, r: Receiver, row: int, base_out: torch.Tensor, patched_out: torch.Tensor, tokens):
    """Hooks giving language-model key/value group ``r`` (in batch row ``row``) the patched
    audio embeddings through its keys and/or values only: the group's own copy of the block
    input (``use_split_qkv_input``), changed at the audio positions."""
    slots = model.audio_slot(tokens[0]).nonzero().flatten()
    change = torch.zeros(1, tokens.shape[1], base_out.shape[-1], dtype=base_out.dtype, device=base_out.device)
    change[0, slots] = (patched_out - base_out)[0, : len(slots)]
    return [
        (model.hook_name("decoder", r.layer, SPLIT_INPUT_HOOKS[part]), _add_to_head(model, row, r.head, change))
        for part in r.via
    ]


def _receivers_cross_kv(base: DecoderCache, patched: DecoderCache, chunk, rows, batch: int) -> DecoderCache:
    """A decoder cache for ``batch`` rows of the base run in which receiver ``chunk[i]`` (row
    ``rows[i]``) reads the patched encoder output's keys and/or values. A head's cross-attention
    keys and values depend on the encoder output alone, so they are the patched run's own: no
    per-head input copies. Layers without a receiver share the base keys and values unchanged."""
    cache = base.for_rows(batch)
    copied: set[int] = set()
    for row, r in zip(rows, chunk):
        if r.layer not in copied:  # only a receiver's layer needs rows of its own
            cache.cross_kv[r.layer] = tuple(t.repeat(batch, 1, 1, 1) for t in base.cross_kv[r.layer])
            copied.add(r.layer)
        for part in r.via:
            index = "kv".index(part)
            cache.cross_kv[r.layer][index][row, :, r.head] = patched.cross_kv[r.layer][index][0, :, r.head]
    return cache


def _sender_delta(model: HookedAudioModel, sender: Site, base: dict, source: dict) -> torch.Tensor:
    """What the sender adds to the residual stream in the source run minus in the base run, as
    ``[1, pos, d_model]`` (zero outside the sender's positions)."""
    hook = sender.hook
    delta = source[hook] - base[hook]
    attention = hook_owner(model, hook)
    if model.hook_dict[hook] is getattr(attention, "hook_z", None) and hasattr(attention, "W_O"):
        W_O = attention.W_O
        heads = [sender.head] if sender.head is not None else list(range(W_O.shape[0]))
        delta = torch.einsum("bphd,hdm->bpm", delta[:, :, heads], W_O[heads])
    elif sender.head is not None:
        raise ValueError(f"a head sender must be an attention hook_z, not {hook}")
    elif not writes_residual(model, hook):
        raise ValueError(
            f"{hook} does not write to the residual stream; senders are embeddings, hook_attn_out, "
            "hook_mlp_out, hook_cross_attn_out, hook_resid_post or a head's hook_z"
        )
    if sender.positions is not None:
        mask = torch.zeros(delta.shape[1], dtype=delta.dtype, device=delta.device)
        mask[list(sender.positions)] = 1
        delta = delta * mask[None, :, None]
    return delta


def path_patch(
    model: HookedAudioModel,
    base,
    source,
    sender: Site | str,
    receivers: Sequence[Receiver],
    metric: Metric,
    tokens=None,
    jointly: bool = False,
    batch_size: int = 16,
    progress: bool = True,
    sample_rate: int | None = None,
) -> torch.Tensor:
    """Patch the direct path from ``sender`` to each receiver head (one receiver at a time, or
    all of them in one run with ``jointly=True``, which returns a single value).

    The sender's change (source run minus base run, restricted to its positions or frames) is
    added to the residual stream as the receiver sees it, with every component in between held
    at its base value; everything else in the network runs on the base input. For a
    cross-attention receiver the changed stream passes through ``encoder_ln_final`` (recomputed:
    it is on the path) into that head's keys and/or values only. Returns one value per receiver.
    ``source`` is a clip, a ``Noise`` reference (made for ``base``) or activations by hook name.
    """
    sender = resolve(model, sender)
    receivers = list(receivers)
    if not receivers:
        raise ValueError("no receivers given: pass at least one Receiver (cross_attention_receivers(model) lists them)")
    for r in receivers:
        layers, heads = (
            _audio_readers(model)
            if r.kind == "cross_attn"
            else (model.layer_count("decoder"), model.head_count("decoder"))
        )
        if not (0 <= r.layer < layers and 0 <= r.head < heads):
            raise ValueError(f"receiver {r.name} does not exist in this model")
        allowed = set("kv") if r.kind == "cross_attn" else set("qkv")
        if not r.via or not set(r.via) <= allowed:
            raise ValueError(f"receiver {r.name}: via must use {sorted(allowed)}")
    to_encoder = model.hook_layouts[sender.hook].is_encoder_side
    if not model.has_cross_attention and not to_encoder:
        raise ValueError(
            "in an audio LLM, path patching runs from an audio-side sender (encoder, pooling, projector) "
            "to language-model key/value groups reading the audio (cross_attention_receivers(model))"
        )
    if any((r.kind == "cross_attn") != to_encoder for r in receivers):
        raise ValueError(
            "encoder senders reach decoder heads through cross-attention receivers; decoder senders "
            "reach later decoder heads through self-attention (kind='attn') receivers"
        )
    mel, tokens = prepare(model, base, tokens, sample_rate)
    last_encoder = model.hook_name("encoder", model.layer_count("encoder") - 1, "hook_resid_post")
    # What the text side reads: the encoder output (cross-attention) or the projected audio embeddings.
    audio_out = "hook_encoder_out" if model.has_cross_attention else "hook_audio_embeds"
    base_cache = source_cache(model, mel, tokens, {sender.hook, last_encoder, audio_out})
    source_acts = source_activations(model, base, source, tokens, {sender.hook}, sample_rate)
    delta = _sender_delta(model, sender, base_cache, source_acts)
    encoder_out = base_cache[audio_out]  # the base run already computed it
    values = []
    groups = [receivers] if jointly else [receivers[i : i + batch_size] for i in range(0, len(receivers), batch_size)]
    if to_encoder:
        # The base encoder output with the sender's change, through what follows the last
        # encoder block (it is on the path), is what each receiver reads.
        with torch.no_grad():
            patched_out = model.finish_encoder(base_cache[last_encoder] + delta)
            if model.has_cross_attention:
                base_kv, patched_kv = model.new_decoder_cache(encoder_out), model.new_decoder_cache(patched_out)
    for chunk in tqdm(groups, desc="path patching", disable=not progress or len(groups) < 2, unit="batch"):
        rows = [0] * len(chunk) if jointly else list(range(len(chunk)))
        batch = 1 if jointly else len(chunk)
        if to_encoder and model.has_cross_attention:
            cache = _receivers_cross_kv(base_kv, patched_kv, chunk, rows, batch)
            with torch.no_grad():
                values.append(per_row(metric, model.decode(tokens.expand(batch, -1), cache=cache)))
            continue
        hooks = []
        if to_encoder:
            for row, r in zip(rows, chunk):
                hooks += _audio_llm_receiver_hooks(model, r, row, encoder_out, patched_out, tokens)
        else:
            sender_layout = model.hook_layouts[sender.hook]
            sender_layer = sender_layout.layer if sender_layout.layer is not None else -1  # -1: the embeddings
            for row, r in zip(rows, chunk):
                if r.layer <= sender_layer:
                    raise ValueError(f"receiver {r.name} is not downstream of {sender.hook}")
                for part in r.via:
                    name = model.hook_name("decoder", r.layer, SPLIT_INPUT_HOOKS[part])
                    hooks.append((name, _add_to_head(model, row, r.head, delta)))
        with torch.no_grad(), model.opt_in(use_split_qkv_input=True), model.hooks(fwd_hooks=hooks):
            # one clip's encoder output serves every row
            values.append(per_row(metric, model.decode(tokens.expand(batch, -1), encoder_out)))
    return torch.cat(values)


def _add_to_head(model: HookedAudioModel, row: int, head: int, delta: torch.Tensor) -> Callable:
    def hook_fn(x: torch.Tensor, hook) -> torch.Tensor:
        refuse_padded_rows(model, hook.name)
        x = x.clone()
        offset = model.decode_offset
        x[row, :, head] = x[row, :, head] + delta[0, offset : offset + x.shape[1]]
        return x

    return hook_fn
