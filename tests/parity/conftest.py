"""The reference implementations, loaded once per session: Hugging Face ``transformers`` and
openai-whisper, each reading what the bundled checkpoints export."""

from __future__ import annotations

import warnings

import pytest
import torch

from hooked_whisper import HookedWhisper

warnings.filterwarnings("ignore", message=".*forced_decoder_ids.*")


def pytest_configure(config):
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the reference's deprecation chatter is not ours to fix


@pytest.fixture(scope="session")
def hf_reference(hf_export):
    """The Hugging Face model loaded from a HookedWhisper's export: eager attention (whose
    attention weights parity tests read) unless ``attn="sdpa"`` (faster, for generate)."""
    models: dict[tuple[str, str], torch.nn.Module] = {}

    def load(model: HookedWhisper, name: str, attn: str = "eager"):
        from transformers import WhisperForConditionalGeneration

        if (name, attn) not in models:
            models[name, attn] = WhisperForConditionalGeneration.from_pretrained(
                hf_export(model, name), attn_implementation=attn
            ).eval()
        return models[name, attn]

    return load


@pytest.fixture(scope="session")
def openai_reference(tmp_path_factory):
    """openai-whisper's model loaded from a HookedWhisper's ``.pt`` export, told the same
    alignment heads (a bare ``.pt`` does not carry them)."""
    models: dict[str, torch.nn.Module] = {}

    def load(model: HookedWhisper, name: str):
        whisper = pytest.importorskip("whisper")
        from weights_conversion import save_openai_checkpoint

        if name not in models:
            path = save_openai_checkpoint(model, tmp_path_factory.mktemp("openai") / f"{name}.pt")
            ref = whisper.load_model(str(path), device="cpu")
            heads = torch.zeros(model.cfg.n_decoder_layers, model.cfg.n_heads, dtype=torch.bool)
            for layer, head in model.generation_config.alignment_heads:
                heads[layer, head] = True
            ref.register_buffer("alignment_heads", heads.to_sparse(), persistent=False)
            models[name] = ref
        return models[name]

    return load
