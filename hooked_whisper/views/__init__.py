"""Views a speech researcher looks at: pictures (PNG) and self-contained interactive pages (HTML)."""

from hooked_whisper.views.cross_attention import CrossAttentionView, cross_attention_view

__all__ = ["CrossAttentionView", "cross_attention_view"]
