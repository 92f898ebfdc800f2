"""Hook points on a real checkpoint: patches reach only what is downstream, hooks never outlive
their block, fused and explicit paths agree, views of the stacks add up."""

from __future__ import annotations

import copy

import pytest
import torch

from hooked_whisper import HookedWhisper
from tests.support import DATA, SPREAD_CLIP, assert_close, assert_within_float32_spread, random_whisper

CLIP = DATA / "librivox_0880.wav"


@pytest.fixture(scope="module")
def clean(tiny_en):
    with torch.no_grad():
        logits, cache = tiny_en.run_with_cache(CLIP)
    return logits, cache


def no_hooks_left(model: HookedWhisper) -> bool:
    return not any(hp.has_hooks() for hp in model.hook_dict.values())


def test_patch_changes_only_downstream(tiny_en, clean, float32_spread):
    _, cache = clean
    tokens = cache["hook_tokens"]
    pos = 4
    direction = torch.randn(tiny_en.cfg.d_model, generator=torch.Generator().manual_seed(0))

    def bump(x, hook):
        x = x.clone()
        x[:, pos] += 5.0 * direction  # not a constant shift, which LayerNorm would remove
        return x

    with torch.no_grad(), tiny_en.hooks(fwd_hooks=[("decoder_blocks.1.hook_resid_mid", bump)]):
        _, patched = tiny_en.run_with_cache(CLIP, tokens)
    assert no_hooks_left(tiny_en)
    assert torch.equal(patched["hook_encoder_out"], cache["hook_encoder_out"])
    assert torch.equal(patched["decoder_blocks.0.hook_resid_post"], cache["decoder_blocks.0.hook_resid_post"])
    assert torch.equal(patched["decoder_blocks.1.hook_attn_out"], cache["decoder_blocks.1.hook_attn_out"])
    after = patched["decoder_blocks.3.hook_resid_post"]
    before = cache["decoder_blocks.3.hook_resid_post"]
    assert_close(after[:, :pos], before[:, :pos], float32_spread, "earlier positions")  # causal: untouched
    assert (after[:, pos:] - before[:, pos:]).abs().amax(dim=-1).min() > 1e-3


def test_hooks_removed_after_exception(tiny_en):
    def broken(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        tiny_en.run_with_hooks(CLIP, [tiny_en.special.sot], fwd_hooks=[("encoder_blocks.2.mlp.hook_post", broken)])
    assert no_hooks_left(tiny_en)
    with pytest.raises(RuntimeError, match="boom"), tiny_en.hooks(fwd_hooks=[("hook_embed", broken)]):
        tiny_en(CLIP, [tiny_en.special.sot])
    assert no_hooks_left(tiny_en)
    with pytest.raises(RuntimeError, match="boom"):
        tiny_en.generate(CLIP, fwd_hooks=[("decoder_blocks.0.cross_attn.hook_k", broken)])  # during generation
    assert no_hooks_left(tiny_en)
    with pytest.raises(TypeError, match="forward needs tokens"):
        tiny_en.run_with_hooks(CLIP, fwd_hooks=[("decoder_blocks.0.cross_attn.hook_k", broken)])
    assert no_hooks_left(tiny_en)


def test_run_with_cache_without_tokens_encodes_once(tiny_en):
    """run_with_cache(audio) reads the greedy transcript decoded from the same pass's encoder
    output: one encoder run, and the tokens generate writes (without the final end-of-text)."""
    calls = []
    with tiny_en.hooks(fwd_hooks=[("hook_mel", lambda x, hook: calls.append(x.shape))]):
        _, cache = tiny_en.run_with_cache(CLIP, names_filter=["hook_tokens"])
    assert len(calls) == 1
    assert cache["hook_tokens"][0].tolist() == tiny_en.generate(CLIP)[0, :-1].tolist()
    with pytest.raises(ValueError, match="pass tokens or greedy_tokens, not both"):
        tiny_en(CLIP, [tiny_en.special.sot], greedy_tokens=True)


def test_unknown_hook_name_suggests_close_ones(tiny_en):
    with pytest.raises(
        ValueError, match=r"no hook named 'decoder_blocks.0.hook_attn_output'.*decoder_blocks.0.hook_attn_out"
    ):
        tiny_en.run_with_hooks(CLIP, [50257], fwd_hooks=[("decoder_blocks.0.hook_attn_output", lambda x, hook: x)])
    with pytest.raises(ValueError, match="encoder_blocks.1.attn.hook_pattern"):
        tiny_en.run_with_cache(CLIP, [50257], names_filter=["encoder_blocks.1.attn.hook_patern"])
    assert no_hooks_left(tiny_en)


def test_names_filter(tiny_en):
    names = ["decoder_blocks.2.hook_resid_post", "encoder_blocks.0.attn.hook_pattern"]
    _, cache = tiny_en.run_with_cache(CLIP, [50257, 50362], names_filter=names)
    assert sorted(cache.keys()) == sorted(names)
    _, cache = tiny_en.run_with_cache(CLIP, [50257, 50362], names_filter=lambda n: n.endswith("hook_mlp_out"))
    assert len(cache) == tiny_en.cfg.n_encoder_layers + tiny_en.cfg.n_decoder_layers


def test_fused_attention_path_matches_pattern_path(tiny_en, float32_and_float64_runs):
    """Without a hook on the scores or pattern, attention runs through the fused kernel; the
    activations both paths share agree within float32's own error (measured against float64)."""
    _, fused, _, exact = float32_and_float64_runs  # a real clip and its transcript, no pattern hooks
    with torch.no_grad():  # every hook: attention through the explicit pattern
        _, full = tiny_en.run_with_cache(SPREAD_CLIP, fused["hook_tokens"])
    assert not any("pattern" in n for n in fused.keys()) and any("pattern" in n for n in full.keys())
    for name in fused.keys():
        if name != "hook_tokens":
            assert_within_float32_spread(fused[name], full[name], exact[name], name)


def test_backward_hooks(tiny_en):
    grads = {}

    def save_grad(g, hook):
        grads[hook.name] = g.detach().clone()

    name = "decoder_blocks.1.hook_resid_post"
    tiny_en.add_hook(name, save_grad, dir="bwd")
    try:
        acts = {}
        tiny_en.add_hook(name, lambda x, hook: acts.setdefault("x", x))
        logits = tiny_en(CLIP, [50257, 50362, 679])
        loss = logits[0, -1].log_softmax(-1)[373]
        expected = torch.autograd.grad(loss, acts["x"], retain_graph=True)[0]
        loss.backward()
    finally:
        tiny_en.reset_hooks()
        tiny_en.zero_grad(set_to_none=True)
    assert torch.allclose(grads[name], expected)
    assert no_hooks_left(tiny_en)


def test_layer_norm_paths_agree(tiny_en, clean, float32_spread):
    _, cache = clean
    ln = tiny_en.decoder_blocks[2].ln3
    x = cache["decoder_blocks.2.hook_resid_mid_cross"]
    fused = ln(x)
    with tiny_en.hooks(fwd_hooks=[("decoder_blocks.2.ln3.hook_scale", lambda s, hook: None)]):
        explicit = ln(x)
    assert_close(fused, explicit, float32_spread, "LayerNorm")


def test_opt_in_hooks_keep_the_function():
    plain = random_whisper(d_model=128, n_heads=2, n_encoder_layers=1, n_decoder_layers=2)
    cfg = plain.cfg
    rich = HookedWhisper(
        type(cfg)(**{**cfg.to_dict(), "use_attn_result": True, "use_split_qkv_input": True, "use_cross_kv_input": True})
    )
    rich.load_state_dict(plain.state_dict())
    mel, tokens = torch.randn(1, 80, 3000), torch.tensor([[50258, 50259, 50359, 50363, 400]])
    with torch.no_grad():
        ref = plain(mel, tokens)
        logits, cache = rich.run_with_cache(mel, tokens)
        exact = copy.deepcopy(plain).double()(mel.double(), tokens)
    assert_within_float32_spread(logits, ref, exact, "logits with every opt-in hook")
    h, d = cfg.n_heads, cfg.d_model
    assert cache["decoder_blocks.1.hook_cross_k_input"].shape == (1, 1500, h, d)
    assert cache["encoder_blocks.0.hook_q_input"].shape == (1, 1500, h, d)
    result = cache["decoder_blocks.1.cross_attn.hook_result"]
    out = result.sum(-2) + rich.decoder_blocks[1].cross_attn.b_O
    with torch.no_grad():
        exact = copy.deepcopy(rich).double().run_with_cache(mel.double(), tokens)[1]
    name = "decoder_blocks.1.hook_cross_attn_out"
    assert_within_float32_spread(out, cache[name], exact[name], "per-head results summed")


def test_kv_cached_decoding_equals_full_forward_with_hooks(tiny_en, clean, float32_spread):
    """A hook changes every decoding step the same way it changes a teacher-forced forward."""
    _, cache = clean
    tokens = cache["hook_tokens"]
    steer = torch.randn(tiny_en.cfg.d_model) * 2

    def add(x, hook):
        return x + steer

    hooks = [("decoder_blocks.1.hook_mlp_out", add), ("decoder_blocks.0.cross_attn.hook_v", lambda v, hook: v * 0.5)]
    with torch.no_grad(), tiny_en.hooks(fwd_hooks=hooks):
        enc = tiny_en.encode(CLIP)
        full = tiny_en.decode(tokens, enc)
        kv = tiny_en.new_decoder_cache(enc)
        steps = [tiny_en.decode(tokens[:, :3], cache=kv)]
        steps += [tiny_en.decode(tokens[:, i : i + 1], cache=kv) for i in range(3, tokens.shape[1])]
    stepped = torch.cat(steps, dim=1)
    assert_close(stepped, full, float32_spread, "KV-cached vs full")
    with torch.no_grad():
        unhooked = tiny_en.decode(tokens, tiny_en.encode(CLIP))
    assert (unhooked - full).abs().max() > 1e-2


def test_hooks_steer_transcription(tiny_en):
    plain = tiny_en.generate(CLIP)
    ablate = [(f"decoder_blocks.{l}.hook_cross_attn_out", lambda x, hook: torch.zeros_like(x)) for l in range(4)]
    deaf = tiny_en.generate(CLIP, fwd_hooks=ablate, max_new_tokens=30)  # deaf decoding rambles: cap it
    assert not torch.equal(deaf[:, : plain.shape[1]], plain)
    assert torch.equal(tiny_en.generate(CLIP), plain)


def test_stack_views(tiny_en, clean, float32_spread):
    _, cache = clean
    dec, enc = cache.decoder, cache.encoder
    final = cache["decoder_blocks.3.hook_resid_post"]
    parts, labels = dec.decompose_resid(return_labels=True)
    assert labels[:4] == ["embed", "pos_embed", "0_attn_out", "0_cross_attn_out"]
    assert_close(parts.sum(0), final, float32_spread, "decompose_resid")
    heads, head_labels = dec.stack_head_results(return_labels=True, incl_remainder=True)
    assert head_labels[0] == "DL0H0" and "XL3H5" in head_labels
    assert_close(heads.sum(0), final, float32_spread, "stack_head_results")
    resid, res_labels = dec.accumulated_resid(return_labels=True, apply_ln=True)
    assert resid.shape[0] == tiny_en.cfg.n_decoder_layers + 1 and res_labels[-1] == "final_post"
    logits = resid[-1] @ tiny_en.W_U
    assert_close(logits, clean[0], float32_spread, "accumulated_resid to logits")
    enc_parts = enc.decompose_resid()
    assert_close(enc_parts.sum(0), cache["encoder_blocks.3.hook_resid_post"], float32_spread, "encoder parts")
    assert enc.accumulated_resid().shape == (5, 1, 1500, tiny_en.cfg.d_model)


def test_a_filtered_cache_names_what_it_lacks_and_the_fix(tiny_en, clean):
    """A cache filtered to the encoder still serves the encoder view; the decoder view's methods
    (which read hooks renamed ``blocks.{l}``) say which of the model's hooks was left out and what
    to do, instead of a KeyError on a name the user never wrote."""
    _, cache = clean
    encoder_names = [k for k in cache.keys() if tiny_en.hook_layouts[k].is_encoder_side]
    filtered = type(cache)({k: cache[k] for k in encoder_names}, tiny_en)
    assert torch.equal(filtered.encoder.accumulated_resid(), cache.encoder.accumulated_resid())
    with pytest.raises(KeyError, match=r"no 'decoder_blocks.0.hook_resid_pre' \(the decoder view's .*names_filter"):
        filtered.decoder.accumulated_resid()
    with pytest.raises(KeyError, match=r"holds no 'hook_embed'.*names_filter"):
        filtered.decoder.decompose_resid()
    with pytest.raises(KeyError, match=r"'decoder_blocks.0.hook_resid_pr' is not an activation of this model"):
        cache["decoder_blocks.0.hook_resid_pr"]


def test_half_precision_runs_and_stays_close(tiny_en):
    """bfloat16 weights and activations (the dtype a GPU user picks) give nearly the same logits."""
    half = type(tiny_en).from_pretrained("tiny.en", dtype=torch.bfloat16)
    tokens = [50257, 50362, 679, 373, 407]
    with torch.no_grad():
        ref = tiny_en(CLIP, tokens)
        logits, cache = half.run_with_cache(CLIP, tokens, names_filter=["hook_encoder_out"])
    assert logits.dtype == torch.bfloat16 and cache["hook_encoder_out"].dtype == torch.bfloat16
    assert (logits.float().argmax(-1) == ref.argmax(-1)).float().mean() > 0.7
    assert (logits.float() - ref).abs().mean() < 0.5


def test_weight_edits_reach_the_fast_paths(tiny_en):
    """The fused per-head and transposed unembedding copies follow in-place weight edits."""
    tokens = tiny_en.to_tokens(" He was not")
    with torch.no_grad():
        enc = tiny_en.encode(CLIP)
        before = tiny_en.decode(tokens, enc)
        saved = tiny_en.decoder_blocks[0].attn.W_Q.clone(), tiny_en.embed.W_E.clone()
        tiny_en.decoder_blocks[0].attn.W_Q.mul_(2)
        tiny_en.embed.W_E[:, :10].zero_()
        edited = tiny_en.decode(tokens, enc)
        tiny_en.decoder_blocks[0].attn.W_Q.copy_(saved[0])
        tiny_en.embed.W_E.copy_(saved[1])
        restored = tiny_en.decode(tokens, enc)
    assert (edited - before).abs().max() > 1e-2 and torch.equal(restored, before)
