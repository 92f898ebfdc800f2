"""Causal interventions through hook names: activation patching (and interpolation toward
another run), ablation, path patching across encoder-to-decoder cross-attention, and
attribution patching.

Every intervention is a list of ordinary ``(hook_name, fn)`` pairs (``patch_hooks``), so it
works the same in a teacher-forced forward, in ``run_with_cache`` and during generation
(``with model.hooks(fwd_hooks=...): model.transcribe(...)``).

A ``Site`` names what to patch: a hook, optionally one head, optionally some positions (decoder
token positions, or encoder frames: 50 per second). Positions are absolute, so a patch keeps
its meaning in KV-cached generation, where each step sees only its new positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from hooked_whisper.components.attention import project

if TYPE_CHECKING:
    from hooked_whisper.model import HookedWhisper

FRAMES_PER_SECOND = 50  # encoder positions per second of audio
Metric = Callable[[torch.Tensor], torch.Tensor]  # logits [batch, pos, vocab] -> [batch]


@dataclass(frozen=True)
class Site:
    hook: str
    head: int | None = None
    positions: tuple[int, ...] | None = None  # None: every position
    label: str | None = None

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        parts = [self.hook] + ([f"head {self.head}"] if self.head is not None else [])
        if self.positions is not None:
            parts.append(
                f"pos {self.positions[0]}..{self.positions[-1]}"
                if len(self.positions) > 1
                else f"pos {self.positions[0]}"
            )
        return " ".join(parts)


def frames(start_s: float, end_s: float) -> tuple[int, ...]:
    """Encoder frames covering ``[start_s, end_s)`` seconds of audio."""
    if not 0 <= start_s < end_s <= 30:
        raise ValueError(f"a frame window must satisfy 0 <= start < end <= 30 s; got {start_s}..{end_s}")
    return tuple(range(int(start_s * FRAMES_PER_SECOND), math.ceil(end_s * FRAMES_PER_SECOND)))


# ---------------------------------------------------------------------------------------- layout
def _axes(hook: str) -> tuple[int, int | None]:
    """(position axis, head axis) of a hook's activation, batch first."""
    leaf = hook.rsplit(".", 1)[-1]
    if hook == "hook_mel":
        return 2, None
    if leaf in ("hook_pattern", "hook_attn_scores"):
        return 2, 1
    if leaf in ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result") or leaf.endswith("_input"):
        return 1, 2
    return 1, None


def _counts_tokens(hook: str) -> bool:
    """Whether the position axis of ``hook`` is decoder tokens (shifted in cached generation)."""
    if hook.startswith(("encoder", "hook_mel", "hook_encoder_out")):
        return False
    return not (
        ".cross_attn.hook_k" in hook
        or ".cross_attn.hook_v" in hook
        or "hook_cross_k_input" in hook
        or "hook_cross_v_input" in hook
    )


def _is_encoder_side(hook: str) -> bool:
    return hook.startswith(("encoder", "hook_mel", "hook_encoder_out"))


def _check_site(model: HookedWhisper, site: Site) -> None:
    model.check_hook_name(site.hook)
    _, head_axis = _axes(site.hook)
    if site.head is not None:
        if head_axis is None:
            raise ValueError(f"{site.hook} has no head axis; patch a per-head hook (hook_z, hook_q, ...) for heads")
        if not 0 <= site.head < model.cfg.n_heads:
            raise ValueError(f"head {site.head} out of range: this model has heads 0..{model.cfg.n_heads - 1}")
    if site.positions is not None and not _counts_tokens(site.hook):
        limit = model.cfg.n_frames if site.hook in ("hook_mel", "encoder_embed.hook_conv1") else model.cfg.n_audio_ctx
        bad = [p for p in site.positions if not 0 <= p < limit]
        if bad:
            raise ValueError(f"frames {bad[:3]}... lie outside the {limit} positions of {site.hook}")


def _region(model: HookedWhisper, site: Site, x: torch.Tensor, row: int | None) -> tuple[tuple, tuple] | None:
    """Index tuples (into the hooked tensor, into the full-run source) for ``site``."""
    pos_axis, head_axis = _axes(site.hook)
    here: list = [slice(None)] * x.ndim
    there: list = [slice(None)] * x.ndim
    if row is not None:
        here[0] = slice(row, row + 1)
    if site.head is not None:
        here[head_axis] = there[head_axis] = site.head  # type: ignore[index]
    offset = model.decode_offset if _counts_tokens(site.hook) else 0
    n_here = x.shape[pos_axis]
    wanted = range(offset, offset + n_here) if site.positions is None else site.positions
    absolute = [p for p in wanted if offset <= p < offset + n_here]
    if not absolute:
        return None  # none of the site's positions are in this call (a later generation step)
    here[pos_axis] = [p - offset for p in absolute]
    there[pos_axis] = absolute
    if site.positions is None and offset == 0:
        here[pos_axis] = there[pos_axis] = slice(None)
    return tuple(here), tuple(there)


def patch_hooks(
    model: HookedWhisper,
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
    for site in sites:
        _check_site(model, site)
    rows = list(rows) if rows is not None else [None] * len(sites)
    by_hook: dict[str, list[int]] = {}
    for i, site in enumerate(sites):
        by_hook.setdefault(site.hook, []).append(i)

    def make(indices: list[int]) -> Callable:
        def hook_fn(x: torch.Tensor, hook) -> torch.Tensor | None:
            regions = [(i, _region(model, sites[i], x, rows[i])) for i in indices]
            if all(region is None for _, region in regions):
                return None  # nothing to patch at this step (e.g. a later generation position)
            x = x.clone()
            for i, region in regions:
                if region is None:
                    continue
                here, there = region
                source = sources[i]
                if isinstance(source, torch.Tensor):
                    pos_axis = _axes(sites[i].hook)[0]
                    if source.shape[pos_axis] == 1 and x.shape[pos_axis] != 1:  # a mean over positions
                        there = tuple(slice(None) if a == pos_axis else t for a, t in enumerate(there))
                    if source.shape[1:] != x.shape[1:] and not _counts_tokens(sites[i].hook):
                        raise ValueError(
                            f"source activation {tuple(source.shape)} does not match {tuple(x.shape)} at {hook.name}"
                        )
                    try:
                        target = source[there].to(x.dtype)
                    except IndexError as err:
                        raise ValueError(
                            f"the reference run has {source.shape[_axes(sites[i].hook)[0]]} positions at {hook.name}, "
                            "fewer than this run: give both runs the same tokens"
                        ) from err
                else:
                    target = torch.full_like(x[here], float(source))
                x[here] = x[here] + alpha * (target - x[here])
            return x

        return hook_fn

    return [(hook, make(indices)) for hook, indices in by_hook.items()]


# ---------------------------------------------------------------------------------------- metrics
def logit_diff(correct: int, incorrect: int, position: int = -1) -> Metric:
    """logit[correct] - logit[incorrect] at one decoder position."""
    return lambda logits: logits[:, position, correct] - logits[:, position, incorrect]


def target_log_prob(tokens: torch.Tensor, start: int) -> Metric:
    """Summed log-probability of ``tokens[start:]`` under teacher forcing (e.g. of a transcript
    after its prompt): each position predicts the next token."""
    tokens = torch.as_tensor(tokens).reshape(-1)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        logp = logits[:, start - 1 : len(tokens) - 1].float().log_softmax(-1)
        return logp.gather(-1, tokens[start:].to(logits.device).expand(len(logits), -1)[..., None])[..., 0].sum(-1)

    return metric


def kl_divergence(reference_logits: torch.Tensor) -> Metric:
    """Mean over positions of KL(reference || patched)."""
    ref = reference_logits.float().log_softmax(-1)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        logp = logits.float().log_softmax(-1)
        return (ref.exp() * (ref - logp)).sum(-1).mean(-1)

    return metric


# ---------------------------------------------------------------------------------------- sweeps
def head_sites(
    model: HookedWhisper,
    stack: str = "decoder",
    kind: str = "cross_attn",
    hook: str = "hook_z",
    positions: Sequence[int] | None = None,
) -> list[Site]:
    """One site per head of every layer: ``{stack}_blocks.{l}.{kind}.{hook}`` (labels XL/DL/EL{l}H{h})."""
    n_layers = model.cfg.n_encoder_layers if stack == "encoder" else model.cfg.n_decoder_layers
    tag = "EL" if stack == "encoder" else ("XL" if kind == "cross_attn" else "DL")
    pos = tuple(positions) if positions is not None else None
    return [
        Site(f"{stack}_blocks.{l}.{kind}.{hook}", h, pos, f"{tag}{l}H{h}")
        for l in range(n_layers)
        for h in range(model.cfg.n_heads)
    ]


def layer_sites(model: HookedWhisper, template: str, positions: Sequence[int] | None = None) -> list[Site]:
    """One site per layer, e.g. ``layer_sites(model, "decoder_blocks.{l}.hook_cross_attn_out")``."""
    n_layers = model.cfg.n_encoder_layers if template.startswith("encoder") else model.cfg.n_decoder_layers
    pos = tuple(positions) if positions is not None else None
    return [Site(template.format(l=l), None, pos, template.format(l=l)) for l in range(n_layers)]


def position_sites(hook: str, n_positions: int, head: int | None = None) -> list[Site]:
    """One site per position of ``hook`` (decoder tokens or encoder frames)."""
    return [Site(hook, head, (p,), f"{hook} pos {p}") for p in range(n_positions)]


def window_sites(hook: str, duration_s: float, window_s: float = 0.5) -> list[Site]:
    """Consecutive encoder frame windows of ``window_s`` seconds over the first ``duration_s``."""
    starts = [i * window_s for i in range(math.ceil(duration_s / window_s))]
    return [Site(hook, None, frames(s, min(s + window_s, 30.0)), f"{hook} {s:.1f}-{s + window_s:.1f}s") for s in starts]


# ---------------------------------------------------------------------------------------- runs
def _prepare(model: HookedWhisper, target, tokens) -> tuple[torch.Tensor, torch.Tensor]:
    mel = model.to_mel(target)
    if mel.shape[0] != 1:
        raise ValueError("patching takes one target clip at a time (sweeps batch over sites)")
    return mel, model.tokens_for(mel, tokens)


def _source_cache(model: HookedWhisper, source, tokens: torch.Tensor, hooks: set[str]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        _, cache = model.run_with_cache(source, tokens, names_filter=sorted(hooks))
    return dict(cache.items())


def _sweep(model: HookedWhisper, mel, tokens, sites, sources, metric, alpha, batch_size, progress) -> torch.Tensor:
    """Run every site's patch once, ``batch_size`` sites per batch (row i carries site i)."""
    values = []
    encoder_out = None
    if not any(_is_encoder_side(s.hook) for s in sites):
        with torch.no_grad():
            encoder_out = model.encode(mel)  # shared by every row: the patches are all downstream
    chunks = range(0, len(sites), batch_size)
    for start in tqdm(chunks, desc="patching", disable=not progress or len(chunks) < 2, unit="batch"):
        chunk = list(range(start, min(start + batch_size, len(sites))))
        hooks = patch_hooks(
            model, [sites[i] for i in chunk], [sources[i] for i in chunk], alpha, rows=list(range(len(chunk)))
        )
        batch_tokens = tokens.expand(len(chunk), -1)
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            enc = (
                encoder_out.expand(len(chunk), -1, -1)
                if encoder_out is not None
                else model.encode(mel.expand(len(chunk), -1, -1))
            )
            values.append(metric(model.decode(batch_tokens, enc)))
    return torch.cat(values)


def activation_patch(
    model: HookedWhisper,
    target,
    source,
    sites: Sequence[Site] | Site | str,
    metric: Metric,
    tokens=None,
    alpha: float = 1.0,
    batch_size: int = 16,
    progress: bool = True,
) -> torch.Tensor:
    """Metric of the ``target`` run with each site patched (separately) from the ``source`` run.

    Both runs read the same decoder ``tokens`` (default: the target's prompt plus greedy
    transcript). Clean-into-corrupted and corrupted-into-clean are a matter of which clip is
    the target. ``alpha`` < 1 interpolates toward the source instead of replacing. Returns one
    value per site, in order.
    """
    sites = [Site(sites)] if isinstance(sites, str) else [sites] if isinstance(sites, Site) else list(sites)
    for site in sites:
        _check_site(model, site)
    mel, tokens = _prepare(model, target, tokens)
    cache = _source_cache(model, source, tokens, {s.hook for s in sites})
    return _sweep(model, mel, tokens, sites, [cache[s.hook] for s in sites], metric, alpha, batch_size, progress)


def mean_activations(
    model: HookedWhisper, clips: Sequence, hooks: Sequence[str], tokens=None
) -> dict[str, torch.Tensor]:
    """Per-hook mean over ``clips`` (and over token positions for decoder hooks): the reference for mean ablation."""
    sums: dict[str, torch.Tensor] = {}
    for clip in clips:
        with torch.no_grad():
            _, cache = model.run_with_cache(clip, tokens, names_filter=list(hooks))
        for hook in hooks:
            x = cache[hook]
            x = x.mean(dim=_axes(hook)[0], keepdim=True) if _counts_tokens(hook) else x
            sums[hook] = sums.get(hook, 0) + x / len(clips)
    return sums


def ablate(
    model: HookedWhisper,
    target,
    sites: Sequence[Site] | Site | str,
    metric: Metric | None = None,
    kind: str = "zero",
    reference=None,
    tokens=None,
    batch_size: int = 16,
    progress: bool = True,
):
    """Zero, mean or resample ablation of each site, one at a time.

    ``kind="zero"`` sets the site to 0; ``"mean"`` to its mean over ``reference`` (a list of
    clips); ``"resample"`` to its value on ``reference`` (another clip). With a ``metric``,
    returns one value per site; without, returns the hook list for the ablation of all sites
    together, to use with ``model.hooks(...)`` (e.g. while transcribing).
    """
    sites = [Site(sites)] if isinstance(sites, str) else [sites] if isinstance(sites, Site) else list(sites)
    for site in sites:
        _check_site(model, site)
    mel, target_tokens = _prepare(model, target, tokens) if metric is not None else (None, None)
    if kind == "zero":
        sources: list = [0.0] * len(sites)
    elif kind == "mean":
        if not reference:
            raise ValueError("mean ablation needs reference=[clips] to average over")
        means = mean_activations(model, reference, sorted({s.hook for s in sites}), tokens=tokens)
        sources = [means[s.hook] for s in sites]
    elif kind == "resample":
        if reference is None:
            raise ValueError("resample ablation needs reference=<another clip>")
        # With a metric the reference reads the target's tokens; for generation, its own transcript.
        cache = _source_cache(model, reference, target_tokens, {s.hook for s in sites})
        sources = [cache[s.hook] for s in sites]
    else:
        raise ValueError(f"kind must be 'zero', 'mean' or 'resample', not {kind!r}")
    if metric is None:
        return patch_hooks(model, sites, sources)
    return _sweep(model, mel, target_tokens, sites, sources, metric, 1.0, batch_size, progress)


# ---------------------------------------------------------------------------------------- paths
@dataclass(frozen=True)
class Receiver:
    """A decoder attention head that receives the sender's effect.

    ``kind="cross_attn"`` with ``via`` in ``"k"``, ``"v"``, ``"kv"``: through the keys and/or
    values it reads from the encoder output. ``kind="attn"`` with ``via`` in ``"q"``, ``"k"``,
    ``"v"`` (any combination): through that head's input from the decoder residual stream.
    """

    layer: int
    head: int
    via: str = "kv"
    kind: str = "cross_attn"

    @property
    def name(self) -> str:
        return f"{'XL' if self.kind == 'cross_attn' else 'DL'}{self.layer}H{self.head} via {self.via}"


def cross_attention_receivers(model: HookedWhisper, via: str = "kv") -> list[Receiver]:
    return [Receiver(l, h, via) for l in range(model.cfg.n_decoder_layers) for h in range(model.cfg.n_heads)]


def _sender_delta(model: HookedWhisper, sender: Site, base: dict, source: dict) -> torch.Tensor:
    """What the sender adds to the residual stream in the source run minus in the base run, as
    ``[1, pos, d_model]`` (zero outside the sender's positions)."""
    hook = sender.hook
    delta = source[hook] - base[hook]
    if hook.endswith((".attn.hook_z", ".cross_attn.hook_z")):
        block, kind = hook.split(".")[0:2], hook.split(".")[2]
        stack = model.encoder_blocks if block[0] == "encoder_blocks" else model.decoder_blocks
        W_O = getattr(stack[int(block[1])], kind).W_O
        heads = [sender.head] if sender.head is not None else list(range(model.cfg.n_heads))
        delta = torch.einsum("bphd,hdm->bpm", delta[:, :, heads], W_O[heads])
    elif sender.head is not None:
        raise ValueError(f"a head sender must be an attention hook_z, not {hook}")
    elif _axes(hook) != (1, None) or hook.endswith(("hook_conv1", "_input", "hook_scale")) or ".ln" in hook:
        raise ValueError(
            f"{hook} does not write to the residual stream; senders are embeddings, hook_attn_out, "
            "hook_mlp_out, hook_cross_attn_out, hook_resid_post or a head's hook_z"
        )
    if sender.positions is not None:
        mask = torch.zeros(delta.shape[1], dtype=delta.dtype, device=delta.device)
        mask[list(sender.positions)] = 1
        delta = delta * mask[None, :, None]
    return delta


@contextmanager
def _flags(model: HookedWhisper, **flags: bool):
    """Switch opt-in hooks on for the duration (blocks read the shared config at call time)."""
    old = {k: getattr(model.cfg, k) for k in flags}
    for k, v in flags.items():
        setattr(model.cfg, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(model.cfg, k, v)


def path_patch(
    model: HookedWhisper,
    base,
    source,
    sender: Site | str,
    receivers: Sequence[Receiver],
    metric: Metric,
    tokens=None,
    jointly: bool = False,
    batch_size: int = 16,
    progress: bool = True,
) -> torch.Tensor:
    """Patch the direct path from ``sender`` to each receiver head (one receiver at a time, or
    all of them in one run with ``jointly=True``, which returns a single value).

    The sender's change (source run minus base run, restricted to its positions or frames) is
    added to the residual stream as the receiver sees it, with every component in between held
    at its base value; everything else in the network runs on the base input. For a
    cross-attention receiver the changed stream passes through ``encoder_ln_final`` (recomputed:
    it is on the path) into that head's keys and/or values only. Returns one value per receiver.
    """
    sender = Site(sender) if isinstance(sender, str) else sender
    _check_site(model, sender)
    receivers = list(receivers)
    for r in receivers:
        if not (0 <= r.layer < model.cfg.n_decoder_layers and 0 <= r.head < model.cfg.n_heads):
            raise ValueError(f"receiver {r.name} does not exist in this model")
        allowed = set("kv") if r.kind == "cross_attn" else set("qkv")
        if not r.via or not set(r.via) <= allowed:
            raise ValueError(f"receiver {r.name}: via must use {sorted(allowed)}")
    to_encoder = _is_encoder_side(sender.hook)
    if any((r.kind == "cross_attn") != to_encoder for r in receivers):
        raise ValueError(
            "encoder senders reach decoder heads through cross-attention receivers; decoder senders "
            "reach later decoder heads through self-attention (kind='attn') receivers"
        )
    mel, tokens = _prepare(model, base, tokens)
    n_enc = model.cfg.n_encoder_layers
    needed = {sender.hook, f"encoder_blocks.{n_enc - 1}.hook_resid_post", "hook_encoder_out"}
    base_cache = _source_cache(model, mel, tokens, needed)
    source_cache = _source_cache(model, source, tokens, {sender.hook})
    delta = _sender_delta(model, sender, base_cache, source_cache)
    encoder_out = base_cache["hook_encoder_out"]  # the base run already computed it
    values = []
    groups = [receivers] if jointly else [receivers[i : i + batch_size] for i in range(0, len(receivers), batch_size)]
    for chunk in tqdm(groups, desc="path patching", disable=not progress or len(groups) < 2, unit="batch"):
        rows = [0] * len(chunk) if jointly else list(range(len(chunk)))
        batch = 1 if jointly else len(chunk)
        hooks = []
        if to_encoder:
            with torch.no_grad():
                patched_out = model.encoder_ln_final(base_cache[f"encoder_blocks.{n_enc - 1}.hook_resid_post"] + delta)
            for row, r in zip(rows, chunk):
                attn = model.decoder_blocks[r.layer].cross_attn
                for part, W, b in (("k", attn.W_K, None), ("v", attn.W_V, attn.b_V)):
                    if part in r.via:
                        new = project(patched_out, W, b)[:, :, r.head]
                        hooks.append((f"decoder_blocks.{r.layer}.cross_attn.hook_{part}", _set_head(row, r.head, new)))
        else:
            sender_layer = int(sender.hook.split(".")[1]) if sender.hook.startswith("decoder_blocks.") else -1
            for row, r in zip(rows, chunk):
                if r.layer <= sender_layer:
                    raise ValueError(f"receiver {r.name} is not downstream of {sender.hook}")
                for part in r.via:
                    hooks.append(
                        (f"decoder_blocks.{r.layer}.hook_{part}_input", _add_to_head(model, row, r.head, delta))
                    )
        with (
            torch.no_grad(),
            _flags(model, use_split_qkv_input=not to_encoder or model.cfg.use_split_qkv_input),
            model.hooks(fwd_hooks=hooks),
        ):
            values.append(metric(model.decode(tokens.expand(batch, -1), encoder_out.expand(batch, -1, -1))))
    return torch.cat(values)


def _set_head(row: int, head: int, value: torch.Tensor) -> Callable:
    def hook_fn(x: torch.Tensor, hook) -> torch.Tensor:
        x = x.clone()
        x[row, :, head] = value[0]
        return x

    return hook_fn


def _add_to_head(model: HookedWhisper, row: int, head: int, delta: torch.Tensor) -> Callable:
    def hook_fn(x: torch.Tensor, hook) -> torch.Tensor:
        x = x.clone()
        offset = model.decode_offset
        x[row, :, head] = x[row, :, head] + delta[0, offset : offset + x.shape[1]]
        return x

    return hook_fn


# ---------------------------------------------------------------------------------------- gradients
def attribution_patch(
    model: HookedWhisper,
    base,
    source,
    metric: Metric,
    hooks: Sequence[str] | None = None,
    tokens=None,
) -> dict[str, torch.Tensor]:
    """First-order estimate of patching every site from ``source`` into ``base`` at once:
    ``(source - base) . d metric / d activation``, from one forward and one backward pass.

    Returns, per hook, the estimate summed over positions and feature dimensions, kept per
    head for per-head hooks (``[n_heads]``) and a scalar otherwise. Default hooks: every
    attention head's ``hook_z`` (self and cross) and every ``hook_mlp_out``, both stacks.
    """
    if hooks is None:
        hooks = [n for n in model.hook_dict if n.endswith(("attn.hook_z", "hook_mlp_out"))]
    hooks = list(hooks)
    for name in hooks:
        model.check_hook_name(name)
    mel, tokens = _prepare(model, base, tokens)
    source_cache = _source_cache(model, source, tokens, set(hooks))
    live: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, hook) -> None:
        x.retain_grad()
        live[hook.name] = x

    with torch.enable_grad(), model.hooks(fwd_hooks=[(h, keep) for h in hooks]):
        value = metric(model(mel, tokens)).sum()
        value.backward()
    model.zero_grad(set_to_none=True)
    out = {}
    for name in hooks:
        x = live[name]
        contribution = (source_cache[name] - x.detach()) * x.grad
        _, head_axis = _axes(name)
        out[name] = (
            contribution.transpose(head_axis, -1).flatten(0, -2).sum(0) if head_axis is not None else contribution.sum()
        )
    return out


__all__ = [
    "Receiver",
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
