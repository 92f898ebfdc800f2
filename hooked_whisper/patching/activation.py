"""Activation patching (and interpolation toward another run) and ablation, site by site,
batched over sites."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from hooked_whisper.patching.metrics import Metric, per_row
from hooked_whisper.patching.sites import Site, check_token_positions, region, resolve_all

if TYPE_CHECKING:
    from hooked_whisper.hooked_audio_model import HookedAudioModel


def patch_hooks(
    model: HookedAudioModel,
    sites: Sequence[Site],
    sources: Sequence[torch.Tensor | float],
    alpha: float = 1.0,
    rows: Sequence[int | None] | None = None,
) -> list[tuple[str, Callable]]:
    """Hooks that move each site toward its source: ``x <- x + alpha * (source - x)``.

    ``sources[i]`` is the full activation of a reference run at ``sites[i].hook`` (batch 1 or
    the same batch), or a number (0.0 for zero ablation). ``alpha=1`` replaces; smaller values
    interpolate. ``rows[i]``, if given, restricts site ``i`` to one batch row (for sweeps).
    """
    sites = resolve_all(model, sites)
    if len(sources) != len(sites):
        raise ValueError(f"{len(sites)} sites but {len(sources)} sources: give one source per site")
    rows = list(rows) if rows is not None else [None] * len(sites)
    by_hook: dict[str, list[int]] = {}
    for i, site in enumerate(sites):
        by_hook.setdefault(site.hook, []).append(i)

    def make(indices: list[int]) -> Callable:
        def hook_fn(x: torch.Tensor, hook) -> torch.Tensor | None:
            regions = [(i, region(model, sites[i], x, rows[i])) for i in indices]
            if all(region is None for _, region in regions):
                return None  # nothing to patch at this step (e.g. a later generation position)
            x = x.clone()
            for i, where in regions:
                if where is None:
                    continue
                here, there = where
                source = sources[i]
                if isinstance(source, torch.Tensor):
                    layout = model.hook_layouts[sites[i].hook]
                    if layout.unit == "token":
                        there = _token_source_index(model, source, x, there, layout.pos_axis, hook.name)
                    elif source.shape[1:] != x.shape[1:]:
                        raise ValueError(
                            f"source activation {tuple(source.shape)} does not match {tuple(x.shape)} at {hook.name}"
                        )
                    target = source[there].to(x.dtype)
                else:
                    target = torch.full_like(x[here], float(source))
                x[here] = x[here] + alpha * (target - x[here])
            return x

        return hook_fn

    return [(hook, make(indices)) for hook, indices in by_hook.items()]


def _token_source_index(
    model: HookedAudioModel, source: torch.Tensor, x: torch.Tensor, there: tuple, pos_axis: int, hook: str
) -> tuple:
    """Where in a decoder hook's ``source`` this call's patch reads. One position is a mean over
    positions (``mean_activations``): every position, in every call, gets it. Otherwise the
    source holds a reference run position by position: this call's absolute positions (a
    KV-cached step continues at ``model.decode_offset``) must lie within it."""
    if source.shape[pos_axis] == 1:
        return tuple(slice(None) if a == pos_axis else t for a, t in enumerate(there))
    if model.decode_padded:
        raise ValueError(
            f"{hook}: a reference run position by position cannot follow left-padded rows (batched transcription, "
            "where each clip's prompt has its own length); transcribe with batch_size=1, or ablate with kind='mean'"
        )
    wanted = there[pos_axis]
    if isinstance(wanted, slice):  # every position of this call
        wanted = range(model.decode_offset, model.decode_offset + x.shape[pos_axis])
    wanted = torch.as_tensor(list(wanted) if isinstance(wanted, range) else wanted, device=source.device)
    n_source, last = source.shape[pos_axis], int(wanted.max())
    if last >= n_source:
        raise ValueError(
            f"the reference run at {hook} holds decoder positions 0..{n_source - 1}, but this run reads position "
            f"{last}: give both runs the same tokens (pass a metric to patch teacher-forced), limit the "
            f"site to positions below {n_source}, or ablate with kind='mean' (one mean for every position)"
        )
    return tuple(wanted if a == pos_axis else t for a, t in enumerate(there))


def prepare(
    model: HookedAudioModel, target, tokens, sample_rate: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's log-mel (one clip) and the decoder tokens both runs read."""
    mel = model.to_mel(target, sample_rate)
    if mel.shape[0] != 1:
        raise ValueError("patching takes one target clip at a time (sweeps batch over sites)")
    return mel, model.tokens_for(mel, tokens)


def source_cache(
    model: HookedAudioModel, source, tokens: torch.Tensor, hooks: set[str], sample_rate: int | None = None
) -> dict[str, torch.Tensor]:
    """The activations at ``hooks`` of a run on ``source`` reading ``tokens``."""
    with torch.no_grad():
        _, cache = model.run_with_cache(source, tokens, names_filter=sorted(hooks), sample_rate=sample_rate)
    return dict(cache.items())


def _sweep(model: HookedAudioModel, mel, tokens, sites, sources, metric, alpha, batch_size, progress) -> torch.Tensor:
    """Run every site's patch once, ``batch_size`` sites per batch (row i carries site i)."""
    values = []
    encoder_out = None
    if not any(model.hook_layouts[s.hook].is_encoder_side for s in sites):
        with torch.no_grad():
            encoder_out = model.encode(mel)  # shared by every row: the patches are all downstream
    # A site on the cross-attention keys and values patches them row by row, so each row needs
    # its own; otherwise one clip's encoder output serves every row (decode shares its K/V).
    rows_own_kv = any(_on_cross_kv(model, s) for s in sites)
    chunks = range(0, len(sites), batch_size)
    for start in tqdm(chunks, desc="patching", disable=not progress or len(chunks) < 2, unit="batch"):
        chunk = list(range(start, min(start + batch_size, len(sites))))
        hooks = patch_hooks(
            model, [sites[i] for i in chunk], [sources[i] for i in chunk], alpha, rows=list(range(len(chunk)))
        )
        batch_tokens = tokens.expand(len(chunk), -1)
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            if encoder_out is None:
                enc = model.encode(mel.expand(len(chunk), -1, -1))
            else:
                enc = encoder_out.expand(len(chunk), -1, -1) if rows_own_kv else encoder_out
            values.append(per_row(metric, model.decode(batch_tokens, enc)))
    return torch.cat(values)


def _on_cross_kv(model: HookedAudioModel, site: Site) -> bool:
    """Whether ``site`` is a decoder hook on the audio positions: the cross-attention keys and
    values (or their inputs), computed once per clip."""
    layout = model.hook_layouts[site.hook]
    return layout.stack == "decoder" and layout.unit == "audio_position"


def activation_patch(
    model: HookedAudioModel,
    target,
    source,
    sites: Sequence[Site] | Site | str,
    metric: Metric,
    tokens=None,
    alpha: float = 1.0,
    batch_size: int = 16,
    progress: bool = True,
    sample_rate: int | None = None,
) -> torch.Tensor:
    """Metric of the ``target`` run with each site patched (separately) from the ``source`` run.

    Both runs read the same decoder ``tokens`` (default: the target's prompt plus greedy
    transcript). Clean-into-corrupted and corrupted-into-clean are a matter of which clip is
    the target. ``alpha`` < 1 interpolates toward the source instead of replacing. Returns one
    value per site, in order.
    """
    sites = resolve_all(model, sites)
    mel, tokens = prepare(model, target, tokens, sample_rate)
    check_token_positions(model, sites, tokens.shape[1])
    cache = source_cache(model, source, tokens, {s.hook for s in sites}, sample_rate)
    return _sweep(model, mel, tokens, sites, [cache[s.hook] for s in sites], metric, alpha, batch_size, progress)


def mean_activations(
    model: HookedAudioModel, clips: Sequence, hooks: Sequence[str], tokens=None, sample_rate: int | None = None
) -> dict[str, torch.Tensor]:
    """Per-hook mean over ``clips`` (arrays at ``sample_rate``; and over token positions for
    decoder hooks): the reference for mean ablation."""
    sums: dict[str, torch.Tensor] = {}
    for clip in clips:
        with torch.no_grad():
            _, cache = model.run_with_cache(clip, tokens, names_filter=list(hooks), sample_rate=sample_rate)
        for hook in hooks:
            x = cache[hook]
            layout = model.hook_layouts[hook]
            x = x.mean(dim=layout.pos_axis, keepdim=True) if layout.unit == "token" else x
            sums[hook] = sums.get(hook, 0) + x / len(clips)
    return sums


def ablate(
    model: HookedAudioModel,
    target,
    sites: Sequence[Site] | Site | str,
    metric: Metric | None = None,
    kind: str = "zero",
    reference=None,
    tokens=None,
    batch_size: int = 16,
    progress: bool = True,
    sample_rate: int | None = None,
):
    """Zero, mean or resample ablation of each site, one at a time.

    ``kind="zero"`` sets the site to 0; ``"mean"`` to its mean over ``reference`` (a list of
    clips); ``"resample"`` to its value on ``reference`` (another clip). With a ``metric``,
    returns one value per site; without, returns the hook list for the ablation of all sites
    together, to use with ``model.hooks(...)`` (e.g. while transcribing).
    """
    sites = resolve_all(model, sites)
    mel, target_tokens = prepare(model, target, tokens, sample_rate) if metric is not None else (None, None)
    if target_tokens is not None:
        check_token_positions(model, sites, target_tokens.shape[1])
    if kind == "zero":
        sources: list = [0.0] * len(sites)
    elif kind == "mean":
        if not reference:
            raise ValueError("mean ablation needs reference=[clips] to average over")
        means = mean_activations(model, reference, sorted({s.hook for s in sites}), tokens, sample_rate)
        sources = [means[s.hook] for s in sites]
    elif kind == "resample":
        if reference is None:
            raise ValueError("resample ablation needs reference=<another clip>")
        # With a metric the reference reads the target's tokens; for generation, its own transcript.
        cache = source_cache(model, reference, target_tokens, {s.hook for s in sites}, sample_rate)
        sources = [cache[s.hook] for s in sites]
    else:
        raise ValueError(f"kind must be 'zero', 'mean' or 'resample', not {kind!r}")
    if metric is None:
        return patch_hooks(model, sites, sources)
    return _sweep(model, mel, target_tokens, sites, sources, metric, 1.0, batch_size, progress)
