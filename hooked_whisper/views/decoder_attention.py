"""Decoder self-attention in CircuitsVis' form, the one TransformerLens users know:
``circuitsvis.attention.attention_patterns(tokens=..., attention=...)`` takes the token strings
and one layer's pattern ``[head, destination, source]``. Works on both families (an audio LLM's
language model is the decoder). CircuitsVis itself is optional: ``circuitsvis_html`` needs it."""

from __future__ import annotations

import numpy as np

from hooked_whisper.hooked_audio_model import HookedAudioModel


def circuitsvis_attention(model: HookedAudioModel, cache, tokens, layer: int, batch_index: int = 0) -> dict:
    """``{"tokens": [str], "attention": float32 [head, dest, src]}`` for decoder layer ``layer``
    from a cache holding its ``attn.hook_pattern``; ``tokens`` are the ids the cache read."""
    n_layers = model.layer_count("decoder")
    if not 0 <= layer < n_layers:
        raise ValueError(f"decoder layer {layer} out of range: this model has layers 0..{n_layers - 1}")
    pattern = cache[model.hook_name("decoder", layer, "attn.hook_pattern")]
    pattern = pattern[batch_index] if pattern.ndim == 4 else pattern
    row = tokens[batch_index] if getattr(tokens, "ndim", 1) == 2 else tokens
    labels = list(model.to_str_tokens(row))
    if len(labels) != pattern.shape[-1]:
        raise ValueError(
            f"{len(labels)} tokens for a pattern over {pattern.shape[-1]} positions: pass the tokens the cache read"
        )
    return {"tokens": labels, "attention": pattern.float().cpu().numpy().astype(np.float32)}


def circuitsvis_html(data: dict) -> str:
    """CircuitsVis' own attention-patterns view of ``circuitsvis_attention``'s output (it loads its
    script from a CDN unless CircuitsVis' local build is present)."""
    try:
        from circuitsvis.attention import attention_patterns
    except ImportError as err:
        raise ImportError(
            "circuitsvis is not installed: pip install circuitsvis (the exported dict needs only numpy)"
        ) from err
    return str(attention_patterns(tokens=data["tokens"], attention=data["attention"]))
