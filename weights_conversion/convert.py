"""Checkpoints in, HookedWhisper state dicts out (and back).

Every route goes through Hugging Face names: an openai ``.pt`` is renamed, a CTranslate2
``model.bin`` is renamed and its fused projections split, and the Hugging Face dict is then
reshaped to per-head weights by the table in ``keys.py``. Export runs the table backwards, so
a round trip returns the same tensors bit for bit.
"""

from __future__ import annotations

import ctypes
import gzip
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from hooked_whisper.config import GenerationConfig, HookedWhisperConfig
from hooked_whisper.tokenizer import WhisperTokenizer, bundled_vocabulary
from weights_conversion.ctranslate2 import ctranslate2_to_hf, model_bin_parts, read_ctranslate2_config, read_model_bin
from weights_conversion.keys import TensorSpec, tensor_specs

Naming = Literal["hf", "openai", "hooked"]


class CheckpointError(ValueError):
    """A checkpoint that does not match the Whisper shape it claims."""


def _list(keys: list[str], limit: int = 40) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def convert_state_dict(
    state_dict: dict[str, torch.Tensor],
    cfg: HookedWhisperConfig,
    src: Naming,
    dst: Naming,
    source: str = "checkpoint",
    consume: bool = False,
) -> dict[str, torch.Tensor]:
    """Rename and reshape a full Whisper state dict between namings.

    Hugging Face keys may carry the ``model.`` prefix and the tied ``proj_out.weight``; both are
    accepted on input. Every missing and unexpected key is listed, and a shape mismatch names
    the tensor and both shapes. With ``consume=True`` the input dict is emptied as it goes, so
    each source tensor can be freed once converted (loading then needs little beyond the model).
    """
    sd = dict(state_dict)
    if consume:
        state_dict.clear()
    if src == "hf":
        sd = {k.removeprefix("model."): v for k, v in sd.items()}
        proj = sd.pop("proj_out.weight", None)
        embed = sd.get("decoder.embed_tokens.weight")
        if proj is not None and embed is not None and not torch.equal(proj, embed):
            raise CheckpointError(f"{source}: proj_out.weight differs from the token embedding; Whisper ties them")
    layers = f"{cfg.n_encoder_layers}+{cfg.n_decoder_layers} layers"
    shape = f"a Whisper of this shape ({cfg.d_model} wide, {layers}, {cfg.n_mels} mels)"
    out = convert_with_specs(sd, tensor_specs(cfg), src, dst, source, shape, consume)
    if dst == "hf":
        out = {f"model.{k}": v for k, v in out.items()}
    return out


def convert_with_specs(
    sd: dict[str, torch.Tensor],
    specs: list[TensorSpec],
    src: Naming,
    dst: Naming,
    source: str,
    model_shape: str,
    consume: bool,
) -> dict[str, torch.Tensor]:
    """Rename and reshape ``sd`` (emptied as it goes when ``consume``) by a table of tensors.
    A mismatch is one error listing every missing and unexpected key of ``source`` against
    ``model_shape`` (the model it was expected to fit, in words)."""
    expected = {getattr(s, src): s for s in specs}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        lines = [f"{source} does not match {model_shape}:"]
        if missing:
            lines.append(f"  {len(missing)} missing keys: {_list(missing)}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected keys: {_list(unexpected)}")
        raise CheckpointError("\n".join(lines))
    out = {}
    for key, spec in expected.items():
        tensor = sd.pop(key)
        want = (
            spec.hf_shape if src != "hooked" else tuple(spec.to_hooked(torch.empty(spec.hf_shape, device="meta")).shape)
        )
        if tuple(tensor.shape) != want:
            raise CheckpointError(f"{source}: tensor {key} has shape {tuple(tensor.shape)}, expected {want}")
        if src != "hooked" and dst == "hooked":
            tensor = spec.to_hooked(tensor)
        elif src == "hooked" and dst != "hooked":
            tensor = spec.to_hf(tensor)
        out[getattr(spec, dst)] = tensor
        if consume:
            del tensor
            release_freed_memory()
    return out


def release_freed_memory() -> None:
    """Hand memory freed by the C allocator back to the system (glibc only; a no-op elsewhere).

    Converting a checkpoint frees each source tensor after copying it into its new layout; the
    allocator would otherwise keep those holes, and loading would hold on to far more memory
    than the model needs."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()


@dataclass
class Checkpoint:
    config: HookedWhisperConfig
    state_dict: dict[str, torch.Tensor]  # HookedWhisper names
    tokenizer: WhisperTokenizer
    generation_config: GenerationConfig
    source: str


def _tokenizer_for(folder: Path, explicit: str | Path | None, d_vocab: int) -> WhisperTokenizer:
    """The checkpoint's ``tokenizer.json`` (or ``explicit``), else the vocabulary the package
    ships for this vocabulary size; a checkpoint with neither is refused, never left textless."""
    path = Path(explicit) if explicit is not None else folder / "tokenizer.json"
    if explicit is not None and not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {explicit}")
    if not path.is_file():
        bundled = bundled_vocabulary(d_vocab)
        if bundled is None:
            raise CheckpointError(
                f"{folder} has no tokenizer.json and no vocabulary of {d_vocab} ids ships with hooked-whisper: "
                "pass tokenizer=PATH to from_pretrained (the checkpoint's tokenizer.json from its Hub repo)"
            )
        path = bundled
    try:
        return WhisperTokenizer(path, d_vocab)
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"could not read {path} as a tokenizer: {err}") from err


def read_json(path: Path) -> dict:
    """A JSON file of a checkpoint; a broken one is an error that names it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"could not read {path} as JSON: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a JSON object")
    return data


def _generation_config(path: Path, d_vocab: int, fallback: dict | None = None) -> GenerationConfig:
    """``generation_config.json`` if present, else the suppress lists in ``fallback`` (an HF
    ``config.json`` carries them), else those every official checkpoint of this vocabulary has."""
    if path.is_file():
        return GenerationConfig.from_dict(read_json(path))
    if fallback and fallback.get("suppress_tokens") is not None:
        return GenerationConfig.from_dict(fallback)
    return GenerationConfig.standard(d_vocab)


def check_finite(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or infinity. A sum per tensor finds them without the
    full-size temporaries an elementwise test makes (~1x the model's size at peak); the exact
    test runs only on a tensor whose sum is not finite."""
    for name, tensor in state_dict.items():
        if not tensor.is_floating_point() or torch.isfinite(tensor.sum()):
            continue
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{source}: {name} holds NaN or infinite values; the checkpoint is damaged")


def load_hf_folder(folder: Path, tokenizer: str | Path | None = None) -> Checkpoint:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json, so it is not a Hugging Face checkpoint")
    hf_config = read_json(config_path)
    try:
        cfg = HookedWhisperConfig.from_hf_config(hf_config)
    except KeyError as err:
        raise CheckpointError(f"{config_path} has no {err.args[0]!r}: is it a Whisper config?") from err
    except ValueError as err:
        raise CheckpointError(f"{config_path}: {err}") from err
    sd = _read_hf_weights(folder)
    gen = _generation_config(folder / "generation_config.json", cfg.d_vocab, hf_config)
    return Checkpoint(
        cfg,
        convert_state_dict(sd, cfg, "hf", "hooked", str(folder), consume=True),
        _tokenizer_for(folder, tokenizer, cfg.d_vocab),
        gen,
        str(folder),
    )


def _read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    def read(path: Path) -> dict[str, torch.Tensor]:
        try:
            if path.suffix == ".safetensors":
                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # truncated files, pickles that are more than tensors, ...
            raise CheckpointError(f"could not read the weights in {path}: {type(err).__name__}: {err}") from err

    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return read(single)
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no weight_map")
        sd: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            sd.update(read(folder / shard))
        return sd
    if (folder / "pytorch_model.bin").is_file():
        return read(folder / "pytorch_model.bin")
    raise FileNotFoundError(f"{folder} has no model.safetensors, sharded safetensors or pytorch_model.bin")


def load_openai_checkpoint(path: Path, tokenizer: str | Path | None = None) -> Checkpoint:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise CheckpointError(f"could not read {path} as an openai-whisper checkpoint: {err}") from err
    if not isinstance(raw, dict) or "dims" not in raw or "model_state_dict" not in raw:
        raise CheckpointError(
            f"{path} is not an openai-whisper checkpoint (expected keys 'dims' and 'model_state_dict')"
        )
    try:
        cfg = HookedWhisperConfig.from_openai_dims(raw["dims"])
    except KeyError as err:
        raise CheckpointError(f"{path}: dims lack {err.args[0]!r}") from err
    gen = _generation_config(path.parent / "generation_config.json", cfg.d_vocab)
    sd = convert_state_dict(raw["model_state_dict"], cfg, "openai", "hooked", str(path), consume=True)
    return Checkpoint(cfg, sd, _tokenizer_for(path.parent, tokenizer, cfg.d_vocab), gen, str(path))


def load_ctranslate2_folder(
    folder: Path, parts: list[Path] | None = None, tokenizer: str | Path | None = None
) -> Checkpoint:
    parts = parts or model_bin_parts(folder)
    variables = read_model_bin(parts)
    hf = ctranslate2_to_hf(variables)
    conv1 = hf["model.encoder.conv1.weight"]
    d_model = conv1.shape[0]
    n_heads = int(variables["encoder/num_heads"].item()) if "encoder/num_heads" in variables else d_model // 64
    cfg = HookedWhisperConfig(
        d_model=d_model,
        n_heads=n_heads,
        n_encoder_layers=sum(1 for k in hf if k.endswith("self_attn_layer_norm.weight") and ".encoder." in k),
        n_decoder_layers=sum(1 for k in hf if k.endswith("self_attn_layer_norm.weight") and ".decoder." in k),
        n_mels=conv1.shape[1],
        d_vocab=hf["model.decoder.embed_tokens.weight"].shape[0],
        d_head=d_model // n_heads,
        d_mlp=hf["model.encoder.layers.0.fc1.weight"].shape[0],
        n_audio_ctx=hf["model.encoder.embed_positions.weight"].shape[0],
        n_text_ctx=hf["model.decoder.embed_positions.weight"].shape[0],
    )
    gen = GenerationConfig.from_dict(read_ctranslate2_config(folder))
    del variables  # hf now holds the only references, which conversion releases one by one
    sd = convert_state_dict(hf, cfg, "hf", "hooked", str(folder), consume=True)
    return Checkpoint(cfg, sd, _tokenizer_for(folder, tokenizer, cfg.d_vocab), gen, str(folder))


def save_hf_folder(ckpt_or_model, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write a Hugging Face folder (``model.safetensors``, ``config.json``,
    ``generation_config.json``, ``tokenizer.json``) from a ``Checkpoint`` or a ``HookedWhisper``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = ckpt_or_model.config if isinstance(ckpt_or_model, Checkpoint) else ckpt_or_model.cfg
    hooked_sd = ckpt_or_model.state_dict if isinstance(ckpt_or_model, Checkpoint) else ckpt_or_model.state_dict()
    tokenizer: WhisperTokenizer = ckpt_or_model.tokenizer
    gen: GenerationConfig = ckpt_or_model.generation_config
    hf = convert_state_dict(hooked_sd, cfg, "hooked", "hf")
    save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in hf.items()}, str(out / "model.safetensors"))
    special = tokenizer.special
    config = {
        **cfg.to_hf_config(),
        "torch_dtype": str(dtype).removeprefix("torch."),
        "decoder_start_token_id": special.sot,
        "bos_token_id": special.eot,
        "eos_token_id": special.eot,
        "pad_token_id": special.eot,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(gen.to_hf_dict(special, cfg.is_multilingual), indent=2))
    if tokenizer.path is not None and tokenizer.path.suffix == ".gz":  # a vocabulary bundled with the package
        (out / "tokenizer.json").write_bytes(gzip.decompress(tokenizer.path.read_bytes()))
    elif tokenizer.path is not None:
        shutil.copyfile(tokenizer.path, out / "tokenizer.json")
    # What WhisperProcessor (and so transformers' ASR pipeline) reads besides the model.
    (out / "preprocessor_config.json").write_text(json.dumps(_feature_extractor_config(cfg), indent=2))
    eot = "<|endoftext|>"
    tokenizer_config = {"tokenizer_class": "WhisperTokenizer", "processor_class": "WhisperProcessor"}
    tokenizer_config |= {"bos_token": eot, "eos_token": eot, "unk_token": eot, "pad_token": eot}
    tokenizer_config |= {"model_max_length": cfg.n_text_ctx, "errors": "replace"}
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    for f in out.iterdir():
        f.chmod(0o644)  # safetensors writes 0600; a shared model folder is world-readable
    return out


def _feature_extractor_config(cfg: HookedWhisperConfig) -> dict:
    return {
        "feature_extractor_type": "WhisperFeatureExtractor",
        "processor_class": "WhisperProcessor",
        "feature_size": cfg.n_mels,
        "sampling_rate": 16000,
        "hop_length": 160,
        "n_fft": 400,
        "chunk_length": 30,
        "n_samples": 480000,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": False,
    }


def save_openai_checkpoint(model, path: str | Path) -> Path:
    """Write an openai-whisper ``.pt`` (``{"dims", "model_state_dict"}``) from a HookedWhisper."""
    sd = convert_state_dict(model.state_dict(), model.cfg, "hooked", "openai")
    torch.save(
        {"dims": model.cfg.to_openai_dims(), "model_state_dict": {k: v.detach().cpu() for k, v in sd.items()}}, path
    )
    return Path(path)
