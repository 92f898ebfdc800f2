"""Causal interventions through hook names: activation patching (and interpolation toward
another run), ablation, path patching across encoder-to-decoder cross-attention, and
attribution patching.

Every intervention is a list of ordinary ``(hook_name, fn)`` pairs (``patch_hooks``), so it
works the same in a teacher-forced forward, in ``run_with_cache`` and during generation
(``with model.hooks(fwd_hooks=...): model.transcribe(...)``).

- ``sites``: what to patch (a hook, a head, positions or a time window) and sweep builders;
- ``metrics``: functions of the logits to compare runs by;
- ``activation``: activation patching, interpolation and ablation;
- ``paths``: path patching from a sender to receiver heads;
- ``attribution``: the gradient estimate of patching everything at once.
"""

from hooked_whisper.patching.activation import ablate, activation_patch, mean_activations, patch_hooks
from hooked_whisper.patching.attribution import attribution_patch
from hooked_whisper.patching.metrics import Metric, kl_divergence, logit_diff, target_log_prob
from hooked_whisper.patching.paths import Receiver, cross_attention_receivers, path_patch
from hooked_whisper.patching.sites import (
    Seconds,
    Site,
    frames,
    head_sites,
    layer_sites,
    position_sites,
    window_sites,
)

__all__ = [
    "Metric",
    "Receiver",
    "Seconds",
    "Site",
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
    "patch_hooks",
    "path_patch",
    "position_sites",
    "target_log_prob",
    "window_sites",
]
