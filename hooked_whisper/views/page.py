"""The one heatmap every view is drawn as, and the one page template they share.

A ``Heatmap`` holds values ``[*selectors, rows, cols]``: the selectors (layer, head, alpha...)
become drop-downs in the page (each with a "mean" entry) and arguments of ``png``. Its axes are
either labelled steps (tokens, layers, heads) or time (seconds per step), and a time axis of
columns can carry the clip's log-mel strip and word spans under it.

In the page every panel (one choice of the selectors) is stored as base64 uint8, quantised to the
panel's own range (value = low + byte * step), and decoded by the browser only when it is shown.
Big views are made smaller before that by averaging consecutive time steps into bins
(``time_bins``): the page of a 30 s window with 32 layers x 20 heads holds at most
``MAX_PAGE_CELLS`` values. Nothing is fetched: no server, no CDN."""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

QUANT_LEVELS = 255  # uint8 per value
# About 5.3 MB of base64 per page: reading the file is most of the time a page takes to open.
MAX_PAGE_CELLS = 4_000_000
MEL_PER_SECOND = 100
# Beyond these the labels would overlap in a 10-inch picture (and each costs matplotlib time).
MAX_PNG_TICKS = 60
MAX_PNG_CELL_TEXTS = 150
CHAR_WIDTH = 0.0075  # of the time axis, per character of a 6-point word label
TOP_INCHES, BOTTOM_INCHES, GAP_INCHES = 0.4, 1.1, 1.1  # room for titles, rotated labels, axis names
MEAN_OF_ALL_PANELS = 16  # a page with more panels opens on one layer: averaging them all costs time


@dataclass
class Axis:
    name: str
    labels: list[str] | None = None  # one per step; None for a time axis
    seconds_per_step: float | None = None

    def label(self, i: int) -> str:
        if self.labels is not None:
            return self.labels[i]
        return f"{i * self.seconds_per_step:.2f} s"


class Page:
    """A view that is one HTML page: ``html(path)`` writes it, Jupyter shows it inline."""

    def page(self) -> str:
        raise NotImplementedError

    def html(self, path: str | Path) -> Path:
        return write_page(path, self.page())

    def _repr_html_(self) -> str:
        return iframe(self.page())


@dataclass
class Heatmap(Page):
    values: np.ndarray  # [*selectors, rows, cols], float32
    rows: Axis
    cols: Axis
    selectors: list[Axis] = field(default_factory=list)
    title: str = ""
    value_name: str = "value"
    diverging: bool = False  # signed values: a colour scale centred on zero
    marks: list[tuple[float, float, str]] = field(default_factory=list)  # (start s, end s, word) on time columns
    cell_text: list[list[str]] | None = None  # [rows][cols] text shown in the cells (maps without selectors)
    outlined: list[tuple[int, int]] = field(default_factory=list)  # (row, col) cells drawn with a frame
    mel: np.ndarray | None = None  # [n_mels, frames at 100/s] log-mel strip under time columns
    binned: int = 1  # time steps averaged into each row/column of a time axis (seconds_per_step counts bins)

    def __post_init__(self) -> None:
        steps = [len(s.labels or []) for s in self.selectors]
        for axis, n in ((self.rows, self.values.shape[-2]), (self.cols, self.values.shape[-1])):
            steps.append(n if axis.labels is None else len(axis.labels))
        want = tuple(steps)
        if self.values.shape != want:
            raise ValueError(f"heatmap values have shape {self.values.shape}; the axes say {want}")
        bad = np.argwhere(~np.isfinite(self.values))
        if len(bad):  # it would set its panel's quantisation range and blank every cell of the panel
            raise ValueError(
                f"heatmap values are not finite at {bad[0].tolist()} ({len(bad)} cells, NaN or inf): "
                "find where the metric is undefined and drop or replace those values before drawing"
            )

    def grid(self, **selection: int | None) -> np.ndarray:
        """One panel ``[rows, cols]``: a selector given by name picks one index, one left out is averaged."""
        names = [s.name for s in self.selectors]
        unknown = set(selection) - set(names)
        if unknown:
            raise ValueError(f"unknown selector(s) {sorted(unknown)}: this view has {names}")
        out = self.values
        for axis, name in reversed(list(enumerate(names))):
            pick = selection.get(name)
            out = out.mean(axis=axis) if pick is None else out.take(pick, axis=axis)
        return out

    def quantised(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 panels ``[panel, rows, cols]``, each panel's low value and step (value = low + byte * step)."""
        panels = self.values.reshape(-1, *self.values.shape[-2:])
        low, high = panels.min(axis=(1, 2)), panels.max(axis=(1, 2))
        step = np.where(high > low, (high - low) / QUANT_LEVELS, 1.0).astype(np.float32)
        data = np.rint((panels - low[:, None, None]) / step[:, None, None]).astype(np.uint8)
        return data, low.astype(np.float32), step

    def spec(self) -> dict:
        """What the page's script reads: axes, marks, and each panel's bytes as base64."""
        data, low, step = self.quantised()
        n_panels = data.shape[0]
        mel = None
        if self.mel is not None:
            strip = self.mel - self.mel.min()
            strip = np.rint(strip / max(float(strip.max()), 1e-12) * QUANT_LEVELS).astype(np.uint8)
            mel = {"b64": _b64(strip), "n_mels": strip.shape[0], "frames": strip.shape[1]}
        # A big view opens on its last layer (heads averaged) rather than the mean of every panel.
        initial = [-1] * len(self.selectors)
        if n_panels > MEAN_OF_ALL_PANELS and self.selectors:
            initial[0] = len(self.selectors[0].labels) - 1  # type: ignore[arg-type]
        return {
            "title": self.title,
            "shape": list(self.values.shape),
            "selectors": [{"name": s.name, "labels": s.labels} for s in self.selectors],
            "initial": initial,
            "rows": _axis_spec(self.rows),
            "cols": _axis_spec(self.cols),
            "low": low.tolist(),
            "step": step.tolist(),
            "panels": [_b64(panel) for panel in data],
            "valueName": self.value_name,
            "diverging": self.diverging,
            "marks": [[round(a, 3), round(b, 3), w] for a, b, w in self.marks],
            "cellText": self.cell_text,
            "outlined": [list(cell) for cell in self.outlined],
            "mel": mel,
            "binned": self.binned,
        }

    def draw(self, ax, **selection: int | None) -> None:
        """Draw one panel (see ``grid``) on a matplotlib axes, with its labels and colour bar."""
        grid = self.grid(**selection)
        rows, cols = grid.shape
        limit = float(np.abs(grid).max()) or 1.0
        scale = {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit} if self.diverging else {"cmap": "magma"}
        x_end = cols * self.cols.seconds_per_step if self.cols.seconds_per_step else cols
        y_end = rows * self.rows.seconds_per_step if self.rows.seconds_per_step else rows
        extent = (0, x_end, y_end, 0) if self.cols.seconds_per_step or self.rows.seconds_per_step else None
        image = ax.imshow(grid, aspect="auto", interpolation="nearest", extent=extent, **scale)
        offset = 0.0 if extent is None else 0.5  # cell centres
        if self.rows.labels is not None and rows <= MAX_PNG_TICKS:
            ax.set_yticks([r + offset for r in range(rows)], self.rows.labels, fontsize=7)
        if self.cols.labels is not None and cols <= MAX_PNG_TICKS:
            ax.set_xticks(
                [c + offset for c in range(cols)], [t[:12] for t in self.cols.labels], fontsize=7, rotation=90
            )
        if self.cell_text is not None and rows * cols <= MAX_PNG_CELL_TEXTS:
            for r in range(rows):
                for c in range(cols):
                    ax.text(c, r, self.cell_text[r][c][:8], ha="center", va="center", fontsize=6, color="#888")
        for r, c in self.outlined:
            ax.add_patch(_frame(r, c))
        for start, _, _ in self.marks:  # the words themselves are written on the log-mel strip
            ax.axvline(start, color="white", lw=0.4, alpha=0.25)
        ax.set_xlabel(self.cols.name)
        ax.set_ylabel(self.rows.name)
        picked = ", ".join(
            f"{s.name} {'mean' if selection.get(s.name) is None else s.labels[selection[s.name]]}"  # type: ignore[index]
            for s in self.selectors
        )
        binned = f" (time: means of {self.binned} steps)" if self.binned > 1 else ""  # as the page's title
        ax.set_title((f"{self.title} ({picked})" if picked else self.title) + binned, fontsize=9)
        ax.figure.colorbar(image, ax=ax, label=self.value_name, fraction=0.04)

    def png(self, path: str | Path, **selection: int | None) -> Path:
        """A picture of one panel (selectors left out are averaged), with the log-mel strip under time columns."""
        return figures_png(path, [(self, selection)])

    def page(self) -> str:
        return document(self.title, [self])


def figures_png(path: str | Path, figures: list[tuple[Heatmap, dict]]) -> Path:
    """Several heatmaps stacked in one picture (each followed by its log-mel strip, if it has one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = []
    for heatmap, _ in figures:
        heights.append(min(0.16 * heatmap.values.shape[-2] + 1.6, 7.0))
        if heatmap.mel is not None:
            heights.append(1.0)
    # Fixed margins in inches instead of tight_layout, which draws every label twice to measure it.
    total = sum(heights) + GAP_INCHES * (len(heights) - 1) + TOP_INCHES + BOTTOM_INCHES
    fig, axes = plt.subplots(len(heights), 1, figsize=(10, total), height_ratios=heights, squeeze=False)
    longest = max((len(label) for heatmap, _ in figures for label in heatmap.rows.labels or []), default=6)
    fig.subplots_adjust(
        left=min(0.4, (0.5 + 0.06 * longest) / 10),  # room for the row labels (7 points: ~0.06 inch a character)
        right=0.9,
        top=1 - TOP_INCHES / total,
        bottom=BOTTOM_INCHES / total,
        hspace=GAP_INCHES / (sum(heights) / len(heights)),
    )
    axes = iter(axes[:, 0])
    for heatmap, selection in figures:
        heatmap.draw(next(axes), **selection)
        if heatmap.mel is not None:
            ax = next(axes)
            seconds = heatmap.mel.shape[1] / MEL_PER_SECOND
            ax.imshow(
                heatmap.mel, origin="lower", aspect="auto", cmap="gray_r", extent=(0, seconds, 0, len(heatmap.mel))
            )
            free = 0.0  # a word is written where it does not overlap the previous one
            for start, _, word in heatmap.marks:
                ax.axvline(start, color="#0a0", lw=0.5, alpha=0.6)
                if start >= free:
                    ax.text(start, len(heatmap.mel), word, fontsize=6, color="#060", va="bottom")
                    free = start + seconds * CHAR_WIDTH * (len(word) + 1)
            ax.set_ylabel("mel")
            ax.set_xlabel("audio (s)")
            ax.figure.colorbar(ax.images[0], ax=ax, fraction=0.04, label="log-mel")  # keeps the time axes aligned
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


def time_bins(n_panels: int, n_rows: int, n_cols: int, time_axes: int, budget: int = MAX_PAGE_CELLS) -> int:
    """How many time steps to average into one, so that every panel together fits ``budget`` values
    (``time_axes``: 1 when only the columns are time, 2 when rows and columns both are)."""

    def cells(factor: int) -> int:
        rows = math.ceil(n_rows / factor) if time_axes == 2 else n_rows
        return n_panels * rows * math.ceil(n_cols / factor)

    factor = max(1, math.ceil((n_panels * n_rows * n_cols / budget) ** (1 / time_axes)))
    while factor > 1 and cells(factor - 1) <= budget:  # the estimate ignores rounding up: settle it
        factor -= 1
    while cells(factor) > budget:
        factor += 1
    return factor


def bin_time(x: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Mean over ``factor`` consecutive steps along ``axis`` (the last bin averages what is left)."""
    if factor == 1:
        return x
    n = x.shape[axis]
    starts = np.arange(0, n, factor)
    sums = np.add.reduceat(x, starts, axis=axis)
    counts = np.diff(np.append(starts, n)).astype(x.dtype)
    shape = [1] * x.ndim
    shape[axis] = len(counts)
    return sums / counts.reshape(shape)


def mel_strip(mel: torch.Tensor, seconds: float) -> np.ndarray:
    """One clip's log-mel ``[n_mels, frames]`` cut to its audio, as float32 for the page and the PNG."""
    return mel[:, : max(1, math.ceil(seconds * MEL_PER_SECOND))].float().cpu().numpy()


def document(title: str, figures: list[Heatmap], body: str = "", script: str = "") -> str:
    """A self-contained page: ``body`` (HTML), then one figure per heatmap (``fig0``, ``fig1``...),
    the shared drawing script and ``script`` (which may use ``HW.figs``)."""
    data = json.dumps([f.spec() for f in figures])
    # Script content is not entity-decoded: only "</" must be broken up so the JSON cannot end the tag.
    data = data.replace("</", "<\\/")
    divs = "".join(f'<div class="fig" id="fig{i}"></div>' for i in range(len(figures)))
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{body}{divs}"
        f'<script id="figures" type="application/json">{data}</script>'
        f"<script>{_SCRIPT}\n{script}\nHW.ready();</script></body></html>"
    )


def write_page(path: str | Path, page: str) -> Path:
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)


def iframe(page: str) -> str:
    return f'<iframe srcdoc="{html.escape(page)}" style="width:100%;height:640px;border:0"></iframe>'


def numbered(n: int) -> list[str]:
    """Labels of a layer or head axis."""
    return [str(i) for i in range(n)]


def _axis_spec(axis: Axis) -> dict:
    return {"name": axis.name, "labels": axis.labels, "step": axis.seconds_per_step}


def _frame(row: int, col: int):
    from matplotlib.patches import Rectangle

    return Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="#0f0", lw=1.2)


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values).tobytes()).decode()


_STYLE = """body{font:13px sans-serif;margin:8px;max-width:1000px}canvas{border:1px solid #ddd}
.fig{margin:10px 0}.fig h3{margin:4px 0;font-size:14px}.tip{font:12px monospace;min-height:16px;color:#333}
select{margin-right:8px}.tok{cursor:pointer;padding:1px 0;border-radius:3px}.tok.on{background:#fd6}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:2px 6px;font-size:12px;text-align:left}"""

# The drawing script every page shares. HW.figs[i] is figure i: grid(selection) averages the chosen
# panels (-1 = mean over that selector), each panel decoded from its bytes only when first needed.
_SCRIPT = r"""
const HW = {start: performance.now(), figs: [], specs: JSON.parse(document.getElementById('figures').textContent)};
HW.bytes = s => {  // base64 -> bytes (a plain loop: Uint8Array.from with a map is far slower)
  const text = atob(s), out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
};
HW.colour = (t, diverging) => {  // t in [0, 1] (or [-1, 1] when diverging) -> [r, g, b]
  if (diverging) { const a = Math.min(1, Math.abs(t)), hue = t < 0 ? [33, 102, 172] : [178, 24, 43];
    return hue.map(c => 255 + (c - 255) * a); }
  const stops = [[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]];
  const x = Math.max(0, Math.min(1, t)) * 4, i = Math.min(3, Math.floor(x)), f = x - i;
  return stops[i].map((c, k) => c + (stops[i + 1][k] - c) * f);
};
HW.marks = (ctx, marks, left, perSecond, top, bottom, textY) => {  // word starts: a line, and the word where it fits
  ctx.strokeStyle = '#0a0'; ctx.fillStyle = '#060'; ctx.lineWidth = 1;
  let free = 0;
  for (const [start, , word] of marks) {
    const x = left + start * perSecond;
    ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, bottom); ctx.stroke();
    if (x >= free) { ctx.fillText(word, x + 2, textY); free = x + 4 + ctx.measureText(word).width; }
  }
};
HW.luts = {};
HW.lut = diverging => {  // 256 colours, index = round(t * 255) with t in [0, 1]
  if (!HW.luts[diverging]) {
    const lut = new Uint8Array(768);
    for (let k = 0; k < 256; k++) lut.set(HW.colour(diverging ? 2 * k / 255 - 1 : k / 255, diverging), 3 * k);
    HW.luts[diverging] = lut;
  }
  return HW.luts[diverging];
};
class Figure {
  constructor(root, F, index) {
    Object.assign(this, {root, F, index, decoded: {}, highlight: -1, onDraw: []});
    [this.R, this.C] = F.shape.slice(-2);
    this.sel = F.initial.slice();
    root.innerHTML = '<h3></h3><div class="bar"></div><canvas></canvas><div class="tip"></div>';
    root.querySelector('h3').textContent = F.title + (F.binned > 1 ? ` (time: means of ${F.binned} steps)` : '');
    const bar = root.querySelector('.bar');
    F.selectors.forEach((s, i) => {
      const sel = document.createElement('select');
      sel.add(new Option('mean', -1));
      s.labels.forEach((l, j) => sel.add(new Option(l, j)));
      sel.value = this.sel[i]; sel.dataset.selector = s.name;
      sel.onchange = () => { this.sel[i] = +sel.value; this.draw(); };
      bar.append(s.name + ' ', sel);
    });
    this.canvas = root.querySelector('canvas'); this.tip = root.querySelector('.tip');
    this.left = 110; this.right = 80; this.width = 900;
    this.h = Math.max(120, Math.min(480, this.R * 14)); this.melH = F.mel ? 70 : 0;
    this.canvas.width = this.width; this.canvas.height = this.h + this.melH + 46;
    this.canvas.onmousemove = e => this.hover(e);
  }
  panel(flat) {
    if (!this.decoded[flat]) {
      const b = HW.bytes(this.F.panels[flat]), out = new Float32Array(b.length);
      const low = this.F.low[flat], step = this.F.step[flat];
      for (let i = 0; i < b.length; i++) out[i] = low + b[i] * step;
      this.decoded[flat] = out;
    }
    return this.decoded[flat];
  }
  grid(sel) {  // the mean over every panel the selection covers
    sel = sel || this.sel;
    let flats = [0];
    this.F.selectors.forEach((s, i) => {
      const n = s.labels.length, picks = sel[i] < 0 ? [...Array(n).keys()] : [sel[i]];
      flats = flats.flatMap(f => picks.map(p => f * n + p));
    });
    if (flats.length === 1) return this.panel(flats[0]);
    const out = new Float32Array(this.R * this.C);
    for (const f of flats) { const g = this.panel(f); for (let i = 0; i < g.length; i++) out[i] += g[i]; }
    for (let i = 0; i < out.length; i++) out[i] /= flats.length;
    return out;
  }
  label(axis, i) {
    return axis.labels ? axis.labels[i] : (i * axis.step).toFixed(2) + ' s';
  }
  draw() {
    const F = this.F, g = this.current = this.grid(), ctx = this.canvas.getContext('2d'), R = this.R, C = this.C;
    const W = this.width - this.left - this.right, H = this.h;
    let lo = Infinity, hi = -Infinity;
    for (const v of g) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (F.diverging) { hi = Math.max(Math.abs(lo), Math.abs(hi)) || 1; lo = -hi; } else if (lo >= 0) lo = 0;
    this.range = [lo, hi];
    const img = new ImageData(C, R), lut = HW.lut(F.diverging), px = img.data;
    for (let i = 0; i < g.length; i++) {
      const t = F.diverging ? (g[i] / hi + 1) / 2 : (hi > lo ? (g[i] - lo) / (hi - lo) : 0);
      const k = 3 * Math.max(0, Math.min(255, Math.round(t * 255)));
      px[4 * i] = lut[k]; px[4 * i + 1] = lut[k + 1]; px[4 * i + 2] = lut[k + 2]; px[4 * i + 3] = 255;
    }
    const tmp = document.createElement('canvas'); tmp.width = C; tmp.height = R;
    tmp.getContext('2d').putImageData(img, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(tmp, this.left, 0, W, H);
    const cw = W / C, ch = H / R;
    ctx.font = '10px sans-serif'; ctx.fillStyle = '#000'; ctx.textBaseline = 'middle';
    const every = n => Math.max(1, Math.ceil(11 / n));
    const rowStep = F.rows.labels ? every(ch) : every(ch) * 5;
    for (let r = 0; r < R; r += rowStep) ctx.fillText(this.label(F.rows, r).slice(0, 16), 2, (r + 0.5) * ch);
    if (F.cellText && cw >= 26 && ch >= 10) {
      ctx.textAlign = 'center';
      for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) {
        ctx.fillStyle = hi > lo && (g[r * C + c] - lo) / (hi - lo) > 0.6 ? '#000' : '#fff';
        ctx.fillText(F.cellText[r][c].slice(0, Math.floor(cw / 6)), this.left + (c + 0.5) * cw, (r + 0.5) * ch);
      }
      ctx.textAlign = 'left';
    }
    ctx.strokeStyle = '#0f0'; ctx.lineWidth = 1.5;
    for (const [r, c] of F.outlined) ctx.strokeRect(this.left + c * cw, r * ch, cw, ch);
    if (this.highlight >= 0) { ctx.strokeStyle = '#0cf'; ctx.strokeRect(this.left, this.highlight * ch, W, ch); }
    const seconds = F.cols.step ? C * F.cols.step : 0;
    if (F.mel) this.drawMel(ctx, H, W, seconds);
    ctx.fillStyle = '#000'; ctx.textBaseline = 'top';
    const y = H + this.melH + 4;
    if (F.cols.labels) {
      for (let c = 0; c < C; c += every(cw)) {
        ctx.save(); ctx.translate(this.left + (c + 0.5) * cw, y); ctx.rotate(Math.PI / 4);
        ctx.fillText(F.cols.labels[c].slice(0, 10), 0, 0); ctx.restore();
      }
    } else {
      const tick = seconds > 12 ? 5 : seconds > 3 ? 1 : 0.25;
      for (let s = 0; s <= seconds; s += tick) ctx.fillText(+s.toFixed(2) + ' s', this.left + s / seconds * W, y);
    }
    ctx.fillText(F.cols.name, this.left + W / 2, y + 24); ctx.fillText('rows: ' + F.rows.name, 2, y + 24);
    for (let k = 0; k < 100; k++) {  // colour bar
      const t = F.diverging ? 1 - k / 50 : 1 - k / 100, [r, gr, b] = HW.colour(t, F.diverging);
      ctx.fillStyle = `rgb(${r},${gr},${b})`;
      ctx.fillRect(this.width - 60, 14 + k * (H - 28) / 100, 12, (H - 28) / 100 + 1);
    }
    ctx.fillStyle = '#000';
    ctx.fillText(hi.toPrecision(3), this.width - 60, 0); ctx.fillText(lo.toPrecision(3), this.width - 60, H - 12);
    ctx.fillText(F.valueName.slice(0, 13), this.width - 78, H + 4);
    this.root.dataset.shown = this.sel.join(',');
    this.onDraw.forEach(f => f(this));
  }
  drawMel(ctx, H, W, seconds) {
    const m = this.F.mel;
    if (!this.melImage) {  // drawn once, reused at every redraw
      const b = HW.bytes(m.b64), img = new ImageData(m.frames, m.n_mels);
      for (let f = 0; f < m.frames; f++) for (let k = 0; k < m.n_mels; k++) {
        const v = 255 - b[k * m.frames + f], i = 4 * ((m.n_mels - 1 - k) * m.frames + f);
        img.data[i] = img.data[i + 1] = img.data[i + 2] = v; img.data[i + 3] = 255;
      }
      this.melImage = document.createElement('canvas'); this.melImage.width = m.frames; this.melImage.height = m.n_mels;
      this.melImage.getContext('2d').putImageData(img, 0, 0);
    }
    const tmp = this.melImage, melW = W * Math.min(1, m.frames / 100 / seconds);
    ctx.drawImage(tmp, this.left, H + 2, melW, this.melH - 4);
    ctx.fillStyle = '#000'; ctx.fillText('log-mel', 2, H + this.melH / 2);
    HW.marks(ctx, this.F.marks, this.left, W / seconds, H + 2, H + this.melH - 2, H + 10);
  }
  hover(e) {
    const box = this.canvas.getBoundingClientRect(), W = this.width - this.left - this.right;
    const c = Math.floor((e.clientX - box.left - this.left) / W * this.C);
    const r = Math.floor((e.clientY - box.top) / this.h * this.R);
    if (c < 0 || c >= this.C || r < 0 || r >= this.R) return;
    const text = this.F.cellText ? ' ' + this.F.cellText[r][c] : '';
    const F = this.F;
    this.tip.textContent = `${F.rows.name} ${this.label(F.rows, r)}, ${F.cols.name} ${this.label(F.cols, c)}: ` +
      `${this.F.valueName} ${this.current[r * this.C + c].toPrecision(4)}${text}`;
  }
}
HW.ready = () => {
  HW.specs.forEach((F, i) => {
    const f = new Figure(document.getElementById('fig' + i), F, i);
    HW.figs.push(f); f.draw();
  });
  if (HW.afterReady) HW.afterReady();  // a page's own wiring (the clip report's tokens)
  HW.loadMs = performance.now();  // from the start of navigation
  document.body.dataset.ready = '1';
};
"""
