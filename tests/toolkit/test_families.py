"""The toolkit on both model families: a tiny random HookedWhisper and a tiny random
HookedQwen2Audio, each built from its config alone (no checkpoint, no ``transformers``; the
audio LLM's tokenizer is a word-level ``tokenizers`` model written to a temporary file). Every
tool that both families support runs on both through the same calls; the tools that need a
decoder with cross-attention refuse the audio LLM in one line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hooked_whisper import HookedQwen2Audio, HookedWhisper, HookedWhisperConfig
from hooked_whisper.config import HookedQwen2AudioConfig
from hooked_whisper.decoding import DecodingOptions
from hooked_whisper.hook_layout import get_act_name
from hooked_whisper.lens import encoder_lens, logit_attribution, logit_lens
from hooked_whisper.patching import (
    Receiver,
    Site,
    ablate,
    activation_patch,
    attribution_patch,
    cross_attention_receivers,
    frames,
    head_sites,
    kl_divergence,
    layer_sites,
    logit_diff,
    mean_activations,
    patch_hooks,
    path_patch,
    position_sites,
    target_log_prob,
    window_sites,
)
from hooked_whisper.probing import extract_activations, train_probes
from hooked_whisper.qwen2_audio import TextTokenizer
from hooked_whisper.saes import SparseAutoencoder, feature_dashboard, splice_cost, steering_hooks
from tests.support import random_whisper

SAMPLE_RATE = 16000
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
WORDS = ["system", "user", "assistant", "Audio", "1:", "You", "are", "a", "helpful", "Transcribe", "the", "audio."]


def tiny_whisper() -> HookedWhisper:
    return random_whisper(d_model=64, n_heads=2, d_head=32, n_encoder_layers=2, n_decoder_layers=2, d_vocab=51864)


def tiny_qwen2_audio(folder) -> HookedQwen2Audio:
    """A random audio LLM with grouped-query attention (4 query heads, 2 key/value groups) and a
    word-level tokenizer holding the chat and audio specials, so that the default prompt works."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *WORDS])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)
    path = folder / "tokenizer.json"
    tok.save(str(path))
    audio = HookedWhisperConfig(
        d_model=64, n_heads=2, d_head=32, n_encoder_layers=2, n_decoder_layers=0, n_mels=128, d_vocab=0
    )
    cfg = HookedQwen2AudioConfig(
        audio=audio,
        d_model=48,
        n_layers=2,
        n_heads=4,
        n_key_value_heads=2,
        d_mlp=96,
        d_vocab=tok.get_vocab_size(),
        audio_token_id=tok.token_to_id("<|AUDIO|>"),
        eos_token_ids=(tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")),
    )
    torch.manual_seed(0)
    model = HookedQwen2Audio(cfg, TextTokenizer(path)).eval()
    with torch.no_grad():  # random init leaves biases at zero and norms at one: perturb them
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("b_") or leaf in ("w", "b"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def clip(seed: int, seconds: float = 2.0) -> torch.Tensor:
    """Noise with a tone whose pitch depends on ``seed``: two clips differ everywhere."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return 0.1 * torch.sin(2 * torch.pi * (200 + 100 * seed) * t) + 0.02 * torch.randn(len(t), generator=generator)


@pytest.fixture(scope="module", params=["whisper", "qwen2_audio"])
def family(request, tmp_path_factory) -> SimpleNamespace:
    """A model, two clips and the decoder tokens both runs read."""
    base, other = clip(0), clip(1)
    if request.param == "whisper":
        model = tiny_whisper()
        tokens = torch.tensor([model.prompt_tokens() + [model.special.eot - 100, model.special.eot - 50]])
    else:
        model = tiny_qwen2_audio(tmp_path_factory.mktemp("qwen2_audio"))
        tokens = model.tokens_for(model.to_mel(base, SAMPLE_RATE), None)  # the default transcription prompt
    return SimpleNamespace(model=model, base=base, other=other, tokens=tokens)


def last_logit(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1].log_softmax(-1)[:, 3]


def run(family, audio) -> torch.Tensor:
    with torch.no_grad():
        return family.model(audio, family.tokens, sample_rate=SAMPLE_RATE)


def test_hook_names_come_from_one_place(family):
    model = family.model
    for stack in ("encoder", "decoder"):
        for layer in range(model.layer_count(stack)):
            name = model.hook_name(stack, layer, "hook_resid_post")
            assert (
                name
                == get_act_name(model, stack, layer, "hook_resid_post")
                == get_act_name(model.hook_naming, stack, layer, "hook_resid_post")
            )
            layout = model.hook_layout(name)
            assert (layout.stack, layout.layer) == (stack, layer)
        attn = model.hook_layout(model.hook_name(stack, 0, "attn.hook_z"))
        assert model.head_count(stack) == model.head_count(attn)
    decoder_prefix = "decoder_blocks" if isinstance(model, HookedWhisper) else "blocks"
    assert model.hook_name("decoder", 1, "hook_mlp_out") == f"{decoder_prefix}.1.hook_mlp_out"
    with pytest.raises(ValueError, match="decoder layer 9 out of range"):
        model.hook_name("decoder", 9, "hook_resid_post")
    with pytest.raises(ValueError, match="stack must be 'encoder' or 'decoder'"):
        model.hook_name("middle", 0, "hook_resid_post")
    with pytest.raises(ValueError, match="no hook named"):
        model.hook_name("encoder", 0, "hook_resid_middle")


@pytest.mark.filterwarnings("ignore:Glyph .* missing from font")  # random weights predict any script
def test_run_with_cache_and_the_logit_lens(family, tmp_path):
    model = family.model
    with torch.no_grad():
        logits, cache = model.run_with_cache(family.base, family.tokens, sample_rate=SAMPLE_RATE)
    # Caching every pattern takes attention off the fused kernel: equal up to float32 rounding.
    assert torch.allclose(logits, run(family, family.base), atol=1e-5)
    n_layers = model.layer_count("decoder")
    assert cache[model.hook_name("decoder", n_layers - 1, "hook_resid_post")].shape[:2] == family.tokens.shape
    lens = logit_lens(model, cache, k=2)
    assert lens.labels == ["embed"] + [f"block {l}" for l in range(n_layers)]
    assert torch.equal(lens.final_token, logits.argmax(-1))
    table = lens.table(model)
    assert len(table) == n_layers + 1
    # The last row spells the model's own predictions, token by token.
    assert table[-1].endswith(" ".join(repr(t)[1:-1] for t in model.to_str_tokens(lens.final_token[0])))
    pytest.importorskip("matplotlib")
    from hooked_whisper.plots import plot_logit_lens

    assert plot_logit_lens(lens, model, tmp_path / "lens.png") is not None and (tmp_path / "lens.png").stat().st_size


def test_head_and_layer_sites_patch_on_both_families(family):
    model = family.model
    heads = head_sites(model, "decoder")
    reader = "XL" if model.has_cross_attention else "DL"  # the heads that read the audio
    assert [s.label for s in heads[:2]] == [f"{reader}0H0", f"{reader}0H1"]
    assert len(heads) == model.layer_count("decoder") * model.head_count("decoder")
    sites = (
        heads[:3]
        + head_sites(model, "encoder")[:2]
        + layer_sites(model, "decoder:hook_resid_post")
        + layer_sites(model, "encoder:hook_mlp_out")
    )
    template = model.hook_name("encoder", 0, "hook_attn_out").replace(".0.", ".{l}.")
    assert [s.hook for s in layer_sites(model, template)] == [
        model.hook_name("encoder", l, "hook_attn_out") for l in range(model.layer_count("encoder"))
    ]
    kw = dict(tokens=family.tokens, sample_rate=SAMPLE_RATE, progress=False)
    same = activation_patch(model, family.base, family.base, sites, last_logit, **kw)
    baseline = last_logit(run(family, family.base))
    assert torch.allclose(same, baseline.expand(len(sites)), atol=1e-5)
    # The last decoder layer's whole residual stream from the other clip is the other clip's run.
    last = layer_sites(model, "decoder:hook_resid_post")[-1]
    moved = activation_patch(model, family.base, family.other, [last], last_logit, **kw)
    assert torch.allclose(moved, last_logit(run(family, family.other)), atol=1e-5)
    # A time window on the last encoder block, in seconds, on either family.
    window = Site(model.hook_name("encoder", 1, "hook_resid_post"), positions=frames(0.5, 1.0))
    assert activation_patch(model, family.base, family.other, window, last_logit, **kw).shape == (1,)


def test_ablation_and_attribution_patching(family):
    model = family.model
    sites = layer_sites(model, "decoder:hook_mlp_out")
    kw = dict(tokens=family.tokens, sample_rate=SAMPLE_RATE)
    zeroed = ablate(model, family.base, sites, last_logit, kind="zero", progress=False, **kw)
    assert zeroed.shape == (len(sites),) and torch.isfinite(zeroed).all()
    estimates = attribution_patch(model, family.base, family.other, last_logit, **kw)
    z = model.hook_name("decoder", 0, "attn.hook_z")
    assert estimates[z].shape == (model.head_count("decoder"),)
    assert set(estimates) >= {model.hook_name(stack, 0, "hook_mlp_out") for stack in ("encoder", "decoder")}


def test_extract_activations_to_memory_and_to_a_folder_and_probes(family, tmp_path):
    model = family.model
    hooks = [model.hook_name("encoder", 1, "hook_resid_post"), model.hook_name("decoder", 1, "hook_resid_post")]
    clips = [clip(seed, 1.0) for seed in range(6)]
    kw = dict(decoder_pooling="prompt_end", sample_rate=SAMPLE_RATE, progress=False, batch_size=2)
    store = extract_activations(model, clips, hooks, **kw)
    assert store[hooks[1]].shape == (6, model.cfg.d_model)
    # Into shards on disk, read back lazily: the same batches, so the same numbers.
    sharded = extract_activations(model, clips, hooks, out_dir=tmp_path / "acts", shard_size=4, **kw)
    for hook in hooks:
        assert torch.equal(sharded[hook], store[hook])
    report = train_probes(store, ["low", "high"] * 3, folds=2, permutations=2, l2=1.0, device="cpu")
    assert [r.layer for r in report.results] == [1, 1]
    pytest.importorskip("matplotlib")
    from hooked_whisper.plots import plot_probes

    plot_probes({type(model).__name__: report}, tmp_path / "probes.png", chance=0.5)
    assert (tmp_path / "probes.png").stat().st_size > 0


def test_logit_metrics_on_a_generated_continuation(family):
    """The metrics read the same logits on both families; a patch of a run with itself leaves
    each unchanged (KL zero), and the generated part is told apart from the prompt on both."""
    model = family.model
    out = model.generate(family.base, max_new_tokens=3, sample_rate=SAMPLE_RATE)
    start = model.prompt_length(out[0])
    assert start < model.real_length(out[0]) <= out.shape[1]
    with torch.no_grad():
        reference = model(family.base, out, sample_rate=SAMPLE_RATE)
    site = layer_sites(model, "decoder:hook_mlp_out")[:1]
    kw = dict(tokens=out, sample_rate=SAMPLE_RATE, progress=False)
    metrics = (logit_diff(3, 4), target_log_prob(out, start), kl_divergence(reference))

    def all_three(logits: torch.Tensor) -> torch.Tensor:  # one patched run, every metric: [batch, 3]
        return torch.stack([metric(logits) for metric in metrics], -1)

    same = activation_patch(model, family.base, family.base, site, all_three, **kw)
    assert torch.allclose(same, all_three(reference), atol=1e-5)
    last = layer_sites(model, "decoder:hook_resid_post")[-1:]
    zeroed = ablate(model, family.base, last, kl_divergence(reference), kind="zero", **kw)
    assert float(zeroed[0]) > 1e-3  # the last residual stream zeroed: nothing the blocks computed is left


def test_autoencoder_cost_steering_and_dashboard(family, tmp_path):
    model = family.model
    hook = model.hook_name("encoder", 1, "hook_resid_post")
    torch.manual_seed(0)
    d_audio = model.blocks_of("encoder")[1].ln2.w.shape[0]  # the audio stream's width
    sae = SparseAutoencoder(d_audio, 32, "relu", hook_name=hook)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
    cost = splice_cost(model, sae, [family.base], sample_rate=SAMPLE_RATE, progress=False, max_new_tokens=3)
    assert cost.tokens > 0 and cost.loss_spliced != cost.loss_clean
    steer = steering_hooks(model, hook, sae=sae, latents={3: 2.0}, positions=frames(0.5, 1.0))
    assert not torch.allclose(run_with(family, steer), run(family, family.base))
    page = feature_dashboard(
        model, sae, [family.base], tmp_path / "sae.html", n_latents=1, top=1, progress=False, sample_rate=SAMPLE_RATE
    )
    assert page.read_text().count('<section class="latent"') == 1


def run_with(family, hooks) -> torch.Tensor:
    with torch.no_grad(), family.model.hooks(fwd_hooks=hooks):
        return run(family, family.base)


def test_path_patching_from_the_audio(family):
    model = family.model
    receivers = cross_attention_receivers(model, via="v")[:2]
    kw = dict(tokens=family.tokens, sample_rate=SAMPLE_RATE, progress=False)
    sender = model.hook_name("encoder", 0, "hook_mlp_out")
    same = path_patch(model, family.base, family.base, sender, receivers, last_logit, **kw)
    assert torch.allclose(same, last_logit(run(family, family.base)).expand(2), atol=1e-5)
    moved = path_patch(model, family.base, family.other, sender, receivers, last_logit, **kw)
    assert moved.shape == (2,) and torch.isfinite(moved).all()


def test_what_a_family_cannot_do_is_refused_in_one_line(family):
    model = family.model
    kw = dict(tokens=family.tokens, sample_rate=SAMPLE_RATE, progress=False)
    decoder_sender = model.hook_name("decoder", 0, "hook_attn_out")
    if model.has_cross_attention:
        with torch.no_grad():
            _, cache = model.run_with_cache(family.base, family.tokens, sample_rate=SAMPLE_RATE)
        assert len(logit_attribution(model, cache, token=3).labels) > 0
        moved = path_patch(
            model, family.base, family.other, decoder_sender, [Receiver(1, 0, "q", "attn")], last_logit, **kw
        )
        assert moved.shape == (1,)
        return
    needs = "needs an encoder-decoder model: HookedQwen2Audio's language model reads audio embeddings"
    with pytest.raises(ValueError, match=f"^encoder_lens {needs}"):
        encoder_lens(model, family.base)
    with torch.no_grad():
        _, cache = model.run_with_cache(family.base, family.tokens, sample_rate=SAMPLE_RATE)
    with pytest.raises(ValueError, match=f"^logit_attribution {needs}"):
        logit_attribution(model, cache, token=3)
    with pytest.raises(ValueError, match=f"^cross-attention head sites {needs}"):
        head_sites(model, "decoder", "cross_attn")
    with pytest.raises(ValueError, match="in an audio LLM, path patching runs from an audio-side sender"):
        path_patch(model, family.base, family.other, decoder_sender, [Receiver(1, 0, "q", "attn")], last_logit, **kw)
    with pytest.raises(ValueError, match="^HookedQwen2Audio.transcribe: long-form transcription seeks .* timestamp"):
        model.transcribe(family.base, sample_rate=SAMPLE_RATE)
    with pytest.raises(ValueError, match="^HookedQwen2Audio.detect_language: .* language tokens"):
        model.detect_language(family.base, sample_rate=SAMPLE_RATE)


def test_generate_and_prompts_share_one_vocabulary(family):
    """The same call on both: generate(audio, DecodingOptions, **overrides) continues the family's
    default prompt (prompt_tokens(), its ids); an unknown keyword is a TypeError on both, and
    what only Whisper's decoder has is refused on the audio LLM, naming the family."""
    model = family.model
    prompt = model.prompt_tokens()
    assert isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)
    out = model.generate(family.base, DecodingOptions(max_new_tokens=3), sample_rate=SAMPLE_RATE)
    default = model.tokens_for(model.to_mel(family.base, SAMPLE_RATE), None if model.has_cross_attention else prompt)
    n_prompt = len(prompt) if model.has_cross_attention else default.shape[1]  # placeholders expanded per clip
    assert out.shape[0] == 1 and n_prompt < out.shape[1] <= n_prompt + 3
    if not model.has_cross_attention:
        assert torch.equal(out[:, :n_prompt], default)
    else:
        assert out[0, : len(prompt)].tolist() == prompt
    with pytest.raises(TypeError, match="unknown decoding option"):
        model.generate(family.base, sample_rate=SAMPLE_RATE, beams=2)
    if not model.has_cross_attention:
        with pytest.raises(ValueError, match="^HookedQwen2Audio.generate decodes greedily .*: beam_size are Whisper"):
            model.generate(family.base, beam_size=2, sample_rate=SAMPLE_RATE)
        # A placeholder the model generates itself is read as a token (no audio at a cached step),
        # while a prompt's placeholders need the audio.
        from hooked_whisper.qwen2_audio import LanguageModelCache

        cache = LanguageModelCache.empty(model.layer_count("decoder"))
        with torch.no_grad():
            model.decode(default, model.encode(family.base, SAMPLE_RATE), cache)
            step = model.decode(torch.tensor([[model.cfg.audio_token_id]]), cache=cache)
        assert step.shape == (1, 1, model.cfg.d_vocab) and torch.isfinite(step).all()
        with pytest.raises(ValueError, match="hold audio placeholders: pass the audio embeddings"):
            model.decode(default)


def test_position_and_window_sweeps_mean_ablation_and_generation_interventions(family):
    model = family.model
    kw = dict(tokens=family.tokens, sample_rate=SAMPLE_RATE, progress=False)
    audio_hook = model.hook_name("encoder", 1, "hook_resid_post")
    sites = window_sites(audio_hook, 2.0) + position_sites(model.hook_name("decoder", 0, "hook_resid_post"), 2)
    assert len(sites) == 6
    same = activation_patch(model, family.base, family.base, sites, last_logit, **kw)
    assert torch.allclose(same, last_logit(run(family, family.base)).expand(len(sites)), atol=1e-5)
    mlp = layer_sites(model, "decoder:hook_mlp_out")
    means = mean_activations(model, [family.base, family.other], [s.hook for s in mlp], family.tokens, SAMPLE_RATE)
    meaned = ablate(model, family.base, mlp, last_logit, kind="mean", reference=[family.base, family.other], **kw)
    with torch.no_grad(), model.hooks(fwd_hooks=patch_hooks(model, mlp[:1], [means[mlp[0].hook]])):
        assert torch.allclose(meaned[0], last_logit(run(family, family.base))[0], atol=1e-5)
    # An intervention during generation: the last decoder layer's residual zeroed at every step.
    calls = []
    hooks = patch_hooks(model, [layer_sites(model, "decoder:hook_resid_post")[-1]], [0.0])
    hooks.append((hooks[0][0], lambda x, hook: calls.append(x.shape[1])))
    out = model.generate(family.base, max_new_tokens=2, fwd_hooks=hooks, sample_rate=SAMPLE_RATE)
    n_prompt = calls[0]  # the prompt's pass, then one position per new token
    assert calls[1:] == [1] * (len(calls) - 1) and out.shape[1] > n_prompt
    with torch.no_grad(), model.hooks(fwd_hooks=hooks[:1]):
        forced = model(family.base, out[:, :n_prompt], sample_rate=SAMPLE_RATE)
    assert int(out[0, n_prompt]) == int(forced[0, -1].argmax())
