"""Activation patching, ablation, path patching and attribution patching: equivalences that
must hold exactly, agreement of the gradient estimate with real patching, and bad input."""

from __future__ import annotations

import copy

import pytest
import torch

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
    patch_hooks,
    path_patch,
    position_sites,
    target_log_prob,
)
from tests.support import (
    DATA,
    assert_close,
    assert_within_float32_spread,
    random_whisper,
    relative_float32_error,
    spread_bound,
)

CLEAN = DATA / "librivox_0880.wav"


def audible(model):
    """Random init keeps the conv stem tiny next to the position table and cross-attention tiny
    next to the token embeddings, so the audio barely reaches the logits; scale both up."""
    with torch.no_grad():
        model.encoder_embed.W_conv1.mul_(30)
        model.encoder_embed.W_conv2.mul_(30)
        for block in model.decoder_blocks:
            block.cross_attn.W_V.mul_(10)
            block.cross_attn.W_O.mul_(10)
    return model


CORRUPT = DATA / "cards_005.wav"


@pytest.fixture(scope="module")
def runs(tiny_en):
    with torch.no_grad():
        clean_logits, clean_cache = tiny_en.run_with_cache(CLEAN)
    tokens = clean_cache["hook_tokens"]
    with torch.no_grad():
        corrupt_logits = tiny_en(CORRUPT, tokens)
    return tokens, clean_logits, corrupt_logits, target_log_prob(tokens[0], 2)


@pytest.fixture(scope="module")
def tol(runs, float32_spread) -> float:
    """How far a metric read off float32 logits may move by rounding alone: the measured float32
    spread at the size of the logits (a log-probability moves by at most twice a logit's error)."""
    return 2 * spread_bound(float32_spread, runs[1])


# The identities below hold for any weights: they are checked on a random model of tiny.en's
# layout (4 + 4 layers, 6 heads, its vocabulary) at a quarter of its width, in a fraction of its time.
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Loaded from a Hugging Face folder as a checkpoint is, so its weights arrive in the layouts
    (and take the fast paths) that loading gives them."""
    from hooked_whisper import HookedWhisper
    from weights_conversion import save_hf_folder

    model = audible(
        random_whisper(d_model=96, n_heads=6, d_head=16, n_encoder_layers=4, n_decoder_layers=4, d_vocab=51864)
    )
    with torch.no_grad():  # random attention spreads evenly over the 1500 frames, so that an encoder
        for block in model.encoder_blocks:  # head hardly depends on the audio: sharpen and amplify it
            block.attn.W_Q.mul_(8)
            block.attn.W_K.mul_(8)
            block.attn.W_O.mul_(10)
    return HookedWhisper.from_pretrained(save_hf_folder(model, tmp_path_factory.mktemp("toy")))


@pytest.fixture(scope="module")
def toy_runs(toy):
    """The toy's clean and corrupted logits on a transcript, its target log-probability metric,
    and float32's relative error on it (its own, measured against a float64 copy, as
    ``float32_spread`` is for tiny.en)."""

    def not_a_pattern(name: str) -> bool:  # attention through the fused kernel, as unhooked runs take it
        return not name.endswith(("hook_pattern", "hook_attn_scores"))

    tokens = toy.to_tokens(" He was not an ill-disposed young man.")
    with torch.no_grad():
        clean_logits, cache = toy.run_with_cache(CLEAN, tokens, names_filter=not_a_pattern)
        corrupt_logits = toy(CORRUPT, tokens)
        exact_logits, exact = copy.deepcopy(toy).double().run_with_cache(CLEAN, tokens, names_filter=not_a_pattern)
    spread = relative_float32_error(clean_logits, cache, exact_logits, exact)
    metric = target_log_prob(tokens[0], 2)
    # The audio reaches the metric far beyond rounding: a patch that read the wrong run would show.
    assert (metric(clean_logits) - metric(corrupt_logits)).abs() > 100 * 2 * spread_bound(spread, clean_logits)
    return tokens, clean_logits, corrupt_logits, metric, spread


def test_patching_own_activation_changes_nothing(toy, toy_runs):
    tokens, clean_logits, _, metric, spread = toy_runs
    sites = layer_sites(toy, "decoder_blocks.{l}.hook_cross_attn_out") + head_sites(toy, "encoder", "attn")[:3]
    sites += position_sites("decoder_blocks.1.hook_resid_post", tokens.shape[1])[::4]
    values = activation_patch(toy, CLEAN, CLEAN, sites, metric, tokens=tokens, progress=False)
    tol = 2 * spread_bound(spread, clean_logits)  # a log-probability moves by at most twice a logit's error
    assert torch.allclose(values, metric(clean_logits).expand(len(sites)), rtol=0, atol=tol)
    # The bound is tight enough to see a patch from the wrong run: from the other clip, every site
    # but the first and last decoder positions (the last one's logits are past the metric) moves the
    # metric by 8x to 1,100x the bound.
    moved = activation_patch(toy, CLEAN, CORRUPT, sites, metric, tokens=tokens, progress=False)
    reaches = torch.tensor([s.positions is None or s.positions[0] not in (0, tokens.shape[1] - 1) for s in sites])
    assert ((moved - values).abs() > 4 * tol)[reaches].all()


def test_a_batched_sweep_equals_each_patch_alone(toy, toy_runs):
    """Decoder sites share the clip's cross-attention keys and values across the sweep's rows,
    unless a site is on them: either way each row gives what that patch gives alone."""
    tokens, *_, spread = toy_runs
    sites = [
        Site("decoder_blocks.1.cross_attn.hook_k", head=2),
        Site("decoder_blocks.2.cross_attn.hook_z", head=1),
        Site("decoder_blocks.0.hook_mlp_out"),
    ]
    logits = lambda x: x  # noqa: E731 (compare the whole output, not one number)
    with torch.no_grad():
        _, source = toy.run_with_cache(CLEAN, tokens, names_filter=[s.hook for s in sites])
        encoder_out = toy.encode(CORRUPT)  # every site is downstream of it
        alone = []
        for site in sites:
            with toy.hooks(fwd_hooks=patch_hooks(toy, [site], [source[site.hook]])):
                alone.append(toy.decode(tokens, encoder_out))
    for chunk in (slice(0, 3), slice(1, 3)):  # with a cross-attention K site in the batch, and without
        swept = activation_patch(toy, CORRUPT, CLEAN, sites[chunk], logits, tokens=tokens, progress=False)
        for row, site in enumerate(sites[chunk]):
            assert_close(swept[row : row + 1], alone[sites.index(site)], spread, f"{site.hook} in a sweep")


def test_patching_the_whole_residual_at_layer_0_restores_the_clean_run(tiny_en, runs, float32_spread):
    tokens, clean_logits, corrupt_logits, metric = runs
    kl = kl_divergence(clean_logits)
    assert kl(corrupt_logits) > 1.0  # the corrupted run really differs
    sites = [Site("encoder_blocks.0.hook_resid_pre"), Site("decoder_blocks.0.hook_resid_pre")]
    with torch.no_grad():
        _, clean_cache = tiny_en.run_with_cache(CLEAN, tokens, names_filter=[s.hook for s in sites])
        hooks = patch_hooks(tiny_en, sites, [clean_cache[s.hook] for s in sites])
        patched = tiny_en.run_with_hooks(CORRUPT, tokens, fwd_hooks=hooks)
    assert_close(patched, clean_logits, float32_spread, "patched logits")

    # Each alone is partial: the encoder-side patch restores the audio, the decoder side is the same tokens.
    def distance(logits):
        return (logits - clean_logits).abs().amax(dim=(1, 2))

    value = activation_patch(
        tiny_en, CORRUPT, CLEAN, "encoder_blocks.0.hook_resid_pre", distance, tokens=tokens, progress=False
    )
    assert value.item() <= spread_bound(float32_spread, clean_logits)


def test_interpolation_moves_monotonically_toward_the_source(tiny_en, runs, tol):
    tokens, _, corrupt_logits, metric = runs
    values = [
        activation_patch(
            tiny_en, CORRUPT, CLEAN, "hook_encoder_out", metric, tokens=tokens, alpha=a, progress=False
        ).item()
        for a in (0.0, 0.5, 1.0)
    ]
    assert values[0] == pytest.approx(metric(corrupt_logits).item(), abs=tol)
    assert values[0] < values[1] < values[2]


def test_path_patching_equivalences(toy, toy_runs):
    tokens, clean_logits, corrupt_logits, metric, spread = toy_runs
    tol = 2 * spread_bound(spread, clean_logits)
    everything = cross_attention_receivers(toy, via="kv")
    sender = Site("encoder_blocks.3.hook_resid_post")  # the whole final encoder stream
    # A zero difference reproduces the baseline.
    same = path_patch(toy, CORRUPT, CORRUPT, sender, everything[:4], metric, tokens=tokens, progress=False)
    assert torch.allclose(same, metric(corrupt_logits).expand(4), rtol=0, atol=tol)
    # Every cross-attention head of every layer through K and V equals patching hook_encoder_out.
    joint = path_patch(toy, CORRUPT, CLEAN, sender, everything, metric, tokens=tokens, jointly=True, progress=False)
    direct = activation_patch(toy, CORRUPT, CLEAN, "hook_encoder_out", metric, tokens=tokens, progress=False)
    assert joint.item() == pytest.approx(direct.item(), abs=tol)
    assert joint.item() == pytest.approx(metric(clean_logits).item(), abs=tol)


def test_path_patching_equals_three_pass_path_patching(tiny_en, runs, float32_spread):
    """Freeze everything, patch the sender, record the receiver's input, patch the receiver."""
    model, (tokens, *_) = tiny_en, runs
    base, source = CORRUPT, CLEAN
    metric = lambda logits: logits  # noqa: E731 (compare the whole output, not one number)
    sender = Site("encoder_blocks.1.hook_mlp_out", positions=tuple(range(0, 150)))
    receiver = Receiver(layer=2, head=3, via="kv")
    ours = path_patch(model, base, source, sender, [receiver], metric, tokens=tokens, progress=False)

    with torch.no_grad():  # pass 1: base and source activations
        _, base_cache = model.run_with_cache(base, tokens)
        _, source_cache = model.run_with_cache(source, tokens, names_filter=[sender.hook])
    frozen = [
        n
        for n in base_cache.keys()
        if n.startswith(("encoder_blocks.2.", "encoder_blocks.3.")) and n.endswith(("hook_attn_out", "hook_mlp_out"))
    ]  # every writer after the sender
    recorded = {}

    def patch_sender(x, hook):
        x = x.clone()
        x[:, :150] = source_cache[sender.hook][:, :150]
        return x

    with torch.no_grad():  # pass 2: sender patched, every other writer frozen; record the receiver's input
        hooks = [(sender.hook, patch_sender)] + [(n, lambda x, hook: base_cache[hook.name]) for n in frozen]
        hooks.append(("hook_encoder_out", lambda x, hook: recorded.setdefault("enc", x)))
        model.run_with_hooks(base, tokens, fwd_hooks=hooks)
    model.cfg.use_cross_kv_input = True
    try:

        def patch_receiver(x, hook):
            x = x.clone()
            x[:, :, receiver.head] = recorded["enc"]
            return x

        with torch.no_grad():  # pass 3: only the receiver reads the recorded input
            logits = model.run_with_hooks(
                base,
                tokens,
                fwd_hooks=[
                    ("decoder_blocks.2.hook_cross_k_input", patch_receiver),
                    ("decoder_blocks.2.hook_cross_v_input", patch_receiver),
                ],
            )
    finally:
        model.cfg.use_cross_kv_input = False
    assert_close(ours, logits, float32_spread, "path patch vs three passes")
    assert (ours - base_cache["decoder_ln_final.hook_normalized"] @ model.W_U).abs().max() > 1e-2  # it did something


def test_decoder_to_decoder_path_patching(tiny_en, runs, tol):
    tokens, _, corrupt_logits, metric = runs
    receivers = [Receiver(2, h, via="qkv", kind="attn") for h in range(2)]
    same = path_patch(
        tiny_en, CORRUPT, CORRUPT, "decoder_blocks.0.hook_mlp_out", receivers, metric, tokens=tokens, progress=False
    )
    assert torch.allclose(same, metric(corrupt_logits).expand(2), rtol=0, atol=tol)
    moved = path_patch(
        tiny_en, CORRUPT, CLEAN, "decoder_blocks.0.hook_mlp_out", receivers, metric, tokens=tokens, progress=False
    )
    assert (moved - same).abs().max() > 100 * tol
    with pytest.raises(ValueError, match="not downstream"):
        path_patch(tiny_en, CORRUPT, CLEAN, "decoder_blocks.2.hook_mlp_out", receivers, metric, tokens=tokens)


def test_attribution_patching_agrees_with_patching():
    model = audible(random_whisper(d_model=256, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_vocab=51864))
    torch.manual_seed(5)
    base = torch.randn(1, 80, 3000)
    source = base + 0.05 * torch.randn(1, 80, 3000)  # a small change: the linear estimate should hold
    tokens = torch.tensor([[50257, 50362, 464, 3290, 318, 257]])
    metric = target_log_prob(tokens[0], 2)
    hooks = [f"decoder_blocks.{l}.cross_attn.hook_z" for l in range(2)] + [
        f"encoder_blocks.{l}.attn.hook_z" for l in range(2)
    ]
    estimate = attribution_patch(model, base, source, metric, hooks=hooks, tokens=tokens)
    baseline = metric(model(base, tokens)).item()
    sites = [Site(h, head) for h in hooks for head in range(4)]
    actual = activation_patch(model, base, source, sites, metric, tokens=tokens, progress=False) - baseline
    predicted = torch.cat([estimate[h] for h in hooks])
    corr = torch.corrcoef(torch.stack([predicted, actual]))[0, 1]
    assert corr > 0.95, f"correlation {corr:.3f}"


def test_ablation(tiny_en, runs):
    tokens, clean_logits, _, metric = runs
    sites = layer_sites(tiny_en, "decoder_blocks.{l}.hook_cross_attn_out")
    zero = ablate(tiny_en, CLEAN, sites, metric, kind="zero", tokens=tokens, progress=False)
    assert (zero < metric(clean_logits) - 1).all()  # silencing cross-attention hurts the transcript
    mean = ablate(
        tiny_en,
        CLEAN,
        sites[:2],
        metric,
        kind="mean",
        reference=[CORRUPT, DATA / "goforward.wav"],
        tokens=tokens,
        progress=False,
    )
    resample = ablate(
        tiny_en, CLEAN, sites[:2], metric, kind="resample", reference=CORRUPT, tokens=tokens, progress=False
    )
    assert mean.shape == resample.shape == (2,) and not torch.allclose(mean, resample)


def test_patched_generation_equals_teacher_forced_forward(tiny_en, tiny_en_float64, runs):
    """A position-indexed decoder patch applied while generating (KV cache, one position per step)
    gives the same logits as a teacher-forced forward over the generated tokens with that patch."""
    tokens, *_ = runs
    site = Site("decoder_blocks.3.hook_resid_mid", positions=(4, 5))
    with torch.no_grad():
        _, source = tiny_en.run_with_cache(CORRUPT, tokens, names_filter=[site.hook])
    hooks = patch_hooks(tiny_en, [site], [source[site.hook]])
    with torch.no_grad(), tiny_en.hooks(fwd_hooks=hooks):
        seq = tiny_en.generate(CLEAN, max_new_tokens=tokens.shape[1] - 2)
        enc = tiny_en.encode(CLEAN)
        full = tiny_en.decode(seq, enc)
        kv = tiny_en.new_decoder_cache(enc)
        stepped = torch.cat(
            [tiny_en.decode(seq[:, :2], cache=kv)]
            + [tiny_en.decode(seq[:, i : i + 1], cache=kv) for i in range(2, seq.shape[1])],
            dim=1,
        )
    with torch.no_grad():
        exact_source = tiny_en_float64.run_with_cache(CORRUPT, tokens, names_filter=[site.hook])[1][site.hook]
        exact_hooks = patch_hooks(tiny_en_float64, [site], [exact_source])
        exact = tiny_en_float64.run_with_hooks(CLEAN, seq, fwd_hooks=exact_hooks)
    assert_within_float32_spread(stepped, full, exact, "KV-cached vs teacher-forced logits")
    assert (full[0, 2:-1].argmax(-1) == seq[0, 3:]).all()  # the generated tokens are the forward's argmax
    plain = tiny_en.generate(CLEAN, max_new_tokens=tokens.shape[1] - 2)
    assert not torch.equal(seq, plain)  # and the patch changed the transcript


def test_mean_and_resample_ablation_hooks_while_generating(tiny_en):
    """The hooks ``ablate`` returns without a metric work in KV-cached generation: a mean over
    positions reaches every step; a resampled run is read at each step's absolute positions
    (``decode_offset``). Each generated token is the argmax of a teacher-forced forward under the
    same hooks; a reference shorter than the generation is refused, not misread."""
    site = Site("decoder_blocks.2.hook_resid_post")
    with torch.no_grad():
        encoder_out = tiny_en.encode(CLEAN)  # upstream of every hook here
    for kind, reference in [("mean", [CORRUPT]), ("resample", CORRUPT)]:
        hooks = ablate(tiny_en, CLEAN, site, kind=kind, reference=reference)
        with torch.no_grad(), tiny_en.hooks(fwd_hooks=hooks):
            seq = tiny_en.generate(CLEAN, max_new_tokens=8)
            full = tiny_en.decode(seq, encoder_out)
            if kind == "mean":
                assert tiny_en.transcribe(CLEAN, temperature=0.0, max_new_tokens=8).text
        n_prompt = tiny_en.prompt_length(seq[0])
        assert (full[0, n_prompt - 1 : -1].argmax(-1) == seq[0, n_prompt:]).all(), kind
        with torch.no_grad():
            assert not torch.allclose(full, tiny_en.decode(seq, encoder_out)), kind  # the hooks took effect
    short = torch.zeros(1, 4, tiny_en.cfg.d_model)  # a reference run of four tokens
    with pytest.raises(ValueError, match=r"holds decoder positions 0\.\.3, but this run reads position 4"):
        tiny_en.generate(CLEAN, max_new_tokens=8, fwd_hooks=patch_hooks(tiny_en, [site], [short]))


def test_a_metric_over_rows_and_empty_sweeps_are_refused(float32_spread):
    """A metric must give one value per row (sweeps carry one site per row): a scalar, even on a
    one-site sweep whose answer would look right, is refused with the fix; so are empty sweeps."""
    model = random_whisper(d_model=64, n_heads=2, d_head=32, n_encoder_layers=1, n_decoder_layers=2, d_vocab=51864)
    tokens = torch.tensor([model.prompt_tokens() + [220]])
    site = Site("decoder_blocks.0.hook_resid_post")
    for reduce in (torch.mean, torch.sum, lambda v: float(v.sum())):
        with pytest.raises(ValueError, match=r"one value per batch row .*not over rows"):
            ablate(model, CLEAN, [site], lambda logits, r=reduce: r(logits[:, -1, 5]), tokens=tokens, progress=False)
    per_row = ablate(model, CLEAN, [site, site], lambda logits: logits[:, -1, 5], tokens=tokens, progress=False)
    assert per_row.shape == (2,)  # rows of one batch may split their sums differently across threads
    assert_close(per_row[0], per_row[1], float32_spread, "one site in two rows")
    for empty in (
        lambda: ablate(model, CLEAN, [], lambda logits: logits[:, -1, 5], tokens=tokens),
        lambda: ablate(model, CLEAN, []),  # hooks for generation that would ablate nothing
        lambda: activation_patch(model, CLEAN, CORRUPT, [], lambda logits: logits[:, -1, 5], tokens=tokens),
    ):
        with pytest.raises(ValueError, match="no sites given"):
            empty()
    with pytest.raises(ValueError, match="no receivers given"):
        path_patch(model, CLEAN, CORRUPT, "encoder_blocks.0.hook_mlp_out", [], lambda logits: logits[:, -1, 5])
    with pytest.raises(ValueError, match="no hooks given"):
        attribution_patch(model, CLEAN, CORRUPT, lambda logits: logits[:, -1, 5], hooks=[], tokens=tokens)
    with pytest.raises(ValueError, match="1 sites but 0 sources"):
        patch_hooks(model, [site], [])


def test_bad_input(tiny_en, runs):
    tokens, *_, metric = runs
    with pytest.raises(ValueError, match="head 6 out of range"):
        activation_patch(tiny_en, CLEAN, CORRUPT, [Site("decoder_blocks.0.attn.hook_z", head=6)], metric, tokens=tokens)
    with pytest.raises(ValueError, match="no head axis"):
        activation_patch(
            tiny_en, CLEAN, CORRUPT, [Site("decoder_blocks.0.hook_mlp_out", head=0)], metric, tokens=tokens
        )
    with pytest.raises(ValueError, match="time window"):
        frames(29.5, 31.0)
    with pytest.raises(ValueError, match="lie outside the 1500 positions"):
        activation_patch(
            tiny_en, CLEAN, CORRUPT, [Site("hook_encoder_out", positions=(1499, 1500))], metric, tokens=tokens
        )
    with pytest.raises(ValueError, match="give both runs the same tokens"):
        short = tiny_en.run_with_cache(CORRUPT, tokens[:, :4], names_filter=["decoder_blocks.0.hook_resid_post"])[1]
        hooks = patch_hooks(
            tiny_en,
            [Site("decoder_blocks.0.hook_resid_post", positions=(6,))],
            [short["decoder_blocks.0.hook_resid_post"]],
        )
        tiny_en.run_with_hooks(CLEAN, tokens, fwd_hooks=hooks)
    # A decoder position at -1 or past the end would patch nothing and look irrelevant: refused.
    last = Site("decoder_blocks.1.hook_resid_post", positions=(-1,))
    with pytest.raises(ValueError, match="decoder positions are absolute"):
        ablate(tiny_en, CLEAN, last, metric, tokens=tokens)
    with pytest.raises(ValueError, match="decoder positions are absolute"):
        ablate(tiny_en, CLEAN, last)  # hooks for generation
    beyond = Site("decoder_blocks.1.hook_resid_post", positions=(tokens.shape[1],))
    with pytest.raises(ValueError, match=rf"lie past the {tokens.shape[1]} tokens"):
        activation_patch(tiny_en, CLEAN, CORRUPT, [beyond], metric, tokens=tokens)
    with pytest.raises(ValueError, match="receiver XL9H0 via kv does not exist"):
        path_patch(tiny_en, CLEAN, CORRUPT, "encoder_blocks.0.hook_mlp_out", [Receiver(9, 0)], metric, tokens=tokens)


def test_mean_ablation_reads_its_reference_at_the_sample_rate_given(tiny_en, runs):
    """``sample_rate`` reaches the reference clips of a mean ablation (it was dropped there)."""
    import torchaudio.functional

    from hooked_whisper import load_audio
    from hooked_whisper.patching import mean_activations

    tokens, _, _, metric = runs
    hook = "decoder_blocks.0.hook_cross_attn_out"
    at_8k = [torchaudio.functional.resample(load_audio(c), 16000, 8000) for c in (CLEAN, CORRUPT)]
    at_16k = [load_audio(a, 8000) for a in at_8k]  # what the model should read
    means = mean_activations(tiny_en, at_8k[1:], [hook], tokens, sample_rate=8000)
    assert torch.equal(means[hook], mean_activations(tiny_en, at_16k[1:], [hook], tokens, sample_rate=16000)[hook])
    sites = layer_sites(tiny_en, "decoder_blocks.{l}.hook_cross_attn_out")[:1]
    kwargs = dict(kind="mean", tokens=tokens, progress=False)
    told = ablate(tiny_en, at_8k[0], sites, metric, reference=at_8k[1:], sample_rate=8000, **kwargs)
    assert torch.equal(
        told, ablate(tiny_en, at_16k[0], sites, metric, reference=at_16k[1:], sample_rate=16000, **kwargs)
    )
