"""What many tests share: the clips in tests/data, and float32 tolerances measured rather than
guessed (each bound follows the magnitude compared and float32's error measured in the same run).

Imported as ``tests.support`` (``pythonpath = ["."]`` in pyproject.toml); fixtures live in the
conftest files beside the tests that use them."""

from __future__ import annotations

from pathlib import Path

import torch

from hooked_whisper import HookedWhisper, HookedWhisperConfig
from hooked_whisper.metrics import read_transcripts as read_transcripts_in

DATA = Path(__file__).parent / "data"


def read_transcripts() -> dict[str, str]:
    return read_transcripts_in(DATA)


CLIPS = sorted(read_transcripts())
SPREAD_CLIP = DATA / CLIPS[0]


def random_whisper(seed: int = 0, **config) -> HookedWhisper:
    """A random-init HookedWhisper whose biases and LayerNorms are perturbed too (random init
    leaves them at zero and identity), so that every parameter takes part in what a test compares."""
    torch.manual_seed(seed)
    model = HookedWhisper(HookedWhisperConfig(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("b_") or leaf in ("w", "b"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def assert_within_float32_spread(actual, expected, exact, name: str = "", factor: float = 4.0) -> None:
    """``actual`` and ``expected`` are two float32 computations of one quantity (fused and
    explicit kernels, KV-cached and teacher-forced decoding, ours and Hugging Face's on torch's
    kernels), ``exact`` the same in float64. They may differ by ``factor`` times float32's own
    measured error on ``expected``: a bound that follows the computation's magnitudes and the
    thread count it ran with, not a round number."""
    diff, bound, error = float32_spread_check(actual, expected, exact, factor)
    assert diff <= bound, f"{name}: differ by {diff:.3g}, over {bound:.3g} ({factor} x float32's error {error:.3g})"


def float32_spread_check(actual, expected, exact, factor: float = 4.0) -> tuple[float, float, float]:
    """The difference of ``actual`` from ``expected``, the bound ``assert_within_float32_spread``
    holds it to, and float32's error on ``expected`` the bound comes from."""
    exact = exact.double()
    error = (expected.double() - exact).abs().max()
    diff = (actual.double() - expected.double()).abs().max()
    bound = factor * error + torch.finfo(torch.float32).eps * exact.abs().max()
    return float(diff), float(bound), float(error)


def relative_float32_error(logits, cache, exact_logits, exact) -> float:
    """float32's relative error on a run: the largest ``max|float32 - float64| / max|float64|``
    over the logits and every cached floating-point activation (masked scores, -inf in both runs,
    left out), given the same run in float32 and in float64."""
    pairs = [(logits, exact_logits)] + [(cache[k], exact[k]) for k in cache.keys() if cache[k].is_floating_point()]
    finite = [(a.double()[b.isfinite()], b[b.isfinite()]) for a, b in pairs]
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


def long_clip(gap_seconds: float = 1.5) -> torch.Tensor:
    """Every test clip in turn with silence between them: about 41 s of real speech and pauses."""
    from hooked_whisper import load_audio

    gap = torch.zeros(int(gap_seconds * 16000))
    return torch.cat([part for clip in CLIPS for part in (load_audio(DATA / clip), gap)])
