"""Every official variant's shape builds like Hugging Face's."""

from __future__ import annotations

import pytest
import torch

from hooked_whisper import HookedWhisper, HookedWhisperConfig
from hooked_whisper.tokenizer import SpecialTokens

# name: (d_model, heads, encoder layers, decoder layers, mels, vocab)
VARIANTS = {
    "tiny.en": (384, 6, 4, 4, 80, 51864),
    "tiny": (384, 6, 4, 4, 80, 51865),
    "base": (512, 8, 6, 6, 80, 51865),
    "small.en": (768, 12, 12, 12, 80, 51864),
    "medium": (1024, 16, 24, 24, 80, 51865),
    "large-v2": (1280, 20, 32, 32, 80, 51865),
    "large-v3": (1280, 20, 32, 32, 128, 51866),
    "large-v3-turbo": (1280, 20, 32, 4, 128, 51866),
    "distil-small.en": (768, 12, 12, 4, 80, 51864),
    "distil-medium.en": (1024, 16, 24, 2, 80, 51864),
    "distil-large-v2": (1280, 20, 32, 2, 80, 51865),
    "distil-large-v3": (1280, 20, 32, 2, 128, 51866),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_builds_like_hf(name):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    d, h, enc, dec, mels, vocab = VARIANTS[name]
    hf_cfg = WhisperConfig(
        d_model=d,
        encoder_attention_heads=h,
        decoder_attention_heads=h,
        encoder_layers=enc,
        decoder_layers=dec,
        encoder_ffn_dim=4 * d,
        decoder_ffn_dim=4 * d,
        num_mel_bins=mels,
        vocab_size=vocab,
    )
    cfg = HookedWhisperConfig.from_hf_config(hf_cfg.to_dict())
    assert HookedWhisperConfig.from_openai_dims(cfg.to_openai_dims()) == cfg
    assert HookedWhisperConfig.from_hf_config(cfg.to_hf_config()) == cfg
    with torch.device("meta"):
        ours = HookedWhisper(cfg)
        ref = WhisperForConditionalGeneration(hf_cfg)
    n_ref = sum(p.numel() for n, p in ref.named_parameters() if n != "proj_out.weight")  # tied
    assert sum(p.numel() for p in ours.parameters()) == n_ref
    assert cfg.is_multilingual == (vocab > 51864)
    special = SpecialTokens.for_vocab_size(vocab)
    assert special.timestamp_begin + 1501 == vocab  # 1501 timestamps close every vocabulary
