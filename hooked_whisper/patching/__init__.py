"""Causal interventions through hook names: activation patching (and interpolation toward
another run), ablation, path patching across encoder-to-decoder cross-attention, and
attribution patching.

Every intervention is a list of ordinary ``(hook_name, fn)`` pairs (``patch_hooks``), so it
works the same in a teacher-forced forward, in ``run_with_cache`` and during generation
(``with model.hooks(fwd_hooks=...): model.transcribe(...)``).

- ``sites``: what to patch (a hook, a head, positions or a time window) and sweep builders;
- ``metrics``: functions of the logits to compare runs by (a word contrast among them);
- ``noise``: noise references (white, pink, babble, speech-shaped, silence) as patch sources;
- ``activation``: activation patching, interpolation and ablation;
- ``paths``: path patching from a sender to receiver heads;
- ``attribution``: the gradient estimate of patching everything at once.
"""

from hooked_whisper.patching.activation import (
    ablate,
    activation_patch,
    mean_activations,
    patch_hooks,
    reference_hooks,
)
from hooked_whisper.patching.attribution import attribution_patch
from hooked_whisper.patching.metrics import (
    Metric,
    WordContrast,
    kl_divergence,
    logit_diff,
    target_log_prob,
    word_contrast,
)
from hooked_whisper.patching.noise import Noise, noise_like, spectral_slope
from hooked_whisper.patching.paths import Receiver, cross_attention_receivers, path_patch
from hooked_whisper.patching.sites import (
    Seconds,
    Site,
    frames,
    head_sites,
    layer_sites,
    position_sites,
    window_sites,
    word_sites,
)

__all__ = [
    "Metric",
    "Noise",
    "Receiver",
    "Seconds",
    "Site",
    "WordContrast",
    "ablate",
    "activation_patch",
    "attribution_patch",
    "cross_attention_receivers",
    "frames",
    "head_sites",
    "kl_divergence",
    "layer_sites",
    "logit_diff",
    "mean_activations",
    "noise_like",
    "patch_hooks",
    "path_patch",
    "position_sites",
    "reference_hooks",
    "spectral_slope",
    "target_log_prob",
    "window_sites",
    "word_contrast",
    "word_sites",
]
