"""Sparse autoencoders: training on stored frames (and resuming), splicing by hook name on both
model families, the latents as hooks for caching, patching, ablation, attribution and generation,
steering, the native / sae-lens / AudioSAE formats, and the dashboard."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import shutil
import subprocess
import wave
from pathlib import Path

import pytest
import torch
from torch import nn

from hooked_whisper import HookedWhisper
from hooked_whisper.hook_layout import SAE_LEAVES
from hooked_whisper.patching import Site, ablate, activation_patch, attribution_patch, frames
from hooked_whisper.probing import extract_activations
from hooked_whisper.saes import (
    SparseAutoencoder,
    TrainConfig,
    evaluate_sae,
    export_sae_lens,
    feature_dashboard,
    import_sae_lens,
    load_audiosae,
    load_sae,
    matched_latents,
    save_sae,
    splice_cost,
    steering_hooks,
    train_sae,
)
from tests.support import assert_within_float32_spread
from tests.toolkit.test_families import SAMPLE_RATE, clip, family, last_logit, tiny_whisper  # noqa: F401 (fixture)


def random_sae(d_in: int, hook: str | None, architecture="topk", d_sae=None, seed=0) -> SparseAutoencoder:
    torch.manual_seed(seed)
    sae = SparseAutoencoder(d_in, d_sae or 4 * d_in, architecture, 8 if architecture == "topk" else None, hook)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
        sae.threshold.uniform_(0, 0.2)
    return sae


@pytest.fixture(scope="module")
def whisper() -> HookedWhisper:
    return tiny_whisper()


# ---------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def frame_store(whisper, tmp_path_factory):
    """Every frame of 10 one-second clips at the last encoder block, in shards of 5 clips."""
    hook = whisper.hook_name("encoder", 1, "hook_resid_post")
    clips = [clip(seed, 1.0) for seed in range(10)]
    folder = tmp_path_factory.mktemp("frames")
    store = extract_activations(
        whisper,
        clips,
        [hook],
        pooling="none",
        out_dir=folder,
        shard_size=5,
        batch_size=5,
        sample_rate=SAMPLE_RATE,
        progress=False,
    )
    return hook, store


SMALL = TrainConfig(
    expansion_factor=4, k=8, batch_frames=100, epochs=16, held_out_every=5, lr=1e-2, shards_per_buffer=2
)


def test_a_trained_autoencoder_explains_held_out_frames_and_resumes(frame_store, tmp_path):
    hook, store = frame_store
    run = train_sae(store, hook, SMALL, out_dir=tmp_path / "whole", progress=False)
    held_out = torch.cat([r for row, r in enumerate(store.rows(hook)) if row % 5 == 4])
    assert run.metrics.frames == len(held_out) == 2 * 50  # clips 4 and 9: 50 frames each, no padding
    # The control: the same autoencoder before training (sparsify's initialisation, same seed).
    torch.manual_seed(SMALL.seed)
    untrained = train_sae(store, hook, SMALL, progress=False, max_steps=0).sae
    before = evaluate_sae(untrained, held_out).fvu
    assert run.metrics.fvu < 0.1 < 0.5 < before, (run.metrics.fvu, before)
    assert run.metrics.l0 <= SMALL.k and 0 <= run.metrics.dead_fraction < 1
    assert evaluate_sae(run.sae, held_out).fvu == pytest.approx(run.metrics.fvu, rel=1e-6)
    assert load_sae(tmp_path / "whole" / "sae").config() == run.sae.config()
    # Stopped halfway and rerun into the same folder: the same batches, the same weights.
    half = run.steps // 2
    first = train_sae(store, hook, SMALL, out_dir=tmp_path / "split", progress=False, max_steps=half)
    assert first.steps == half
    resumed = train_sae(store, hook, SMALL, out_dir=tmp_path / "split", progress=False)
    assert resumed.steps == run.steps and resumed.frames == run.frames
    for name, p in run.sae.state_dict().items():
        assert torch.allclose(resumed.sae.state_dict()[name], p, atol=1e-6), name
    with pytest.raises(ValueError, match="other settings"):
        train_sae(store, hook, TrainConfig(k=4), out_dir=tmp_path / "split", progress=False)


def test_latents_matched_across_runs_by_decoder_cosine():
    sae = random_sae(64, None)
    rotated = copy.deepcopy(sae)
    with torch.no_grad():  # half the latents kept (reordered, rescaled), half replaced by random directions
        rotated.W_dec[:128] = 3 * sae.W_dec[:128].flip(0)
        rotated.W_dec[128:] = torch.randn(128, 64)
    assert matched_latents(sae, sae).all()
    # Random directions in 64 dimensions sit near cosine 0 (spread 1/8): none reaches 0.7.
    assert matched_latents(sae, rotated).tolist() == [True] * 128 + [False] * 128


def test_training_refuses_pooled_activations(whisper):
    hook = whisper.hook_name("encoder", 1, "hook_resid_post")
    store = extract_activations(whisper, [clip(0, 1.0)], [hook], sample_rate=SAMPLE_RATE, progress=False)
    with pytest.raises(ValueError, match="pooling='none'"):
        train_sae(store, hook, SMALL, progress=False)


# ---------------------------------------------------------------------------------------- splicing
def test_splicing_with_the_error_term_leaves_the_forward_unchanged(family):  # noqa: F811
    model, hook = family.model, family.model.hook_name("encoder", 1, "hook_resid_post")
    sae = random_sae(model.cfg.audio.d_model if hasattr(model.cfg, "audio") else model.cfg.d_model, hook)
    kw = dict(sample_rate=SAMPLE_RATE)
    exact_model, exact_sae = copy.deepcopy(model).double(), copy.deepcopy(sae).double()
    with torch.no_grad():
        plain = model(family.base, family.tokens, **kw)
        exact = exact_model(family.base, family.tokens, **kw)
        with model.saes({hook: sae}, use_error_term=True):
            spliced = model(family.base, family.tokens, **kw)
        with exact_model.saes({hook: exact_sae}, use_error_term=True):
            assert torch.allclose(exact_model(family.base, family.tokens, **kw), exact, atol=1e-12)
        with model.saes([sae]):  # no error term: the reconstruction goes on
            replaced = model(family.base, family.tokens, **kw)
    assert_within_float32_spread(spliced, plain, exact, "logits with the error term")
    assert (replaced - plain).abs().max() > 100 * (spliced - plain).abs().max()


def test_no_hook_outlives_its_block(family):  # noqa: F811
    model, hook = family.model, family.model.hook_name("decoder", 0, "hook_mlp_out")
    before = (set(model.hook_dict), set(model.hook_layouts), dict(model.named_parameters()).keys())
    with pytest.raises(RuntimeError, match="inside"), model.saes({hook: random_sae(model.W_U.shape[0], hook)}):
        assert model.sae_hook_name(hook) in model.hook_dict
        raise RuntimeError("inside")
    assert (set(model.hook_dict), set(model.hook_layouts), dict(model.named_parameters()).keys()) == before
    assert not model.hook_dict[hook].fwd_hooks and not model.hook_dict[hook]._forward_hooks
    with pytest.raises(ValueError, match="exist inside `with model.saes"):
        model.check_hook_name(model.sae_hook_name(hook))
    with pytest.raises(ValueError, match="already spliced"), model.saes({hook: random_sae(4, hook)}):
        with model.saes({hook: random_sae(4, hook)}):
            pass
    with pytest.raises(ValueError, match="an autoencoder's own hook"), model.saes({hook: random_sae(4, hook)}):
        with model.saes({model.sae_hook_name(hook, "hook_sae_recons"): random_sae(4, None)}):
            pass
    with (
        pytest.raises(ValueError, match="reads vectors of 7"),
        torch.no_grad(),
        model.saes({hook: random_sae(7, hook)}),
    ):
        model(family.base, family.tokens, sample_rate=SAMPLE_RATE)
    assert set(model.hook_dict) == before[0]


def test_latents_are_hooks_for_caching_patching_ablation_and_attribution(family):  # noqa: F811
    model = family.model
    encoder_hook = model.hook_name("encoder", 1, "hook_resid_post")
    decoder_hook = model.hook_name("decoder", 1, "hook_resid_post")
    d_audio = model.cfg.audio.d_model if hasattr(model.cfg, "audio") else model.cfg.d_model
    saes = {encoder_hook: random_sae(d_audio, encoder_hook), decoder_hook: random_sae(model.W_U.shape[0], decoder_hook)}
    kw = dict(tokens=family.tokens, sample_rate=SAMPLE_RATE)
    with model.saes(saes, use_error_term=True):
        with torch.no_grad():
            _, cache = model.run_with_cache(family.base, family.tokens, sample_rate=SAMPLE_RATE)
        for hook, sae in saes.items():
            acts = cache[model.sae_hook_name(hook)]
            n_positions = cache[hook].shape[1]
            assert acts.shape == (1, n_positions, sae.d_sae)
            assert ((acts != 0).sum(-1) <= sae.k).all()
            for leaf in SAE_LEAVES:
                width = sae.d_sae if "acts" in leaf else sae.d_in
                assert cache[model.sae_hook_name(hook, leaf)].shape == (1, n_positions, width), leaf
            layout, parent = model.hook_layout(model.sae_hook_name(hook)), model.hook_layout(hook)
            assert (layout.stack, layout.layer, layout.unit, layout.head_axis) == (parent.stack, 1, parent.unit, None)
        acts_hook = model.sae_hook_name(decoder_hook)
        # Patching a latent from the same clip changes nothing; zeroing the latents with the error
        # term kept removes exactly the reconstruction minus b_dec.
        same = activation_patch(model, family.base, family.base, Site(acts_hook), last_logit, progress=False, **kw)
        baseline = last_logit(model(family.base, family.tokens, sample_rate=SAMPLE_RATE))
        assert torch.allclose(same, baseline, atol=1e-5)
        window = Site(model.sae_hook_name(encoder_hook), positions=frames(0.5, 1.0))
        zeroed = ablate(model, family.base, [window, Site(acts_hook)], last_logit, progress=False, **kw)
        assert zeroed.shape == (2,) and not torch.allclose(zeroed, baseline.expand(2))
        estimates = attribution_patch(model, family.base, family.other, last_logit, hooks=[acts_hook], **kw)
        assert torch.isfinite(estimates[acts_hook]) and estimates[acts_hook] != 0
        # During generation the decoder latents fire at each new position, KV cache and all.
        steps = []
        hooks = [(acts_hook, lambda x, hook: steps.append(x.shape[1]))]
        model.generate(family.base, fwd_hooks=hooks, sample_rate=SAMPLE_RATE, max_new_tokens=3)
        assert len(steps) >= 2 and steps[1:] == [1] * (len(steps) - 1)


def test_the_splice_cost_is_zero_for_a_lossless_autoencoder(whisper):
    """ReLU(x) - ReLU(-x) is x: an autoencoder with W_enc = [I, -I] and W_dec = [I; -I] reconstructs
    exactly, so splicing it costs nothing; a random one costs loss and words."""
    hook, d = whisper.hook_name("encoder", 1, "hook_resid_post"), whisper.cfg.d_model
    lossless = SparseAutoencoder(d, 2 * d, "relu", hook_name=hook)
    with torch.no_grad():
        identity = torch.eye(d)
        lossless.W_enc.copy_(torch.cat([identity, -identity], 1))
        lossless.W_dec.copy_(torch.cat([identity, -identity], 0))
    clips = [clip(0), clip(1)]
    kw = dict(sample_rate=SAMPLE_RATE, progress=False, max_new_tokens=4)
    free = splice_cost(whisper, lossless, clips, references=["a b", "c"], **kw)
    assert free.tokens > 0 and free.wer_vs_clean == 0 and free.wer_clean_vs_reference == free.wer_spliced_vs_reference
    assert free.delta_loss == 0  # each product has one nonzero term, times one: exact in float32
    costly = splice_cost(whisper, random_sae(d, hook), clips, **kw)
    assert costly.delta_loss != 0 and costly.wer_vs_clean > 0 and costly.wer_clean_vs_reference is None


# ---------------------------------------------------------------------------------------- steering
def test_steering_adds_or_clamps_latents_in_a_time_window(whisper):
    hook = whisper.hook_name("encoder", 1, "hook_resid_post")
    sae = random_sae(whisper.cfg.d_model, hook, "relu")
    audio = clip(0)
    with torch.no_grad():
        _, cache = whisper.run_with_cache(audio, whisper.prompt_tokens(), names_filter=[hook], sample_rate=SAMPLE_RATE)
    x = cache[hook]
    inside = list(range(25, 50))  # 0.5-1.0 s at 50 audio positions per second
    outside = [p for p in range(x.shape[1]) if p not in inside]
    for kind in ("add", "clamp"):
        if kind == "add":
            hooks = steering_hooks(whisper, hook, sae=sae, latents={3: 2.0}, scale=0.5, positions=frames(0.5, 1.0))
            expected = x[:, inside] + 0.5 * 2.0 * sae.W_dec[3]
        else:
            hooks = steering_hooks(whisper, hook, sae=sae, latents=[3], mode="clamp", positions=frames(0.5, 1.0))
            expected = x[:, inside] - sae.encode(x[:, inside])[..., 3:4] * sae.W_dec[3]
        with torch.no_grad(), whisper.hooks(fwd_hooks=hooks):
            _, steered = whisper.run_with_cache(
                audio, whisper.prompt_tokens(), names_filter=[hook], sample_rate=SAMPLE_RATE
            )
        assert torch.equal(steered[hook][:, outside], x[:, outside])
        assert torch.allclose(steered[hook][:, inside], expected, atol=1e-5)
    # Transcription takes the hooks too (a direction of the width, any norm).
    hooks = steering_hooks(whisper, hook, direction=torch.randn(whisper.cfg.d_model), positions=range(0, 10))
    options = dict(temperature=0.0, max_new_tokens=3, sample_rate=SAMPLE_RATE)
    assert isinstance(whisper.transcribe(audio, fwd_hooks=hooks, **options).text, str)
    with pytest.raises(ValueError, match="give one of direction=, latents="):
        steering_hooks(whisper, hook)
    with pytest.raises(ValueError, match="latents \\[9999\\] out of range"):
        steering_hooks(whisper, hook, sae=sae, latents=[9999])


# ---------------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("architecture", ["topk", "jumprelu", "batchtopk", "relu"])
def test_native_and_sae_lens_formats_round_trip(architecture, tmp_path):
    sae = random_sae(16, "decoder_blocks.1.attn.hook_z", architecture, d_sae=40)
    x = torch.randn(5, 16)
    native = load_sae(save_sae(sae, tmp_path / "native"))
    assert native.config() == sae.config()
    folder = export_sae_lens(sae, tmp_path / "lens", model_name="tiny")
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["meta"]["hook_name"] == "decoder_blocks.1.attn.hook_z" and cfg["reshape_activations"] == "hook_z"
    assert (cfg["d_in"], cfg["d_sae"]) == (16, 40)
    assert cfg["architecture"] == {"topk": "topk", "relu": "standard"}.get(architecture, "jumprelu")
    from safetensors.torch import load_file

    weights = load_file(str(folder / "sae_weights.safetensors"))
    assert weights["W_enc"].shape == (16, 40) and weights["W_dec"].shape == (40, 16)
    back = import_sae_lens(folder)
    assert back.hook_name == sae.hook_name
    for other in (native, back):
        assert torch.equal(other(x), sae(x)) and torch.equal(other.encode(x), sae.encode(x))
    cfg["normalize_activations"] = "expected_average_only_in"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="normalize_activations='expected_average_only_in' is not supported"):
        import_sae_lens(folder)


def test_an_audiosae_checkpoint_reads_the_mapped_hook(whisper, tmp_path):
    """AudioSAE's published layout (8x latents, k=50, BatchTopK threshold) with random values."""
    d_in, d_sae, layer = whisper.cfg.d_model, 8 * whisper.cfg.d_model, 2  # layer_2: the second block
    torch.manual_seed(1)
    state = {
        "encoder.weight": torch.randn(d_sae, d_in) / d_in**0.5,
        "encoder.bias": torch.randn(d_sae) * 0.1,
        "decoder.weight": torch.randn(d_in, d_sae) / d_sae**0.5,
        "b_dec": torch.randn(d_in) * 0.1,
        "k": torch.tensor(50),
        "threshold": torch.tensor(0.3),
    }
    folder = tmp_path / "Audio-SAE-Whisper-tiny" / f"layer_{layer}"
    folder.mkdir(parents=True)
    torch.save(state, folder / "ae.pt")
    trainer = {"dict_class": "BatchTopKSAE", "activation_dim": d_in, "dict_size": d_sae, "k": 50, "layer": layer}
    (folder / "config.json").write_text(json.dumps({"trainer": trainer}))
    sae = load_audiosae(folder.parent, layer=layer, model=whisper)
    assert sae.hook_name == "encoder_blocks.1.hook_resid_post" == whisper.hook_name("encoder", 1, "hook_resid_post")
    assert load_audiosae(folder).hook_name == sae.hook_name
    audio = clip(2)
    with torch.no_grad():
        _, plain = whisper.run_with_cache(
            audio, whisper.prompt_tokens(), names_filter=[sae.hook_name], sample_rate=SAMPLE_RATE
        )
        with whisper.saes([sae], use_error_term=True):
            names = [whisper.sae_hook_name(sae.hook_name, leaf) for leaf in ("hook_sae_input", "hook_sae_acts_post")]
            _, cache = whisper.run_with_cache(
                audio, whisper.prompt_tokens(), names_filter=names, sample_rate=SAMPLE_RATE
            )
    x = plain[sae.hook_name]
    assert torch.equal(cache[names[0]], x)
    post = torch.relu((x - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])
    assert torch.allclose(cache[names[1]], post * (post > 0.3), atol=1e-5)
    with pytest.raises(ValueError, match="outside this model's encoder"):
        load_audiosae(folder.parent, layer=3, model=whisper)


def test_a_pickled_module_is_refused_with_how_to_convert(tmp_path):
    folder = tmp_path / "layer_1"
    folder.mkdir()
    torch.save(nn.Linear(4, 8), folder / "ae.pt")  # a whole module, as some releases ship
    with pytest.raises(ValueError, match=r"pickled Python object.*refused.*state_dict\(\)"):
        load_audiosae(folder)


# ---------------------------------------------------------------------------------------- dashboard
def test_the_dashboard_is_one_self_contained_page(whisper, tmp_path):
    hook = whisper.hook_name("encoder", 1, "hook_resid_post")
    sae = random_sae(whisper.cfg.d_model, hook)
    clips = [clip(seed, 1.5) for seed in range(3)]
    page = feature_dashboard(
        whisper, sae, clips, tmp_path / "sae.html", n_latents=2, top=2, progress=False, sample_rate=SAMPLE_RATE
    )
    text = page.read_text()
    data = json.loads(re.search(r'<script type="application/json" id="dashboard-data">(.*?)</script>', text, re.S)[1])
    assert data["summary"]["hook"] == hook and data["summary"]["frames"] == 3 * 75  # 1.5 s at 50 per second
    assert len(data["latents"]) == 2 and text.count('<section class="latent"') == 2
    moments = sum(len(latent["moments"]) for latent in data["latents"])
    assert moments > 0 and text.count("<audio controls") == moments == text.count("data:image/png;base64,")
    assert not re.search(r'(src|href)="(?!data:)', text)  # nothing fetched from anywhere
    clip_audio = re.search(r'data:audio/wav;base64,([^"]+)"', text)[1]
    with wave.open(io.BytesIO(base64.b64decode(clip_audio))) as f:
        assert f.getframerate() == SAMPLE_RATE and 0 < f.getnframes() <= 1.2 * SAMPLE_RATE + 1
    assert base64.b64decode(re.search(r'data:image/png;base64,([^"]+)"', text)[1])[:4] == b"\x89PNG"
    # A decoder hook's latents also list the tokens their decoder direction promotes.
    decoder_hook = whisper.hook_name("decoder", 1, "hook_resid_post")
    decoder_sae = random_sae(whisper.cfg.d_model, decoder_hook)
    tokens = [whisper.prompt_tokens() + [300, 400, 500]]
    page = feature_dashboard(
        whisper,
        decoder_sae,
        clips[:1],
        tmp_path / "dec.html",
        n_latents=1,
        progress=False,
        tokens=tokens,
        sample_rate=SAMPLE_RATE,
    )
    data = json.loads(re.search(r'id="dashboard-data">(.*?)</script>', page.read_text(), re.S)[1])
    assert len(data["latents"][0]["promoted_tokens"]) == 10
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("no /usr/bin/chromium: the page's structure is checked, not its rendering")
    shot = tmp_path / "dashboard.png"
    args = [str(chromium), "--headless", "--no-sandbox", "--disable-gpu"]
    dom = subprocess.run([*args, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=60).stdout
    assert 'class="latent"' in dom
    subprocess.run([*args, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=60)
    assert shot.is_file() and shot.stat().st_size > 0
    shutil.copy(shot, tmp_path / "kept.png")
