"""Checkpoints load as their source decodes, or not at all, with the file named."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from hooked_whisper import HookedWhisper
from tests.support import DATA

CLIP = DATA / "librivox_0880.wav"


class NotATensor:
    """Pickled into a checkpoint, it makes the file more than tensors."""


def test_openai_checkpoint_alone_decodes_like_the_full_folder(tiny_en, tmp_path):
    from weights_conversion import save_openai_checkpoint

    path = save_openai_checkpoint(tiny_en, tmp_path / "tiny.en.pt")  # no tokenizer or generation config beside it
    alone = HookedWhisper.from_pretrained(path)
    assert alone.generation_config.suppress_tokens == tiny_en.generation_config.suppress_tokens
    assert alone.generation_config.begin_suppress_tokens == tiny_en.generation_config.begin_suppress_tokens
    text = alone.transcribe(CLIP).text
    assert text == tiny_en.transcribe(CLIP).text and len(text.split()) > 4


def test_loading_errors_name_the_file(tiny_en, hf_export, tmp_path):
    from weights_conversion import CheckpointError

    good = hf_export(tiny_en, "tiny.en")

    def broken(name: str, write) -> str:
        """A copy of the export with one file broken by ``write``. The weights are linked, not
        copied (a case that breaks them replaces the link), and each copy is removed once read,
        so the test needs about one checkpoint's worth of disk at a time."""
        folder = tmp_path / name
        folder.mkdir()
        for f in good.iterdir():
            if f.name == "model.safetensors":
                (folder / f.name).symlink_to(f)
            else:
                (folder / f.name).write_bytes(f.read_bytes())
        write(folder)
        try:
            with pytest.raises((CheckpointError, ValueError)) as err:
                HookedWhisper.from_pretrained(folder)
        finally:
            shutil.rmtree(folder)
        return str(err.value)

    def replace_weights(folder, data: bytes) -> None:  # never write through the link into the export
        (folder / "model.safetensors").unlink()
        (folder / "model.safetensors").write_bytes(data)

    assert "config.json as JSON" in broken("config", lambda f: (f / "config.json").write_text("{oops"))
    assert "generation_config.json as JSON" in broken("gen", lambda f: (f / "generation_config.json").write_text("[1,"))

    def without_d_model(folder):
        config = json.loads((folder / "config.json").read_text())
        del config["d_model"]
        (folder / "config.json").write_text(json.dumps(config))

    assert "config.json has no 'd_model'" in broken("no_d_model", without_d_model)

    def relu(folder):
        config = json.loads((folder / "config.json").read_text())
        config["activation_function"] = "relu"
        (folder / "config.json").write_text(json.dumps(config))

    assert "activation_function='relu'" in broken("relu", relu)

    def truncate(folder):
        data = (folder / "model.safetensors").read_bytes()
        replace_weights(folder, data[: len(data) // 2])

    message = broken("truncated", truncate)
    assert "model.safetensors" in message and "truncated" in message
    assert "tokenizer.json as a tokenizer" in broken("tok", lambda f: (f / "tokenizer.json").write_text("{}"))

    def pickled(folder):
        (folder / "model.safetensors").unlink()
        torch.save({"weights": torch.zeros(1), "something": NotATensor()}, folder / "pytorch_model.bin")

    assert "pytorch_model.bin" in broken("pickle", pickled)

    def nan(folder):
        from safetensors.torch import load_file, save_file

        sd = load_file(str(folder / "model.safetensors"))
        sd["model.decoder.layers.0.fc1.weight"][0, 0] = float("nan")
        (folder / "model.safetensors").unlink()
        save_file(sd, str(folder / "model.safetensors"))

    assert "NaN or infinite" in broken("nan", nan)
