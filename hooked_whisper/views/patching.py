"""Patching results as maps: an activation-patching sweep (one value per ``Site``) laid out as
hook (layer) x head, x time window or x position, and a path-patching map of senders x receiver
heads. The colour scale is the metric's: centred on zero when the values take both signs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hooked_whisper.hook_layout import layer_template
from hooked_whisper.hooked_audio_model import HookedAudioModel
from hooked_whisper.patching.paths import Receiver
from hooked_whisper.patching.sites import Seconds, Site, resolve
from hooked_whisper.views.page import Axis, Heatmap


def sweep_view(
    model: HookedAudioModel,
    sites: Sequence[Site | str],
    values: torch.Tensor,
    metric: str = "metric",
    alphas: Sequence[float] | None = None,
    position_labels: Sequence[str] | None = None,
) -> Heatmap:
    """``values`` from ``activation_patch`` (or ``ablate``) over ``sites``: ``[sites]``, or
    ``[alphas, sites]`` with ``alphas`` (a selector in the page). Rows: each hook (its layer);
    columns: what varies across a hook's sites (head, time window, position). ``metric`` names
    the colour bar; ``position_labels`` (e.g. the decoder's tokens) label position columns."""
    # Checked by resolving, but laid out as given: a time window stays in seconds.
    sites = [s if isinstance(s, Site) else r for s, r in zip(sites, [resolve(model, s) for s in sites])]
    grid = torch.as_tensor(values).detach().float().cpu().numpy()
    grid = grid[None] if alphas is None else grid
    if grid.shape != (1 if alphas is None else len(alphas), len(sites)):
        raise ValueError(
            f"values have shape {tuple(torch.as_tensor(values).shape)} for {len(sites)} sites"
            + ("" if alphas is None else f" and {len(alphas)} alphas: expected [alphas, sites]")
        )
    hooks = list(dict.fromkeys(s.hook for s in sites))
    columns = list(dict.fromkeys(_column(s) for s in sites))
    cell = {(s.hook, _column(s)): i for i, s in enumerate(sites)}
    missing = [(h, c) for h in hooks for c in columns if (h, c) not in cell]
    if missing or len(cell) != len(sites):
        raise ValueError(
            "the sites do not form a full grid of hooks x (head, window or position), each once: "
            "build them with head_sites, layer_sites, window_sites or position_sites"
        )
    index = np.array([[cell[(h, c)] for c in columns] for h in hooks])
    templates = {layer_template(h) for h in hooks}
    layers = [model.hook_layout(h).layer for h in hooks]
    one_kind = len(templates) == 1 and None not in layers
    row_axis = Axis(
        f"layer of {templates.pop()}" if one_kind else "hook", [str(l) for l in layers] if one_kind else hooks
    )
    col_labels = [_column_label(c, position_labels) for c in columns]
    return Heatmap(
        (grid[0, index] if alphas is None else grid[:, index]).astype(np.float32),
        rows=row_axis,
        cols=Axis(_column_name(columns[0]), col_labels),
        selectors=[] if alphas is None else [Axis("alpha", [f"{a:g}" for a in alphas])],
        title=f"activation patching: {metric}",
        value_name=metric,
        diverging=bool(grid.min() < 0 < grid.max()),
    )


def path_patching_view(
    senders: Sequence[Site | str], receivers: Sequence[Receiver], values: torch.Tensor, metric: str = "metric"
) -> Heatmap:
    """``values [sender, receiver]``: one ``path_patch`` result per sender, stacked."""
    grid = torch.as_tensor(values).detach().float().cpu().numpy()
    if grid.shape != (len(senders), len(receivers)):
        raise ValueError(
            f"values have shape {grid.shape}; expected [senders, receivers] = [{len(senders)}, {len(receivers)}]"
        )
    return Heatmap(
        grid.astype(np.float32),
        rows=Axis("sender", [s.name if isinstance(s, Site) else s for s in senders]),
        cols=Axis("receiver head", [r.name for r in receivers]),
        title=f"path patching: {metric}",
        value_name=metric,
        diverging=bool(grid.min() < 0 < grid.max()),
    )


def _column(site: Site) -> tuple:
    positions = site.positions
    if isinstance(positions, Seconds):
        positions = ("s", positions.start, positions.end)
    return (site.head, positions)


def _column_name(column: tuple) -> str:
    head, positions = column
    if positions is None:
        return "head" if head is not None else "site"
    return "time window" if positions[0] == "s" else "position"


def _column_label(column: tuple, position_labels: Sequence[str] | None) -> str:
    head, positions = column
    parts = [] if head is None else [f"H{head}"]
    if positions is not None and positions[0] == "s":
        parts.append(f"{positions[1]:g}-{positions[2]:g} s")
    elif positions is not None:
        first = positions[0]
        name = position_labels[first] if position_labels is not None and len(positions) == 1 else ""
        parts.append(f"{first}{':' + name if name else ''}" if len(positions) == 1 else f"{first}..{positions[-1]}")
    return " ".join(parts) or "all"
