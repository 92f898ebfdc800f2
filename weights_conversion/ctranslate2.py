"""Read CTranslate2 (faster-whisper) Whisper folders: ``model.bin`` plus ``config.json``.

``model.bin`` layout (little-endian), binary version 6:
``u32 version; str spec; u32 revision; u32 n_vars``, then per variable
``str name; u8 rank; u32 dims[rank]; u8 dtype; u32 n_bytes; bytes``, then
``u32 n_aliases; (str alias; str target)*``, where ``str`` is a u16 length (NUL included),
the UTF-8 bytes, and the NUL.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import torch

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}  # 5: bfloat16 bits
_CHUNK_BYTES = 4 << 20  # read this much at a time, so loading needs little beyond the weights


class _Reader:
    """Reads the parts of a ``model.bin`` in order as one stream."""

    def __init__(self, parts: list[Path]):
        self.files = [open(p, "rb") for p in parts]  # noqa: SIM115 (closed in close())
        self.current, self.pos = 0, 0
        self.source = " + ".join(str(p) for p in parts)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def take(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n and self.current < len(self.files):
            chunk = self.files[self.current].read(n - len(out))
            if not chunk:
                self.current += 1
                continue
            out += chunk
        if len(out) < n:
            raise ValueError(
                f"{self.source} ends after {self.pos + len(out)} bytes while {n - len(out)} more were "
                f"expected: the file is truncated or not a CTranslate2 model"
            )
        self.pos += n
        return bytes(out)

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        return self.take(self.u16()).rstrip(b"\0").decode("utf-8")

    def tensor(self, name: str, shape: list[int], dtype_id: int, n_bytes: int) -> torch.Tensor:
        """The next ``n_bytes`` as a tensor: floating point is converted to float32 a chunk at
        a time straight into the result, integers keep their type."""
        if dtype_id not in _DTYPES:
            raise ValueError(f"{self.source}: variable {name} has unknown dtype id {dtype_id}")
        item = np.dtype(_DTYPES[dtype_id])
        count = int(np.prod(shape, dtype=np.int64))
        if count * item.itemsize != n_bytes:
            raise ValueError(f"{self.source}: variable {name} has {n_bytes} bytes for shape {shape}")
        floating = dtype_id in (0, 4, 5)
        dtype = torch.float32 if floating else torch.from_numpy(np.empty(0, item)).dtype
        if name in COLUMN_MAJOR and len(shape) == 2:
            # Filled in the layout the model keeps it in, so that no second copy is ever made.
            out = torch.empty(shape[1], shape[0], dtype=dtype).T
        else:
            out = torch.empty(shape, dtype=dtype)
        row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        rows_per_step = max(1, _CHUNK_BYTES // (item.itemsize * row))
        for start in range(0, shape[0] if shape else 1, rows_per_step):
            n = min(rows_per_step, (shape[0] if shape else 1) - start)
            values = torch.from_numpy(np.frombuffer(self.take(n * row * item.itemsize), dtype=item).copy())
            if dtype_id == 5:
                values = values.view(torch.bfloat16)
            if shape:
                out[start : start + n] = values.view(n, *shape[1:])
            else:
                out.copy_(values.view(()))
        return out


# Variables the model stores column-major (hooked_whisper/components/layout.py): the token
# embedding, whose transpose is the unembedding.
COLUMN_MAJOR = {"decoder/embeddings/weight"}


def read_model_bin(parts: list[Path]) -> dict[str, torch.Tensor]:
    """All variables of a ``model.bin`` (given as one file or its parts in order), as tensors,
    floating point in float32. Aliases resolve to their targets.

    The parts are streamed: peak memory is the float32 weights plus a few MB.
    """
    for p in parts:
        if not p.is_file():
            raise FileNotFoundError(f"no CTranslate2 weights at {p}")
    r = _Reader(parts)
    try:
        version = r.u32()
        if version != 6:
            raise ValueError(f"{r.source}: CTranslate2 binary version {version} is not supported (expected 6)")
        spec = r.string()
        if "Whisper" not in spec:
            raise ValueError(f"{r.source} holds a {spec!r} model, not a Whisper model")
        r.u32()  # spec revision
        tensors: dict[str, torch.Tensor] = {}
        for _ in range(r.u32()):
            name = r.string()
            shape = [r.u32() for _ in range(r.u8())]
            dtype_id = r.u8()
            tensors[name] = r.tensor(name, shape, dtype_id, r.u32())
        for _ in range(r.u32()):
            alias, target = r.string(), r.string()
            tensors[alias] = tensors[target]
    finally:
        r.close()
    return tensors


def model_bin_parts(folder: Path) -> list[Path]:
    """``model.bin``, or ``model.bin.part1``, ``model.bin.part2``, ... for split packages."""
    if (folder / "model.bin").is_file():
        return [folder / "model.bin"]
    parts = sorted(folder.glob("model.bin.part*"), key=lambda p: int(re.sub(r"\D", "", p.suffix) or 0))
    if not parts:
        raise FileNotFoundError(f"{folder} has no model.bin")
    return parts


def ctranslate2_to_hf(variables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename CTranslate2 variables to Hugging Face keys (``model.`` prefix included) and split
    the fused projections. Values are upcast to float32."""
    out: dict[str, torch.Tensor] = {}

    def put(hf_key: str, t: torch.Tensor) -> None:
        out[f"model.{hf_key}"] = t.float()

    def linear(ct2: str, hf: str, bias: bool = True) -> None:
        put(f"{hf}.weight", variables[f"{ct2}/weight"])
        if bias:
            put(f"{hf}.bias", variables[f"{ct2}/bias"])

    def norm(ct2: str, hf: str) -> None:
        put(f"{hf}.weight", variables[f"{ct2}/gamma"])
        put(f"{hf}.bias", variables[f"{ct2}/beta"])

    def split(ct2: str, hf_prefix: str, names: list[str]) -> None:
        weights = variables[f"{ct2}/weight"].chunk(len(names), dim=0)
        biases = variables[f"{ct2}/bias"].chunk(len(names), dim=0)
        for name, w, b in zip(names, weights, biases):
            put(f"{hf_prefix}.{name}.weight", w)
            if name == "k_proj":
                if b.abs().max() != 0:
                    raise ValueError(f"{ct2}: the key projection has a non-zero bias, which Whisper never has")
            else:
                put(f"{hf_prefix}.{name}.bias", b)

    for side in ("encoder", "decoder"):
        put(f"{side}.embed_positions.weight", variables[f"{side}/position_encodings/encodings"])
        norm(f"{side}/layer_norm", f"{side}.layer_norm")
        n_layers = len({m.group(1) for k in variables if (m := re.match(rf"{side}/layer_(\d+)/", k))})
        for i in range(n_layers):
            ct2, hf = f"{side}/layer_{i}", f"{side}.layers.{i}"
            split(f"{ct2}/self_attention/linear_0", f"{hf}.self_attn", ["q_proj", "k_proj", "v_proj"])
            linear(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
            norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
            if side == "decoder":
                linear(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
                split(f"{ct2}/attention/linear_1", f"{hf}.encoder_attn", ["k_proj", "v_proj"])
                linear(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
                norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
            linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
            linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
            norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
    linear("encoder/conv1", "encoder.conv1")
    linear("encoder/conv2", "encoder.conv2")
    put("decoder.embed_tokens.weight", variables["decoder/embeddings/weight"])
    projection = variables.get("decoder/projection/weight")
    if projection is not None and not torch.equal(projection, variables["decoder/embeddings/weight"]):
        raise ValueError("the output projection differs from the token embedding; Whisper ties them")
    return out


def read_ctranslate2_config(folder: Path) -> dict:
    """``config.json`` of a CTranslate2 Whisper folder, in Hugging Face generation-config terms."""
    path = folder / "config.json"
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"could not read {path} as JSON: {err}") from err

    def ids(value) -> bool:
        return isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)

    def pairs(value) -> bool:
        return isinstance(value, list) and all(ids(p) and len(p) == 2 for p in value)

    checks = {
        "suppress_ids": (ids, "a list of token ids (whole numbers >= 0)"),
        "suppress_ids_begin": (ids, "a list of token ids (whole numbers >= 0)"),
        "alignment_heads": (pairs, "a list of [layer, head] pairs"),
    }
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} holds a JSON {type(cfg).__name__}, not the object of a CTranslate2 config")
    for key, (valid, what) in checks.items():
        if key in cfg and not valid(cfg[key]):
            raise ValueError(f"{path}: {key} must be {what}, got {json.dumps(cfg[key])[:80]}")
    return {
        "suppress_tokens": cfg.get("suppress_ids", []),
        "begin_suppress_tokens": cfg.get("suppress_ids_begin", []),
        "alignment_heads": cfg.get("alignment_heads", []),
    }
