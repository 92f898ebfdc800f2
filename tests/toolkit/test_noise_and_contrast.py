"""Noise references as patch sources, alpha sweeps, the teacher-forced word contrast and
word-aligned sites, on both model families (the tiny random models of ``test_families``)."""

from __future__ import annotations

import math

import pytest
import torch

from hooked_whisper.patching import (
    Noise,
    activation_patch,
    cross_attention_receivers,
    layer_sites,
    noise_like,
    path_patch,
    reference_hooks,
    spectral_slope,
    word_contrast,
    word_sites,
)
from hooked_whisper.patching.activation import first_patched_block, patch_hooks
from tests.support import assert_close
from tests.toolkit.test_families import SAMPLE_RATE, clip, family, last_logit, run  # noqa: F401 (fixture)

OCTAVE_DB = 10 * math.log10(2)  # pink noise: power halves per octave


def test_noise_matches_length_loudness_and_spectral_slope():
    target = clip(3, seconds=2.5)
    speech = (clip(4).numpy(), clip(5).numpy())
    for kind in ("white", "pink", "speech_shaped", "babble"):
        x = Noise(kind, seed=1, speech=speech).like(target, SAMPLE_RATE)
        assert x.shape == target.shape, kind
        assert torch.isclose(x.pow(2).mean().sqrt(), target.pow(2).mean().sqrt(), rtol=1e-5), kind
    assert Noise("silence").like(target, SAMPLE_RATE).abs().max() == 0
    # Phase randomisation keeps the clip's amplitude spectrum exactly (up to the loudness match).
    shaped = noise_like(target, "speech_shaped", seed=2)
    ratio = torch.fft.rfft(shaped.double()).abs()[1:] / torch.fft.rfft(target.double()).abs()[1:]
    assert torch.allclose(ratio, ratio.median().expand_as(ratio), rtol=1e-3)
    # The slope estimator's own spread over independent draws sets the tolerance: the mean of
    # eight estimates lies within four of its standard errors of the true slope.
    slopes = {
        kind: torch.tensor([spectral_slope(noise_like(target, kind, seed=s)) for s in range(8)])
        for kind in ("white", "pink")
    }
    for kind, expected in (("white", 0.0), ("pink", -OCTAVE_DB)):
        tolerance = 4 * slopes[kind].std() / math.sqrt(len(slopes[kind]))
        assert abs(slopes[kind].mean() - expected) <= tolerance, (kind, slopes[kind].mean(), tolerance)
        other = -OCTAVE_DB - expected  # the other colour's slope is far outside that tolerance
        assert abs(slopes[kind].mean() - other) > 10 * tolerance


def test_bad_noise_requests_are_refused():
    with pytest.raises(ValueError, match="unknown noise kind"):
        Noise("purple")
    with pytest.raises(ValueError, match="babble noise is made of speech"):
        Noise("babble")


def test_alpha_sweep_toward_noise(family):  # noqa: F811
    model = family.model
    sites = layer_sites(model, "encoder:hook_mlp_out") + layer_sites(model, "encoder:hook_resid_post")
    kw = dict(tokens=family.tokens, sample_rate=SAMPLE_RATE, progress=False)
    swept = activation_patch(model, family.base, Noise("white"), sites, last_logit, alpha=[0.0, 0.5, 1.0], **kw)
    assert swept.shape == (3, len(sites))
    baseline = last_logit(run(family, family.base))
    assert torch.allclose(swept[0], baseline.expand(len(sites)), atol=1e-5)  # alpha 0 changes nothing
    noise = Noise("white").like(family.base, SAMPLE_RATE)
    replaced = activation_patch(model, family.base, noise, sites, last_logit, **kw)
    assert torch.allclose(swept[2], replaced, atol=1e-5)  # alpha 1: the noise run's whole activation
    # The last encoder block's whole output from noise is the noise run itself.
    assert torch.allclose(swept[2, -1], last_logit(run(family, noise))[0], atol=1e-5)
    # alpha matters in between: half way differs from both ends by more than the equality above allows
    assert (swept[1] - swept[0]).abs().max() > 1e-5 and (swept[1] - swept[2]).abs().max() > 1e-5
    # Generation-time hooks and path patching take the same reference.
    hooks = reference_hooks(
        model, family.base, Noise("white"), sites[-1:], tokens=family.tokens, sample_rate=SAMPLE_RATE
    )
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        assert torch.allclose(last_logit(run(family, family.base)), swept[2, -1:], atol=1e-5)
    moved = path_patch(
        model, family.base, Noise("pink"), sites[0], cross_attention_receivers(model)[:1], last_logit, **kw
    )
    assert moved.shape == (1,) and torch.isfinite(moved).all()


def test_sweep_from_the_first_patched_block_equals_full_reruns(family):  # noqa: F811
    """A sweep whose sites all lie past encoder block 0 runs the blocks before the first patched
    one once, and gets what full reruns with the same hooks get."""
    model = family.model
    sites = layer_sites(model, "encoder:hook_attn_out")[1:2] + layer_sites(model, "encoder:hook_resid_post")[-1:]
    assert first_patched_block(model, sites) == 1
    assert first_patched_block(model, layer_sites(model, "encoder:hook_mlp_out")) is None  # block 0: nothing to reuse
    noise = Noise("white").like(family.base, SAMPLE_RATE)
    calls = []
    block_0 = (model.hook_name("encoder", 0, "hook_resid_pre"), lambda x, hook: calls.append(x.shape[0]))
    with model.hooks(fwd_hooks=[block_0]):
        swept = activation_patch(
            model, family.base, noise, sites, last_logit, tokens=family.tokens, alpha=0.5, batch_size=2,
            sample_rate=SAMPLE_RATE, progress=False,
        )  # fmt: skip
    assert calls == [1, 1]  # the source run and the shared unpatched stream; the patched batch did not rerun it
    with torch.no_grad():
        _, cache = model.run_with_cache(
            noise, family.tokens, names_filter=[s.hook for s in sites], sample_rate=SAMPLE_RATE
        )
    expected = []
    for site in sites:
        with torch.no_grad(), model.hooks(fwd_hooks=patch_hooks(model, [site], [cache[site.hook]], 0.5)):
            expected.append(last_logit(run(family, family.base))[0])
    expected = torch.stack(expected)
    # The only difference is the batch the first blocks ran in: hold the two to the spread of
    # one plain run batched alone and in two.
    with torch.no_grad():
        alone, batched = (
            run(family, family.base),
            model([family.base, family.base], family.tokens.expand(2, -1), sample_rate=SAMPLE_RATE)[:1],
        )
    spread = float((alone - batched).abs().max() / alone.abs().max())
    assert_close(swept, expected, max(spread, torch.finfo(torch.float32).eps), "sweep from block 1 vs full reruns")


def test_word_contrast_equals_a_plain_forward(family):  # noqa: F811
    model = family.model
    if model.has_cross_attention:
        contrast = word_contrast(model, " the white", "lice", "Zyzzyva")  # the second is several tokens
    else:
        contrast = word_contrast(model, "You are", "a", "helpful the")  # the tiny tokenizer's words
    assert len(contrast.words[1]) > 1
    expected = []
    for row, word in zip(contrast.tokens, contrast.words):
        with torch.no_grad():
            logits = model(family.base, row[None], sample_rate=SAMPLE_RATE)  # the prompt laid out for the clip
        logp = logits[0].log_softmax(-1)
        start = logits.shape[1] - max(len(w) for w in contrast.words)
        expected.append(sum(float(logp[start - 1 + i, t]) for i, t in enumerate(word)))
    sites = layer_sites(model, "encoder:hook_resid_post")
    got = activation_patch(
        model,
        family.base,
        Noise("white"),
        sites,
        contrast,
        tokens=contrast,
        alpha=0.0,
        sample_rate=SAMPLE_RATE,
        progress=False,
    )
    assert torch.allclose(got, torch.tensor(expected[0] - expected[1]).expand(len(sites)), atol=1e-4)
    with pytest.raises(ValueError, match="audio-side sites only"):
        activation_patch(
            model,
            family.base,
            family.other,
            layer_sites(model, "decoder:hook_resid_post")[:1],
            contrast,
            tokens=contrast,
            sample_rate=SAMPLE_RATE,
            progress=False,
        )


def test_word_sites_split_the_clip(family):  # noqa: F811
    model = family.model
    hook = model.hook_name("encoder", 0, "hook_resid_post")
    parts = word_sites(model, hook, (0.5, 0.9), duration_s=2.0)
    assert parts["target"].positions == tuple(range(25, 45))  # 50 audio positions per second
    assert sorted(parts["target"].positions + parts["context"].positions) == list(parts["all"].positions)
    assert parts["all"].positions == tuple(range(100))
    with pytest.raises(ValueError, match="inside the clip"):
        word_sites(model, hook, (1.5, 2.5), duration_s=2.0)
