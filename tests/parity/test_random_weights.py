"""Parity with Hugging Face ``WhisperForConditionalGeneration`` (eager attention) on random-init
models covering the official shape families: English-only and multilingual vocabularies, 80 and
128 mel bins, unequal encoder/decoder depths, several head counts."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.parity.mutations import MUTATIONS, mutated
from tests.parity.references import hf_random_pair
from tests.support import assert_within_float32_spread

CONFIGS = {
    "english_80mel_2enc_1dec_2heads": dict(
        vocab_size=51864,
        num_mel_bins=80,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        d_model=128,
    ),
    "multilingual_80mel_1enc_3dec_3heads": dict(
        vocab_size=51865,
        num_mel_bins=80,
        encoder_layers=1,
        decoder_layers=3,
        encoder_attention_heads=3,
        decoder_attention_heads=3,
        d_model=192,
    ),
    "v3_128mel_3enc_2dec_4heads": dict(
        vocab_size=51866,
        num_mel_bins=128,
        encoder_layers=3,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        d_model=256,
    ),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def run(request):
    hf, model = hf_random_pair(**CONFIGS[request.param])
    torch.manual_seed(1)
    mel = torch.randn(2, model.cfg.n_mels, 3000)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 9))
    with torch.no_grad():
        ref = hf(input_features=mel, decoder_input_ids=tokens, output_hidden_states=True, output_attentions=True)
        logits, cache = model.run_with_cache(mel, tokens)
        # The same model in float64: what each float32 value should have been. The two
        # float32 implementations may differ by a few times float32's own error against it.
        exact_logits, exact = copy.deepcopy(model).double().run_with_cache(mel.double(), tokens)
    cache = {**cache.cache_dict, "logits": logits}
    exact = {**exact.cache_dict, "logits": exact_logits}
    return SimpleNamespace(hf=hf, model=model, mel=mel, tokens=tokens, ref=ref, cache=cache, exact=exact)


def close(run, name: str, reference: torch.Tensor, ours: torch.Tensor | None = None) -> None:
    """Our value at ``name`` (or ``ours``) against the reference's, within float32's spread."""
    ours = run.cache[name] if ours is None else ours
    assert ours.shape == reference.shape, f"{name}: {tuple(ours.shape)} vs {tuple(reference.shape)}"
    assert_within_float32_spread(reference, ours, run.exact[name], name)


def test_logits(run):
    model, ref = run.model, run.ref
    close(run, "logits", ref.logits)
    with torch.no_grad():
        close(run, "logits", ref.logits, model(run.mel, run.tokens))  # the uncached forward (fused attention path)
    for bug in MUTATIONS:  # the same bound fails on a real bug
        with torch.no_grad(), pytest.raises(AssertionError, match="differ by"):
            assert_within_float32_spread(mutated(model, bug)(run.mel, run.tokens), ref.logits, run.exact["logits"], bug)


def test_hidden_states_every_layer(run):
    model, ref = run.model, run.ref
    n_enc, n_dec = model.cfg.n_encoder_layers, model.cfg.n_decoder_layers
    assert len(ref.encoder_hidden_states) == n_enc + 1 and len(ref.decoder_hidden_states) == n_dec + 1
    for layer in range(n_enc):
        close(run, f"encoder_blocks.{layer}.hook_resid_pre", ref.encoder_hidden_states[layer])
    close(run, "hook_encoder_out", ref.encoder_hidden_states[n_enc])  # HF's last entry is after the LayerNorm
    close(run, "hook_encoder_out", ref.encoder_last_hidden_state)
    for layer in range(n_dec):
        close(run, f"decoder_blocks.{layer}.hook_resid_pre", ref.decoder_hidden_states[layer])
    close(run, "decoder_ln_final.hook_normalized", ref.decoder_hidden_states[n_dec])


def test_attention_patterns(run):
    model, ref = run.model, run.ref
    for layer in range(model.cfg.n_encoder_layers):
        close(run, f"encoder_blocks.{layer}.attn.hook_pattern", ref.encoder_attentions[layer])
    for layer in range(model.cfg.n_decoder_layers):
        close(run, f"decoder_blocks.{layer}.attn.hook_pattern", ref.decoder_attentions[layer])
        close(run, f"decoder_blocks.{layer}.cross_attn.hook_pattern", ref.cross_attentions[layer])


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    return x.unflatten(-1, (n_heads, -1))


def test_sites_hf_does_not_expose(run):
    """q, k, v, z, MLP pre/post and LayerNorm scale, recomputed with the Hugging Face modules
    from the cached inputs of each sub-layer."""
    hf, model, cache = run.hf, run.model, run.cache
    h = model.cfg.n_heads
    sides = [
        ("encoder", hf.model.encoder.layers, model.cfg.n_encoder_layers),
        ("decoder", hf.model.decoder.layers, model.cfg.n_decoder_layers),
    ]
    with torch.no_grad():
        for side, layers, n in sides:
            for l in range(n):
                p, ref = f"{side}_blocks.{l}", layers[l]
                resid = cache[f"{p}.hook_resid_pre"]
                x = ref.self_attn_layer_norm(resid)
                close(run, f"{p}.ln1.hook_normalized", x)
                close(run, f"{p}.ln1.hook_scale", (resid.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt())
                close(run, f"{p}.attn.hook_q", _heads(ref.self_attn.q_proj(x), h))
                close(run, f"{p}.attn.hook_k", _heads(ref.self_attn.k_proj(x), h))
                v = _heads(ref.self_attn.v_proj(x), h)
                close(run, f"{p}.attn.hook_v", v)
                z = torch.einsum("bhqk,bkhd->bqhd", cache[f"{p}.attn.hook_pattern"], v)
                close(run, f"{p}.attn.hook_z", z)
                close(run, f"{p}.hook_attn_out", ref.self_attn.out_proj(z.flatten(-2)))
                mlp_ln = ref.final_layer_norm
                if side == "decoder":
                    mid = cache[f"{p}.hook_resid_mid"]
                    xq = ref.encoder_attn_layer_norm(mid)
                    enc = cache["hook_encoder_out"]
                    close(run, f"{p}.cross_attn.hook_q", _heads(ref.encoder_attn.q_proj(xq), h))
                    close(run, f"{p}.cross_attn.hook_k", _heads(ref.encoder_attn.k_proj(enc), h))
                    cv = _heads(ref.encoder_attn.v_proj(enc), h)
                    close(run, f"{p}.cross_attn.hook_v", cv)
                    cz = torch.einsum("bhqk,bkhd->bqhd", cache[f"{p}.cross_attn.hook_pattern"], cv)
                    close(run, f"{p}.cross_attn.hook_z", cz)
                    close(run, f"{p}.hook_cross_attn_out", ref.encoder_attn.out_proj(cz.flatten(-2)))
                    mlp_in = cache[f"{p}.hook_resid_mid_cross"]
                else:
                    mlp_in = cache[f"{p}.hook_resid_mid"]
                pre = ref.fc1(mlp_ln(mlp_in))
                close(run, f"{p}.mlp.hook_pre", pre)
                close(run, f"{p}.mlp.hook_post", F.gelu(pre))
                close(run, f"{p}.hook_mlp_out", ref.fc2(F.gelu(pre)))


def test_hook_shapes(run):
    model, tokens, cache = run.model, run.tokens, run.cache
    b, t = tokens.shape
    d, h, dh, a = model.cfg.d_model, model.cfg.n_heads, model.cfg.d_head, model.cfg.n_audio_ctx
    expected = {
        "hook_mel": (b, model.cfg.n_mels, 3000),
        "encoder_embed.hook_conv1": (b, 3000, d),
        "encoder_embed.hook_conv2": (b, a, d),
        "encoder_embed.hook_pos_embed": (b, a, d),
        "encoder_blocks.0.attn.hook_q": (b, a, h, dh),
        "encoder_blocks.0.attn.hook_pattern": (b, h, a, a),
        "encoder_blocks.0.mlp.hook_pre": (b, a, 4 * d),
        "encoder_ln_final.hook_scale": (b, a, 1),
        "hook_encoder_out": (b, a, d),
        "hook_tokens": (b, t),
        "hook_embed": (b, t, d),
        "hook_pos_embed": (b, t, d),
        "decoder_blocks.0.attn.hook_pattern": (b, h, t, t),
        "decoder_blocks.0.cross_attn.hook_q": (b, t, h, dh),
        "decoder_blocks.0.cross_attn.hook_k": (b, a, h, dh),
        "decoder_blocks.0.cross_attn.hook_v": (b, a, h, dh),
        "decoder_blocks.0.cross_attn.hook_attn_scores": (b, h, t, a),
        "decoder_blocks.0.cross_attn.hook_z": (b, t, h, dh),
        "decoder_blocks.0.hook_cross_attn_out": (b, t, d),
        "decoder_blocks.0.hook_resid_mid_cross": (b, t, d),
        "decoder_blocks.0.ln3.hook_normalized": (b, t, d),
        "decoder_ln_final.hook_scale": (b, t, 1),
    }
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == shape, name
