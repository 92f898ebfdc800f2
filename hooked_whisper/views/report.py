"""A clip report: one self-contained page per clip with the audio (a base64 WAV in an ``<audio>``
element), the cross-attention map over the clip's log-mel with its words marked, the decoder
logit lens, and the transcript; hovering or clicking a token shows its cross-attention over time
(the row of the position that predicted it, with the layer and head picked above) and its lens
column (each layer's top-1 guess for that token, with its probability)."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from hooked_whisper.audio import wav_base64
from hooked_whisper.hooked_audio_model import HookedAudioModel
from hooked_whisper.lens import logit_lens
from hooked_whisper.views.cross_attention import audio_reading_hooks, cross_attention_heatmap
from hooked_whisper.views.lenses import logit_lens_view
from hooked_whisper.views.page import MAX_PAGE_CELLS, Heatmap, Page, document, figures_png
from hooked_whisper.views.runs import run_clip


@dataclass
class ClipReport(Page):
    title: str
    wave: torch.Tensor  # [samples] at 16 kHz
    cross: Heatmap  # rows: the transcript's tokens
    lens: Heatmap  # columns: every position the decoder read
    first_lens_column: int  # the lens column that predicts the first transcript token

    def png(self, path: str | Path) -> Path:
        return figures_png(path, [(self.cross, {}), (self.lens, {})])

    def page(self) -> str:
        tokens = "".join(
            f'<span class="tok" data-i="{i}">{html.escape(t)}</span>'
            for i, t in enumerate(self.cross.rows.labels or [])
        )
        body = (
            f"<h2>{html.escape(self.title)}</h2>"
            f'<audio controls src="data:audio/wav;base64,{wav_base64(self.wave)}"></audio>'
            f'<p id="transcript">{tokens}</p><p class="tip">hover or click a token: its cross-attention over '
            f'time and its lens column</p><canvas id="focus" width="900" height="130"></canvas>'
            f'<table id="lensrow"></table>'
        )
        script = _REPORT_SCRIPT.replace("__FIRST_LENS_COLUMN__", json.dumps(self.first_lens_column))
        return document(self.title, [self.cross, self.lens], body=body, script=script)


def clip_report(
    model: HookedAudioModel,
    audio,
    tokens=None,
    sample_rate: int | None = None,
    max_cells: int = MAX_PAGE_CELLS,
    name: str | None = None,
) -> ClipReport:
    """Run one clip (its greedy transcript, or ``tokens``) once and gather the report's views;
    ``name`` heads the page (default: the file name, or "clip")."""
    resid = [
        model.hook_name("decoder", l, leaf)
        for l in range(model.layer_count("decoder"))
        for leaf in ("hook_resid_pre", "hook_resid_post")
    ]
    wanted = set(audio_reading_hooks(model, range(model.layer_count("decoder"))) + resid)
    run = run_clip(model, audio, tokens, sample_rate, wanted.__contains__)
    lens = logit_lens_view(model, logit_lens(model, run.cache, k=1), run.tokens)
    name = name or (Path(audio).name if isinstance(audio, (str, Path)) else "clip")
    text = model.to_string(run.tokens[run.first_text :]).strip()
    title = f"{name}: {text[:80]}{'...' if len(text) > 80 else ''}"
    return ClipReport(title, run.wave, cross_attention_heatmap(model, run, True, max_cells), lens, run.first_text - 1)


# Hovering a token: row i of the cross-attention map (its current layer/head choice) drawn as a
# curve over time under the map, and lens column FIRST + i listed per layer.
_REPORT_SCRIPT = r"""
const REPORT = {first: __FIRST_LENS_COLUMN__, token: -1};
function drawFocus() {
  const cross = HW.figs[0], lens = HW.figs[1], j = REPORT.token, canvas = document.getElementById('focus');
  if (j < 0) return;
  const ctx = canvas.getContext('2d'), C = cross.C, row = cross.current.slice(j * C, (j + 1) * C);
  const left = cross.left, W = cross.width - cross.left - cross.right, H = canvas.height - 20;
  let hi = 0; for (const v of row) hi = Math.max(hi, v);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = '#000'; ctx.font = '10px sans-serif';
  ctx.fillText(cross.F.rows.labels[j].slice(0, 16), 2, H / 2); ctx.fillText(hi.toPrecision(3), 2, 10);
  ctx.strokeStyle = '#c33'; ctx.lineWidth = 1.5; ctx.beginPath();
  row.forEach((v, c) => { const x = left + (c + 0.5) * W / C, y = H - (hi ? v / hi : 0) * (H - 6);
    c ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
  ctx.stroke();
  const seconds = C * cross.F.cols.step;
  HW.marks(ctx, cross.F.marks, left, W / seconds, 0, H, H + 12);
  const column = REPORT.first + j, probs = lens.current, table = document.getElementById('lensrow');
  table.innerHTML = '<tr><th>layer</th><th>top-1 guess</th><th>probability</th></tr>' + lens.F.rows.labels.map((l, r) =>
    `<tr><td>${l}</td><td></td><td>${probs[r * lens.C + column].toFixed(3)}</td></tr>`).join('');
  lens.F.rows.labels.forEach((l, r) => { table.rows[r + 1].cells[1].textContent = lens.F.cellText[r][column]; });
  canvas.dataset.token = j;
  REPORT.shown = Array.from(row);
}
function focusToken(j) {
  REPORT.token = j;
  document.querySelectorAll('.tok').forEach(t => t.classList.toggle('on', +t.dataset.i === j));
  HW.figs[0].highlight = j; HW.figs[0].draw();
}
HW.afterReady = () => {
  HW.figs[0].onDraw.push(drawFocus);
  document.querySelectorAll('.tok').forEach(t => { t.onmouseenter = t.onclick = () => focusToken(+t.dataset.i); });
  focusToken(0);
};
window.report = REPORT;
"""
