"""Reading tools: the decoder logit lens, the encoder lens and direct logit attribution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from hooked_whisper.decoding.repetition import LoopReport
from hooked_whisper.hook_layout import one_stack_name
from hooked_whisper.metrics import word_error_rate

if TYPE_CHECKING:
    from hooked_whisper.cache import WhisperActivationCache
    from hooked_whisper.hooked_audio_model import HookedAudioModel
    from hooked_whisper.model import HookedWhisper
    from hooked_whisper.qwen2_audio import Qwen2AudioActivationCache


@dataclass
class LogitLens:
    """Per residual-stream snapshot (``labels``: the embedding, then the output of each decoder
    block; the last one is what the logits read), at every position: the top-k tokens and their probabilities, and the
    probability and rank of the model's own final prediction."""

    labels: list[str]
    top_tokens: torch.Tensor  # [layer, batch, pos, k]
    top_probs: torch.Tensor  # [layer, batch, pos, k]
    final_token: torch.Tensor  # [batch, pos]: the model's top-1 prediction
    final_prob: torch.Tensor  # [layer, batch, pos]
    final_rank: torch.Tensor  # [layer, batch, pos], 0 = top-1
    saturation_layer: torch.Tensor  # [batch, pos]: first block from whose output top-1 stays final (-1: embed)

    def table(self, model: HookedAudioModel, batch_index: int = 0) -> list[str]:
        """One line per layer: that layer's top-1 token at every position."""
        width = max(len(label) for label in self.labels)
        lines = []
        for label, tokens in zip(self.labels, self.top_tokens[:, batch_index, :, 0]):
            lines.append(f"{label:>{width}} | " + " ".join(repr(t)[1:-1] for t in model.to_str_tokens(tokens)))
        return lines


def logit_lens(
    model: HookedAudioModel, cache: WhisperActivationCache | Qwen2AudioActivationCache, k: int = 5
) -> LogitLens:
    """Project each decoder layer's accumulated residual stream through the decoder's final norm
    (``decoder_ln_final``; an audio LLM's ``ln_final``) and the unembedding. Needs the decoder's
    ``hook_resid_pre``/``hook_resid_post`` in the cache (``cache.decoder``: a HookedWhisper or
    HookedQwen2Audio cache)."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= model.cfg.d_vocab:
        raise ValueError(f"k (tokens shown per layer) must be a whole number in [1, {model.cfg.d_vocab}], got {k!r}")
    with torch.no_grad():
        resid, labels = cache.decoder.accumulated_resid(apply_ln=True, return_labels=True)  # type: ignore[misc]
        if not cache.has_batch_dim:
            resid = resid.unsqueeze(1)
        probs = (resid @ model.W_U).float().softmax(dim=-1)  # [layer, batch, pos, vocab]
    top_probs, top_tokens = probs.topk(k, dim=-1)
    final_token = top_tokens[-1, ..., 0]
    final_prob = probs.gather(-1, final_token.expand(probs.shape[0], *final_token.shape)[..., None])[..., 0]
    final_rank = (probs > final_prob[..., None]).sum(-1)
    # Saturation: the earliest layer after which the top-1 token never changes again.
    agrees = top_tokens[..., 0] == final_token
    stays = agrees.flip(0).cumprod(0).flip(0)
    saturation = stays.shape[0] - stays.sum(0) - 1  # a block index, as the labels "block l"; -1 is the embedding
    n_blocks = len(labels) - 1  # entries: the embedding, then the output of each block
    names = ["embed"] + [f"block {l}" for l in range(n_blocks)]
    return LogitLens(names, top_tokens, top_probs, final_token, final_prob, final_rank, saturation)


@dataclass
class EncoderLensRow:
    layer: int  # the encoder block whose output the decoder read
    text: str
    tokens: list[int]
    wer_vs_final: float
    wer_vs_reference: float | None
    loop: LoopReport


def encoder_lens(
    model: HookedWhisper,
    audio,
    layers: list[int] | None = None,
    reference: str | None = None,
    apply_ln: bool = True,
    max_new_tokens: int = 128,
    sample_rate: int | None = None,
) -> list[EncoderLensRow]:
    """Transcribe one clip from each encoder layer's output, through the unchanged decoder.

    As in the seed paper, layer ``l``'s residual stream goes through ``encoder_ln_final`` (or
    nothing, with ``apply_ln=False``) into the cross-attention of the decoder in place of the
    final encoder output. Early layers often make the decoder loop: generation stops once a
    loop is detected (or at ``max_new_tokens``), and each row says whether it looped. An
    array of samples is at ``sample_rate`` Hz (16 kHz unless told).
    """
    from hooked_whisper.decoding.search import DecodingOptions, decode_window

    model.require_cross_attention("encoder_lens")
    n_layers = model.layer_count("encoder")
    layers = list(range(n_layers)) if layers is None else layers
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(f"encoder layer {layer} out of range: this model has layers 0..{n_layers - 1}")
    mel = model.to_mel(audio, sample_rate)
    if mel.shape[0] != 1:
        raise ValueError("encoder_lens reads one clip at a time")
    states: dict[int, torch.Tensor] = {}

    def keeper(layer: int):
        def keep(x: torch.Tensor, hook) -> None:
            states[layer] = x

        return keep

    resid_posts = [(model.hook_name("encoder", layer, "hook_resid_post"), keeper(layer)) for layer in layers]
    with torch.no_grad(), model.hooks(fwd_hooks=resid_posts):
        final_out = model.encode(mel)
    with torch.no_grad():
        final = decode_window(model, final_out, DecodingOptions(max_new_tokens=max_new_tokens))[0]
        rows = []
        for layer in layers:
            encoder_out = model.encoder_ln_final(states[layer]) if apply_ln else states[layer]
            options = DecodingOptions(language=final.language, max_new_tokens=max_new_tokens, stop_on_loop=True)
            out = decode_window(model, encoder_out, options)[0]
            rows.append(
                EncoderLensRow(
                    layer,
                    out.text,
                    out.tokens,
                    word_error_rate(final.text, out.text),
                    None if reference is None else word_error_rate(reference, out.text),
                    LoopReport.of(out.tokens, out.text),
                )
            )
    return rows


@dataclass
class LogitAttribution:
    """Direct contributions to one logit (or a logit difference) at one decoder position.

    ``values`` sum to ``total``, the logit itself: each component is centred and divided by the
    final LayerNorm's scale for this position (frozen, as in TransformerLens), so the only term
    outside the residual stream is the LayerNorm bias, listed as its own component."""

    labels: list[str]
    values: torch.Tensor
    total: float

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        order = self.values.abs().argsort(descending=True)[:k]
        return [(self.labels[i], float(self.values[i])) for i in order]


def logit_attribution(
    model: HookedWhisper,
    cache: WhisperActivationCache,
    token: int,
    position: int = -1,
    incorrect_token: int | None = None,
    batch_index: int = 0,
) -> LogitAttribution:
    """Split the logit of ``token`` (minus that of ``incorrect_token``, if given) at decoder
    ``position`` into embedding, positional embedding, every self- and cross-attention head,
    every MLP, the attention output biases and the final LayerNorm bias."""
    model.require_cross_attention("logit_attribution")
    for t in [token] + ([incorrect_token] if incorrect_token is not None else []):
        if not 0 <= t < model.cfg.d_vocab:
            raise ValueError(f"token {t} is outside the vocabulary (0..{model.cfg.d_vocab - 1})")
    dec = cache.decoder
    n_layers = model.layer_count("decoder")

    def at(x: torch.Tensor) -> torch.Tensor:  # [batch, pos, ...] -> this example and position
        return x[batch_index, position] if cache.has_batch_dim else x[position]

    heads, head_labels = dec.stack_head_results(return_labels=True)  # [component, batch, pos, d_model]
    parts = [
        at(dec["hook_embed"])[None],
        at(dec["hook_pos_embed"])[None],
        heads[:, batch_index, position] if cache.has_batch_dim else heads[:, position],
    ]
    parts.append(torch.stack([at(dec[one_stack_name(l, "hook_mlp_out")]) for l in range(n_layers)]))
    biases = sum(model.decoder_blocks[l].attn.b_O + model.decoder_blocks[l].cross_attn.b_O for l in range(n_layers))
    parts.append(torch.as_tensor(biases)[None])
    components = torch.cat(parts)  # [n_components, d_model]
    labels = ["embed", "pos_embed", *head_labels, *[f"mlp {l}" for l in range(n_layers)], "attention biases"]

    resid = at(dec[one_stack_name(n_layers - 1, "hook_resid_post")])
    ln = model.decoder_ln_final
    scale = ((resid - resid.mean()).pow(2).mean() + ln.eps).sqrt()
    direction = model.W_U[:, token] - (model.W_U[:, incorrect_token] if incorrect_token is not None else 0)
    with torch.no_grad():
        values = ((components - components.mean(-1, keepdim=True)) / scale * ln.w) @ direction
        values = torch.cat([values, (ln.b @ direction)[None]])
    labels.append("final LayerNorm bias")
    return LogitAttribution(labels, values.detach(), float(values.sum()))
