"""Autoencoders on disk: this library's own format, sae-lens' format (read by sae-lens,
SAEDashboard and Neuronpedia's tools) both ways, and AudioSAE's Whisper checkpoints.

- native: ``config.json`` (``SparseAutoencoder.config()``) + ``sae.safetensors``.
- sae-lens: ``cfg.json`` + ``sae_weights.safetensors`` with ``W_enc [d_in, d_sae]``,
  ``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec`` (and ``threshold`` for JumpReLU); the hook is
  written in this library's names (``meta.hook_name``).
- AudioSAE: one folder per encoder layer, ``layer_N/ae.pt`` (a dictionary-learning BatchTopK
  state dict: ``encoder.weight [d_sae, d_in]``, ``encoder.bias``, ``decoder.weight [d_in, d_sae]``,
  ``b_dec``, ``k``, ``threshold``) + ``layer_N/config.json``. N counts from 1 and taps the output
  of the N-th encoder block of openai-whisper, before the final LayerNorm: this library's
  ``encoder_blocks.{N-1}.hook_resid_post``.

Checkpoints are read with ``torch.load(weights_only=True)``: a file holding a pickled module or
other Python object is refused, as unpickling it would run code the file names.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hooked_whisper.hook_layout import WHISPER_NAMING, get_act_name, hook_leaf
from hooked_whisper.saes.sae import SparseAutoencoder

if TYPE_CHECKING:
    from hooked_whisper.hooked_audio_model import HookedAudioModel

NATIVE_CONFIG, NATIVE_WEIGHTS = "config.json", "sae.safetensors"
SAE_LENS_CONFIG, SAE_LENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
FORMAT = "hooked-whisper-sae"


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in the autoencoder's config")
    return dtype


def _tensors(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sae.state_dict().items()}


def save_sae(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write ``sae`` to ``folder`` in the native format; ``load_sae`` reads it back."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_tensors(sae), str(folder / NATIVE_WEIGHTS))
    (folder / NATIVE_CONFIG).write_text(json.dumps({"format": FORMAT, "version": 1, **sae.config()}, indent=1))
    return folder


def load_sae(folder: str | Path, device: str | torch.device | None = None) -> SparseAutoencoder:
    """An autoencoder saved by ``save_sae`` (or by ``train_sae(..., out_dir=...)`` into ``out_dir/sae``)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path = folder / NATIVE_CONFIG
    if (folder / SAE_LENS_CONFIG).is_file() and not config_path.is_file():
        raise ValueError(f"{folder} is in sae-lens' format (cfg.json): read it with import_sae_lens")
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: {folder} is not an autoencoder saved by save_sae")
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{config_path} is not a {FORMAT} config (format: {config.get('format')!r})")
    sae = SparseAutoencoder(
        config["d_in"],
        config["d_sae"],
        config["architecture"],
        config["k"],
        config["hook_name"],
        config["apply_b_dec_to_input"],
        config.get("metadata"),
        _dtype(config["dtype"]),
    )
    sae.load_state_dict(load_file(str(folder / NATIVE_WEIGHTS)), strict=True)
    return sae.to(device) if device is not None else sae


# ---------------------------------------------------------------------------------------- sae-lens
def export_sae_lens(sae: SparseAutoencoder, folder: str | Path, model_name: str | None = None) -> Path:
    """Write ``sae`` in sae-lens' format (version 6 keys). A BatchTopK autoencoder is written as
    JumpReLU with its threshold on every latent, which is how it runs at inference."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _tensors(sae)
    threshold = tensors.pop("threshold")
    architecture = {"topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu", "relu": "standard"}[
        sae.architecture
    ]
    if architecture == "jumprelu":
        tensors["threshold"] = threshold
    config: dict[str, Any] = {
        "architecture": architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",
        # sae-lens flattens heads only when told; splicing here flattens any per-head hook itself
        "reshape_activations": "hook_z" if sae.hook_name and hook_leaf(sae.hook_name) == "hook_z" else "none",
        "meta": {
            "model_name": model_name or sae.metadata.get("model_name"),
            "hook_name": sae.hook_name,
            "hook_head_index": None,
            "prepend_bos": False,
            "context_size": None,
            "dataset_path": sae.metadata.get("dataset_path"),
            "sae_lens_version": "6.0.0",  # the layout of these keys
            "sae_lens_training_version": None,
        },
    }
    if architecture == "topk":
        config |= {"k": sae.k, "rescale_acts_by_decoder_norm": False}
    save_file(tensors, str(folder / SAE_LENS_WEIGHTS))
    (folder / SAE_LENS_CONFIG).write_text(json.dumps(config, indent=1))
    return folder


def import_sae_lens(folder: str | Path, hook_name: str | None = None) -> SparseAutoencoder:
    """An autoencoder from a folder in sae-lens' format (``cfg.json`` + ``sae_weights.safetensors``;
    the keys of sae-lens 6 or earlier). ``hook_name`` overrides the hook the config names: needed
    when it is a TransformerLens name (``blocks.3.hook_resid_post``) rather than one of this library's."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path = folder / SAE_LENS_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: {folder} is not an SAE saved in sae-lens' format")
    cfg = json.loads(config_path.read_text())
    meta = cfg.get("meta") or cfg.get("metadata") or {}
    name = hook_name or meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    weights = load_file(str(folder / SAE_LENS_WEIGHTS))
    architecture = cfg.get("architecture", "standard")
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    unsupported = []
    if cfg.get("normalize_activations", "none") not in ("none", None):
        unsupported.append(f"normalize_activations={cfg['normalize_activations']!r}")
    if cfg.get("rescale_acts_by_decoder_norm"):
        unsupported.append("rescale_acts_by_decoder_norm")
    if "finetuning_scaling_factor" in weights or "scaling_factor" in weights:
        unsupported.append("a finetuning scaling factor")
    if unsupported:
        raise ValueError(
            f"{folder}: {', '.join(unsupported)} is not supported here; fold it into the weights with sae-lens "
            "(e.g. fold_activation_norm_scaling_factor) and save again"
        )
    if architecture == "topk" or (architecture == "standard" and activation == "topk"):
        ours = "topk"
    elif architecture in ("jumprelu", "batchtopk") and "threshold" in weights:
        ours = "jumprelu"
    elif architecture == "standard":
        ours = "relu"
    else:
        raise ValueError(
            f"{folder}: sae-lens architecture {architecture!r} is not supported here (topk, jumprelu, standard are)"
        )
    d_in, d_sae = weights["W_enc"].shape
    sae = SparseAutoencoder(
        d_in,
        d_sae,
        ours,
        int(k) if ours == "topk" else None,
        name,
        bool(cfg.get("apply_b_dec_to_input", True)),
        {"source": f"sae-lens folder {folder.name}", "model_name": meta.get("model_name", cfg.get("model_name"))},
        weights["W_enc"].dtype,
    )
    with torch.no_grad():
        for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, key).copy_(weights[key])
        if ours == "jumprelu":
            sae.threshold.copy_(weights["threshold"].expand(d_sae))
    return sae


# ---------------------------------------------------------------------------------------- AudioSAE
def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint of tensors, read without unpickling arbitrary objects; a pickled module or
    other object is refused with how to convert it."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds a pickled Python object (a whole module or class instance), not a state dict of "
            "tensors; loading it would run code named in the file, so it is refused. Convert it once, where its "
            "class is importable and you trust the file: torch.save(torch.load(path, weights_only=False)"
            ".state_dict(), 'ae.pt'), then load that"
        ) from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state


def load_audiosae(
    folder: str | Path, layer: int | None = None, model: HookedAudioModel | None = None
) -> SparseAutoencoder:
    """An AudioSAE Whisper checkpoint: ``folder/layer_{layer}`` of a release (``layer`` counted
    from 1, as AudioSAE counts), or a ``layer_N`` folder itself. The result reads
    ``encoder_blocks.{layer - 1}.hook_resid_post``; with ``model`` the layer and width are
    checked against it. The BatchTopK threshold learnt in training is used at inference, as
    AudioSAE runs it; a checkpoint without one falls back to the top ``k`` per frame (with a warning)."""
    folder = Path(folder)
    if layer is not None:
        folder = folder / f"layer_{layer}"
    elif folder.name.startswith("layer_") and folder.name[6:].isdigit():
        layer = int(folder.name[6:])
    else:
        raise ValueError(f"{folder} is not a layer_N folder: pass layer=N (counted from 1) for a release folder")
    if model is not None and not 1 <= layer <= (n_layers := model.layer_count("encoder")):
        raise ValueError(f"AudioSAE layer {layer} (counted from 1) is outside this model's encoder (1..{n_layers})")
    path = folder / "ae.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: an AudioSAE layer folder holds ae.pt and config.json")
    state = load_state_dict_file(path)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    trainer = config.get("trainer", config)
    missing = [k for k in ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec") if k not in state]
    if missing:
        raise ValueError(f"{path} lacks {missing}: not a dictionary-learning (AudioSAE) autoencoder")
    d_sae, d_in = state["encoder.weight"].shape
    for key, value in (("activation_dim", d_in), ("dict_size", d_sae)):
        if key in trainer and int(trainer[key]) != value:
            raise ValueError(f"{folder}: config.json says {key}={trainer[key]}, the weights have {value}")
    k = int(state["k"]) if "k" in state else trainer.get("k")
    threshold = float(state["threshold"]) if "threshold" in state else -1.0
    if model is not None:
        hook = model.hook_name("encoder", layer - 1, "hook_resid_post")
        if model.cfg.d_model != d_in:
            raise ValueError(f"{path} reads vectors of {d_in}; this model's encoder is {model.cfg.d_model} wide")
    else:
        hook = get_act_name(WHISPER_NAMING, "encoder", layer - 1, "hook_resid_post")
    architecture = "batchtopk" if threshold >= 0 else "topk"
    if architecture == "topk":
        warnings.warn(f"{path} has no trained threshold: it runs with the top {k} latents per frame", stacklevel=2)
    metadata = {"source": f"AudioSAE {folder.parent.name}/{folder.name}", "audiosae_layer": layer}
    sae = SparseAutoencoder(d_in, d_sae, architecture, k, hook, True, metadata, state["encoder.weight"].dtype)
    with torch.no_grad():
        sae.W_enc.copy_(state["encoder.weight"].T)
        sae.b_enc.copy_(state["encoder.bias"])
        sae.W_dec.copy_(state["decoder.weight"].T)
        sae.b_dec.copy_(state["b_dec"])
        sae.threshold.fill_(max(threshold, 0.0))
    return sae
