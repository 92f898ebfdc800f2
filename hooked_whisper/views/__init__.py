"""Views a speech researcher looks at: pictures (PNG) and self-contained interactive pages (HTML).

Every view is a ``Heatmap`` (or a page of several) with ``png(path)``, ``html(path)`` and
``_repr_html_`` for Jupyter; ``page.py`` holds the one template they all share."""

from hooked_whisper.views.cross_attention import cross_attention_view
from hooked_whisper.views.decoder_attention import circuitsvis_attention, circuitsvis_html
from hooked_whisper.views.encoder_attention import EncoderAttentionView, encoder_attention_view
from hooked_whisper.views.lenses import EncoderLensView, encoder_lens_view, logit_lens_view
from hooked_whisper.views.page import Axis, Heatmap
from hooked_whisper.views.patching import path_patching_view, sweep_view
from hooked_whisper.views.report import ClipReport, clip_report

__all__ = [
    "Axis",
    "ClipReport",
    "EncoderAttentionView",
    "EncoderLensView",
    "Heatmap",
    "circuitsvis_attention",
    "circuitsvis_html",
    "clip_report",
    "cross_attention_view",
    "encoder_attention_view",
    "encoder_lens_view",
    "logit_lens_view",
    "path_patching_view",
    "sweep_view",
]
