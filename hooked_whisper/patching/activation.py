"""Activation patching (and interpolation toward another run) and ablation, site by site,
batched over sites."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from hooked_whisper.audio import SAMPLE_RATE
from hooked_whisper.patching.metrics import Metric, WordContrast, per_row
from hooked_whisper.patching.noise import Noise
from hooked_whisper.patching.sites import Site, check_token_positions, region, resolve_all

if TYPE_CHECKING:
    from hooked_whisper.hooked_audio_model import HookedAudioModel


def patch_hooks(
    model: HookedAudioModel,
    sites: Sequence[Site],
    sources: Sequence[torch.Tensor | float],
    alpha: float | Sequence[float] = 1.0,
    rows: Sequence[int | None] | None = None,
) -> list[tuple[str, Callable]]:
    """Hooks that move each site toward its source: ``x <- x + alpha * (source - x)``.

    ``sources[i]`` is the full activation of a reference run at ``sites[i].hook`` (batch 1 or
    the same batch), or a number (0.0 for zero ablation). ``alpha=1`` replaces; smaller values
    interpolate; a sequence gives each site its own. ``rows[i]``, if given, restricts site ``i``
    to one batch row (for sweeps).
    """
    sites = resolve_all(model, sites)
    if len(sources) != len(sites):
        raise ValueError(f"{len(sites)} sites but {len(sources)} sources: give one source per site")
    rows = list(rows) if rows is not None else [None] * len(sites)
    alphas = [float(alpha)] * len(sites) if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if len(alphas) != len(sites):
        raise ValueError(f"one alpha per site: got {len(alphas)} alphas for {len(sites)} sites")
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
                x[here] = x[here] + alphas[i] * (target - x[here])
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
        wanted = torch.arange(model.decode_offset, model.decode_offset + x.shape[pos_axis], device=source.device)
    wanted = torch.as_tensor(wanted, device=source.device)
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
    rows = tokens.tokens if isinstance(tokens, WordContrast) else tokens
    if isinstance(rows, torch.Tensor) and rows.ndim == 2 and rows.shape[0] > 1:  # several continuations
        return mel, torch.cat([model.tokens_for(mel, row[None]) for row in rows])
    return mel, model.tokens_for(mel, rows)


def source_activations(
    model: HookedAudioModel, target, source, tokens: torch.Tensor, hooks: set[str], sample_rate: int | None = None
) -> dict[str, torch.Tensor]:
    """What a patch moves toward at ``hooks``: the run on a ``source`` clip, on a ``Noise``
    reference made for ``target``, or ready activations (a dict by hook name: means, a
    direction added to the target's own...)."""
    if isinstance(source, dict):
        missing = sorted(hooks - set(source))
        if missing:
            raise ValueError(f"the source activations lack {missing[:3]}: give one tensor per patched hook")
        return {h: source[h] for h in hooks}
    if isinstance(source, Noise):
        source = source.like(target, sample_rate)
        sample_rate = SAMPLE_RATE
    # Audio-side hooks do not depend on the tokens: one continuation serves (the others are the same audio).
    if tokens.shape[0] > 1 and all(model.hook_layouts[h].is_encoder_side for h in hooks):
        tokens = tokens[:1]
    return source_cache(model, source, tokens, hooks, sample_rate)


def source_cache(
    model: HookedAudioModel, source, tokens: torch.Tensor, hooks: set[str], sample_rate: int | None = None
) -> dict[str, torch.Tensor]:
    """The activations at ``hooks`` of a run on ``source`` reading ``tokens``."""
    with torch.no_grad():
        _, cache = model.run_with_cache(source, tokens, names_filter=sorted(hooks), sample_rate=sample_rate)
    return dict(cache.items())


def _sweep(model: HookedAudioModel, mel, tokens, sites, sources, metric, alpha, batch_size, progress) -> torch.Tensor:
    """Run every site's patch once, ``batch_size`` sites per batch (row i carries site i). With
    several token rows (continuations, e.g. a ``WordContrast``), each site's encoder output is
    decoded with every row, site by site: the metric sees ``len(chunk) * rows`` rows."""
    n_rows = tokens.shape[0]
    _check_rows(model, sites, n_rows)
    alphas = [alpha] * len(sites) if isinstance(alpha, (int, float)) else list(alpha)
    values = []
    encoder_out = None
    if not any(model.hook_layouts[s.hook].is_encoder_side for s in sites):
        with torch.no_grad():
            encoder_out = model.encode(mel)  # shared by every row: the patches are all downstream
    first, stream = first_patched_block(model, sites), None
    if first is not None:  # the blocks before it are the same in every row: run them once
        with torch.no_grad():
            stream = encoder_stream(model, mel, first)
    # A site on the cross-attention keys and values patches them row by row, so each row needs
    # its own; otherwise one clip's encoder output serves every row (decode shares its K/V).
    rows_own_kv = any(_on_cross_kv(model, s) for s in sites)
    chunks = range(0, len(sites), batch_size)
    for start in tqdm(chunks, desc="patching", disable=not progress or len(chunks) < 2, unit="batch"):
        chunk = list(range(start, min(start + batch_size, len(sites))))
        hooks = patch_hooks(
            model,
            [sites[i] for i in chunk],
            [sources[i] for i in chunk],
            [alphas[i] for i in chunk],
            rows=list(range(len(chunk))),
        )
        batch_tokens = tokens.repeat(len(chunk), 1)
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            if stream is not None:
                enc = model.encode_from(mel.expand(len(chunk), -1, -1), first, stream.expand(len(chunk), -1, -1))
                enc = enc.repeat_interleave(n_rows, 0) if n_rows > 1 else enc
            elif encoder_out is None:
                enc = model.encode(mel.expand(len(chunk), -1, -1))
                enc = enc.repeat_interleave(n_rows, 0) if n_rows > 1 else enc
            else:
                enc = encoder_out.expand(len(chunk), -1, -1) if rows_own_kv else encoder_out
            values.append(per_row(metric, model.decode(batch_tokens, enc), rows=len(chunk)))
    return torch.cat(values)


def first_patched_block(model: HookedAudioModel, sites: Sequence[Site]) -> int | None:
    """The first encoder block any of ``sites`` patches, when a sweep can start there: every
    audio-side site lies in an encoder block (not the front end or the encoder output) and the
    first of them is past block 0. None otherwise."""
    layouts = [model.hook_layouts[s.hook] for s in sites]
    audio_side = [layout for layout in layouts if layout.is_encoder_side]
    if not audio_side or any(layout.stack != "encoder" or layout.layer is None for layout in audio_side):
        return None
    first = min(layout.layer for layout in audio_side)
    return first if first > 0 else None


def encoder_stream(model: HookedAudioModel, features, layer: int) -> torch.Tensor:
    """The unpatched residual stream entering encoder block ``layer`` (the encoder stops there)."""
    seen = {}

    def keep_and_stop(x: torch.Tensor, hook) -> None:
        seen["stream"] = x
        raise _StreamReached

    try:
        with model.hooks(fwd_hooks=[(model.hook_name("encoder", layer, "hook_resid_pre"), keep_and_stop)]):
            model.encode(features)
    except _StreamReached:
        pass
    return seen["stream"]


class _StreamReached(Exception):
    """Ends an encoder pass at the block whose input ``encoder_stream`` wanted."""


def _check_rows(model: HookedAudioModel, sites: Sequence[Site], n_rows: int) -> None:
    if n_rows > 1 and not all(model.hook_layouts[s.hook].is_encoder_side for s in sites):
        raise ValueError(
            "several token rows per site (a word contrast) work with audio-side sites only (the front end "
            "and the encoder); patch decoder sites with one token sequence, e.g. each continuation in turn"
        )


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
    alpha: float | Sequence[float] = 1.0,
    batch_size: int = 16,
    progress: bool = True,
    sample_rate: int | None = None,
) -> torch.Tensor:
    """Metric of the ``target`` run with each site patched (separately) from the ``source`` run.

    ``source`` is a clip, a ``Noise`` reference (made for the target: its length and loudness)
    or ready activations by hook name. Both runs read the same decoder ``tokens`` (default: the
    target's prompt plus greedy transcript; a ``WordContrast`` decodes both of its words).
    Clean-into-corrupted and corrupted-into-clean are a matter of which clip is the target.
    ``alpha`` < 1 interpolates toward the source instead of replacing. Returns one value per
    site, in order; with a sequence of alphas, ``[alphas, sites]`` (all batched together).
    """
    sites = resolve_all(model, sites)
    mel, tokens = prepare(model, target, tokens, sample_rate)
    check_token_positions(model, sites, tokens.shape[1])
    _check_rows(model, sites, tokens.shape[0])
    cache = source_activations(model, target, source, tokens, {s.hook for s in sites}, sample_rate)
    alphas = [float(alpha)] if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if not alphas:
        raise ValueError("alpha is an empty sequence: give one value or several")
    every = [s for _ in alphas for s in sites]
    values = _sweep(
        model,
        mel,
        tokens,
        every,
        [cache[s.hook] for s in every],
        metric,
        [a for a in alphas for _ in sites],
        batch_size,
        progress,
    )
    return values if isinstance(alpha, (int, float)) else values.reshape(len(alphas), len(sites))


def reference_hooks(
    model: HookedAudioModel,
    target,
    source,
    sites: Sequence[Site] | Site | str,
    alpha: float = 1.0,
    tokens=None,
    sample_rate: int | None = None,
) -> list[tuple[str, Callable]]:
    """The hooks moving every site (together) toward ``source`` (a clip, a ``Noise`` made for
    ``target``, or activations by hook name) by ``alpha``, for ``model.transcribe(target,
    fwd_hooks=...)`` or any other run on ``target``. Decoder sites need the ``tokens`` both runs
    read (default: the target's greedy transcript); audio-side sites ignore them."""
    sites = resolve_all(model, sites)
    mel = model.to_mel(target, sample_rate)
    with torch.no_grad():
        token_rows = model.tokens_for(mel, tokens)
    cache = source_activations(model, target, source, token_rows, {s.hook for s in sites}, sample_rate)
    return patch_hooks(model, sites, [cache[s.hook] for s in sites], alpha)


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
        if isinstance(reference, Noise):
            reference = reference.like(target, sample_rate)
            sample_rate = SAMPLE_RATE
        cache = source_cache(model, reference, target_tokens, {s.hook for s in sites}, sample_rate)
        sources = [cache[s.hook] for s in sites]
    else:
        raise ValueError(f"kind must be 'zero', 'mean' or 'resample', not {kind!r}")
    if metric is None:
        return patch_hooks(model, sites, sources)
    return _sweep(model, mel, target_tokens, sites, sources, metric, 1.0, batch_size, progress)
