"""Shared fixtures: random-init Hugging Face references, the real bundled checkpoints exported
to Hugging Face format, and the speech clips in tests/data."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import pytest
import torch
from transformer_lens import ActivationCache

from hooked_whisper import HookedWhisper, HookedWhisperConfig
from hooked_whisper.metrics import read_transcripts as read_transcripts_in
from weights_conversion import convert_state_dict, save_hf_folder

DATA = Path(__file__).parent / "data"

warnings.filterwarnings("ignore", message=".*forced_decoder_ids.*")


def pytest_configure(config):
    from transformers.utils import logging as hf_logging

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # pytest -n N: share the cores between the workers (and their subprocesses)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)

    hf_logging.set_verbosity_error()  # the reference's deprecation chatter is not ours to fix


def read_transcripts() -> dict[str, str]:
    return read_transcripts_in(DATA)


CLIPS = sorted(read_transcripts())


def hf_random_pair(seed: int = 0, **kwargs) -> tuple[torch.nn.Module, HookedWhisper]:
    """A random-init Hugging Face Whisper (eager attention) and the HookedWhisper converted from it."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    d_model = kwargs.pop("d_model", 128)
    hf_cfg = WhisperConfig(d_model=d_model, encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model, **kwargs)
    hf = WhisperForConditionalGeneration(hf_cfg).eval()
    hf.config._attn_implementation = "eager"
    # Random init leaves biases at zero and LayerNorms at identity; perturb them so every
    # parameter takes part in the comparison.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    cfg = HookedWhisperConfig.from_hf_config(hf_cfg.to_dict())
    model = HookedWhisper(cfg)
    model.load_state_dict(convert_state_dict(hf.state_dict(), cfg, "hf", "hooked"))
    return hf, model.eval()


@pytest.fixture(scope="session")
def tiny_en() -> HookedWhisper:
    return HookedWhisper.from_pretrained("tiny.en")


@pytest.fixture(scope="session")
def tiny_en_float64(tiny_en) -> HookedWhisper:
    """tiny.en computed in float64: the exact answer float32 runs are measured against."""
    return copy.deepcopy(tiny_en).double()


def assert_within_float32_spread(actual, expected, exact, name: str = "", factor: float = 4.0) -> None:
    """``actual`` and ``expected`` are two float32 computations of one quantity (fused and
    explicit kernels, KV-cached and teacher-forced decoding), ``exact`` the same in float64.
    They may differ by ``factor`` times float32's own measured error on ``expected``: a bound
    that follows the computation's magnitudes and the thread count it ran with, not a round
    number."""
    exact = exact.double()
    error = (expected.double() - exact).abs().max()
    diff = (actual.double() - expected.double()).abs().max()
    bound = factor * error + torch.finfo(torch.float32).eps * exact.abs().max()
    assert diff <= bound, f"{name}: differ by {diff:.3g}, over {bound:.3g} ({factor} x float32's error {error:.3g})"


SPREAD_CLIP = DATA / CLIPS[0]


@pytest.fixture(scope="session")
def float32_and_float64_runs(
    tiny_en, tiny_en_float64
) -> tuple[torch.Tensor, ActivationCache, torch.Tensor, ActivationCache]:
    """tiny.en on a real clip reading its greedy transcript, in float32 and in float64: logits
    and every activation but the attention patterns (without a hook on them attention runs
    through the fused kernel, the fast path users run)."""

    def not_a_pattern(name: str) -> bool:
        return not name.endswith(("hook_pattern", "hook_attn_scores"))

    with torch.no_grad():
        logits, cache = tiny_en.run_with_cache(SPREAD_CLIP, names_filter=not_a_pattern)
        exact_logits, exact = tiny_en_float64.run_with_cache(
            SPREAD_CLIP, cache["hook_tokens"], names_filter=not_a_pattern
        )
    return logits, cache, exact_logits, exact


@pytest.fixture(scope="session")
def float32_spread(float32_and_float64_runs) -> float:
    """float32's measured relative error on tiny.en at this run's thread count: the largest
    ``max|float32 - float64| / max|float64|`` over the logits and every cached activation of
    a real clip. Tests comparing two float32 paths allow a few times this, scaled by the
    magnitude they compare (see ``spread_bound``)."""
    logits, cache, exact_logits, exact = float32_and_float64_runs
    pairs = [(logits, exact_logits)] + [(cache[k], exact[k]) for k in cache.keys() if cache[k].is_floating_point()]
    finite = [(a.double()[b.isfinite()], b[b.isfinite()]) for a, b in pairs]  # masked scores are -inf in both
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in finite if b.abs().max() > 0)


def spread_bound(spread: float, magnitude: torch.Tensor | float, factor: float = 8.0) -> float:
    """The largest difference two float32 computations of one quantity may show: ``factor``
    times the measured relative error, times the magnitude compared (its largest value)."""
    magnitude = float(torch.as_tensor(magnitude).detach().abs().max())
    return factor * spread * magnitude + torch.finfo(torch.float32).eps * magnitude


def assert_close(actual: torch.Tensor, expected: torch.Tensor, spread: float, name: str = "") -> None:
    """Two float32 computations of one quantity agree within ``spread_bound``."""
    assert actual.shape == expected.shape, f"{name}: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    diff = (actual.detach().double() - expected.detach().double()).abs().max().item()
    bound = spread_bound(spread, expected)
    assert diff <= bound, f"{name}: differ by {diff:.3g}, over the float32 spread bound {bound:.3g}"


@pytest.fixture(scope="session")
def base() -> HookedWhisper:
    return HookedWhisper.from_pretrained("base")


@pytest.fixture(scope="session")
def hf_export(tmp_path_factory):
    """Hugging Face folders written from the bundled checkpoints, keyed by model name."""
    cache: dict[str, Path] = {}

    def export(model: HookedWhisper, name: str) -> Path:
        if name not in cache:
            cache[name] = save_hf_folder(model, tmp_path_factory.mktemp(name.replace(".", "_")))
        return cache[name]

    return export


@pytest.fixture(scope="session")
def hf_reference(hf_export):
    """The Hugging Face model loaded from a HookedWhisper's export: eager attention (whose
    attention weights parity tests read) unless ``attn="sdpa"`` (faster, for generate)."""
    models: dict[tuple[str, str], torch.nn.Module] = {}

    def load(model: HookedWhisper, name: str, attn: str = "eager"):
        from transformers import WhisperForConditionalGeneration

        if (name, attn) not in models:
            models[name, attn] = WhisperForConditionalGeneration.from_pretrained(
                hf_export(model, name), attn_implementation=attn
            ).eval()
        return models[name, attn]

    return load


@pytest.fixture(scope="session")
def openai_reference(tmp_path_factory):
    """openai-whisper's model loaded from a HookedWhisper's ``.pt`` export, told the same
    alignment heads (a bare ``.pt`` does not carry them)."""
    models: dict[str, torch.nn.Module] = {}

    def load(model: HookedWhisper, name: str):
        whisper = pytest.importorskip("whisper")
        from weights_conversion import save_openai_checkpoint

        if name not in models:
            path = save_openai_checkpoint(model, tmp_path_factory.mktemp("openai") / f"{name}.pt")
            ref = whisper.load_model(str(path), device="cpu")
            heads = torch.zeros(model.cfg.n_decoder_layers, model.cfg.n_heads, dtype=torch.bool)
            for layer, head in model.generation_config.alignment_heads:
                heads[layer, head] = True
            ref.register_buffer("alignment_heads", heads.to_sparse(), persistent=False)
            models[name] = ref
        return models[name]

    return load


def long_clip(gap_seconds: float = 1.5) -> torch.Tensor:
    """Every test clip in turn with silence between them: about 41 s of real speech and pauses."""
    from hooked_whisper import load_audio

    gap = torch.zeros(int(gap_seconds * 16000))
    return torch.cat([part for clip in CLIPS for part in (load_audio(DATA / clip), gap)])
