"""Cross-attention over time: decoder tokens (rows) by audio seconds (columns), per head and layer.

The HTML page embeds every head's pattern as base64 uint8 (quantised per head to its own maximum)
and decodes a head only when it is shown, so a large view opens quickly without a server or CDN."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hooked_whisper.hooked_audio_model import HookedAudioModel

QUANT_LEVELS = 255  # uint8: one head's values are stored as round(value / head_max * 255)


@dataclass
class CrossAttentionView:
    patterns: np.ndarray  # [layer, head, token, audio_position], float32
    tokens: list[str]
    positions_per_second: float

    def quantised(self) -> tuple[np.ndarray, np.ndarray]:
        """uint8 patterns and each head's scale (value = byte * scale)."""
        scale = self.patterns.max(axis=(2, 3)) / QUANT_LEVELS
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        return np.rint(self.patterns / scale[:, :, None, None]).astype(np.uint8), scale

    def png(self, path: str | Path, layer: int | None = None, head: int | None = None) -> Path:
        """Average over every layer and head unless ``layer``/``head`` pick one."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        picked = self.patterns if layer is None else self.patterns[layer : layer + 1]
        picked = picked if head is None else picked[:, head : head + 1]
        grid = picked.mean(axis=(0, 1))
        seconds = grid.shape[1] / self.positions_per_second
        fig, ax = plt.subplots(figsize=(10, 0.25 * len(self.tokens) + 1.5))
        ax.imshow(grid, aspect="auto", cmap="magma", extent=(0, seconds, len(self.tokens) - 0.5, -0.5))
        ax.set_yticks(range(len(self.tokens)), self.tokens, fontsize=7)
        ax.set_xlabel("audio (s)")
        which = f"layer {'all' if layer is None else layer}, head {'all' if head is None else head}"
        ax.set_title(f"cross-attention, {which}")
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return Path(path)

    def _page(self) -> str:
        data, scale = self.quantised()
        n_layers, n_heads, n_tokens, n_positions = data.shape
        payload = {
            "shape": [n_layers, n_heads, n_tokens, n_positions],
            "scale": scale.round(8).tolist(),
            "heads": [[_b64(data[a, b]) for b in range(n_heads)] for a in range(n_layers)],
            "tokens": self.tokens,
            "pps": self.positions_per_second,
        }
        # Script content is not entity-decoded: only "</" must be broken up so the JSON cannot end the tag.
        return _PAGE.replace("__DATA__", json.dumps(payload).replace("</", "<\\/"))

    def html(self, path: str | Path) -> Path:
        Path(path).write_text(self._page(), encoding="utf-8")
        return Path(path)

    def _repr_html_(self) -> str:
        return f'<iframe srcdoc="{html.escape(self._page())}" style="width:100%;height:520px;border:0"></iframe>'


def cross_attention_view(model: HookedAudioModel, audio, tokens: torch.Tensor | None = None) -> CrossAttentionView:
    """Run ``model`` on one clip and gather every decoder block's cross-attention pattern."""
    model.require_cross_attention("the cross-attention view")
    layers = range(model.layer_count("decoder"))
    names = [model.hook_name("decoder", layer, "cross_attn.hook_pattern") for layer in layers]
    # Without tokens the decoder runs on the prompt plus the greedy transcript.
    _, cache = model.run_with_cache(audio, tokens, names_filter=lambda name: name in names or name == "hook_tokens")
    patterns = np.stack([cache[name][0].float().cpu().numpy() for name in names])
    str_tokens = model.to_str_tokens(cache["hook_tokens"][0])
    return CrossAttentionView(patterns.astype(np.float32), list(str_tokens), positions_per_second=50.0)


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>cross-attention</title>
<style>body{font:13px sans-serif;margin:8px}canvas{border:1px solid #ccc;image-rendering:pixelated}</style></head>
<body><div>layer <select id="layer"></select> head <select id="head"></select></div>
<canvas id="view" width="900" height="400"></canvas>
<script id="data" type="application/json">__DATA__</script>
<script>
const D = JSON.parse(document.getElementById('data').textContent);
const [L, H, T, P] = D.shape, decoded = {};
function head(l, h) {  // decoded lazily: only the heads that are shown are turned into numbers
  const key = l + ',' + h;
  if (!decoded[key]) {
    const bytes = Uint8Array.from(atob(D.heads[l][h]), c => c.charCodeAt(0));
    const out = new Float32Array(bytes.length), s = D.scale[l][h];
    for (let i = 0; i < bytes.length; i++) out[i] = bytes[i] * s;
    decoded[key] = out;
  }
  return decoded[key];
}
function grid(l, h) {  // -1 means every layer or every head, averaged
  const ls = l < 0 ? [...Array(L).keys()] : [l], hs = h < 0 ? [...Array(H).keys()] : [h];
  const out = new Float32Array(T * P);
  for (const a of ls) for (const b of hs) { const g = head(a, b); for (let i = 0; i < g.length; i++) out[i] += g[i]; }
  for (let i = 0; i < out.length; i++) out[i] /= ls.length * hs.length;
  return out;
}
function draw() {
  const l = +layer.value, h = +head_.value, g = grid(l, h), c = document.getElementById('view');
  const ctx = c.getContext('2d'), img = ctx.createImageData(P, T);
  let max = 0; for (const v of g) max = Math.max(max, v);
  for (let i = 0; i < g.length; i++) { const v = max ? g[i] / max : 0;
    img.data.set([255 * Math.sqrt(v), 255 * v * v, 255 * (1 - v) * v * 2, 255], 4 * i); }
  const tmp = document.createElement('canvas'); tmp.width = P; tmp.height = T;
  tmp.getContext('2d').putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false; ctx.clearRect(0, 0, c.width, c.height);
  ctx.drawImage(tmp, 120, 0, c.width - 120, c.height - 20);
  ctx.fillStyle = '#000'; ctx.font = '10px sans-serif';
  for (let t = 0; t < T; t++) ctx.fillText(D.tokens[t], 2, (t + 0.7) * (c.height - 20) / T);
  for (let s = 0; s <= P / D.pps; s += 5) ctx.fillText(s + 's', 120 + s * D.pps / P * (c.width - 120), c.height - 5);
  c.dataset.shown = l + ',' + h;
}
const layer = document.getElementById('layer'), head_ = document.getElementById('head');
for (const [sel, n] of [[layer, L], [head_, H]]) {
  sel.add(new Option('all', -1));
  for (let i = 0; i < n; i++) sel.add(new Option(i, i));
  sel.onchange = draw;
}
window.crossAttention = {head, grid, shape: D.shape};
draw();
</script></body></html>"""


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(values.tobytes()).decode()
