"""Device discipline: every tensor the library makes for a model lives on the model's device.

A tensor left on the CPU (a mel filter bank, a suppress mask, a position table, a KV-cache
index, a patching source) only fails on a user's GPU, and this suite has none. So the model is
moved to a *labelled* device: each parameter and buffer becomes ``Elsewhere``, a tensor that
reports the ``meta`` device while holding CPU data, and a dispatch mode runs every operator on
that data and records each one that meets a labelled tensor and a plain CPU tensor together (a
0-dim CPU tensor is let through, as CUDA lets it through; copies between devices are what
``.to`` is for). CPU index tensors are reported too, although CUDA copies them over silently:
each is a host-to-device copy on every call. Factories asked for the model's device
(``torch.zeros(..., device=model.device)``, ``torch.tensor(..., device=...)``) make labelled
tensors, ``.cpu()`` and ``.tolist()`` give plain ones: the rules of a second device, enforced
on every operator, while the numbers are still computed, so decoding (which reads tokens back)
runs in full and its results can be checked equal to a plain CPU run.

Why not the alternatives: the bare ``meta`` device computes nothing, so greedy decoding, beam
search, transcription, patching sweeps and extraction (all data-dependent) could not run; a
float64 model with a watch for stray float32 tensors would miss every integer and boolean
tensor (token ids, positions, masks, indices), which is where most device slips happen; a real
second device needs hardware. ``torch.Generator`` cannot be made for ``meta``, so the test hands
out CPU generators for it (the library asks for one on the model's device, which is right).
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from hooked_whisper.lens import encoder_lens, logit_attribution, logit_lens
from hooked_whisper.patching import (
    ablate,
    activation_patch,
    attribution_patch,
    cross_attention_receivers,
    layer_sites,
    path_patch,
)
from hooked_whisper.probing import extract_activations
from tests.support import random_whisper
from tests.toolkit.test_families import SAMPLE_RATE, clip, tiny_qwen2_audio, tiny_whisper

LABEL = torch.device("meta")
LIBRARY = str(Path(__file__).parents[2] / "hooked_whisper")
ALLOWED_MIXES = {torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default}  # moving between devices
# In-place operators that change only a tensor's shape or strides: the label's metadata follows.
METADATA_IN_PLACE = {"transpose_", "squeeze_", "unsqueeze_", "t_", "as_strided_", "swapdims_", "swapaxes_"}


class Elsewhere(torch.Tensor):
    """CPU data behind a tensor that says it lives on another device (``LABEL``)."""

    @staticmethod
    def __new__(cls, data: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(
            cls, data.shape, strides=data.stride(), storage_offset=data.storage_offset(),
            dtype=data.dtype, device=LABEL, requires_grad=data.requires_grad,
        )  # fmt: skip

    def __init__(self, data: torch.Tensor):
        self.data_ = data

    def __repr__(self) -> str:
        return f"Elsewhere({self.data_!r})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.tolist:  # a device tensor's values, read back to the host
            return args[0].data_.tolist()
        with torch._C.DisableTorchFunctionSubclass():  # results keep the type the dispatch mode gave them
            return func(*args, **(kwargs or {}))

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} on a labelled tensor outside the DeviceWatch")


def _labelled(device) -> bool:
    return device is not None and torch.device(device) == LABEL


class _LabelledFactories(TorchFunctionMode):
    """``torch.tensor`` and friends copy their data to the device below the dispatcher's reach:
    make them on the CPU and label the result."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor, torch.asarray) and _labelled(kwargs.get("device")):
            return Elsewhere(func(*args, **{**kwargs, "device": "cpu"}))
        return func(*args, **kwargs)


class _LabelledGenerator(torch.Generator):
    def __new__(cls, device="cpu"):
        return super().__new__(cls, "cpu" if _labelled(device) else device)


class DeviceWatch(TorchDispatchMode):
    """Runs every operator on CPU data and records the ones that mix the labelled device with
    plain CPU tensors, with the library line that called them."""

    def __init__(self):
        super().__init__()
        self.mixed: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        there = any(isinstance(t, Elsewhere) for t in tensors)
        to_there = _labelled(kwargs.get("device"))
        here = [t for t in tensors if not isinstance(t, Elsewhere) and t.dim() > 0]
        if there and here and func not in ALLOWED_MIXES:
            self.mixed.append(f"{func} with CPU {[tuple(t.shape) for t in here]} at {self._library_line()}")
        if to_there:
            kwargs = {**kwargs, "device": torch.device("cpu")}
        unwrap = lambda t: t.data_ if isinstance(t, Elsewhere) else t  # noqa: E731
        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        name = func._schema.name.split("::")[-1]
        if there and name in METADATA_IN_PLACE and isinstance(args[0], Elsewhere):
            python_keys = torch._C.DispatchKeySet(torch._C.DispatchKey.Python) | torch._C.DispatchKeySet(
                torch._C.DispatchKey.PythonTLSSnapshot
            )
            with torch._C._ExcludeDispatchKeyGuard(python_keys):  # the label's own metadata, on meta
                func(*args, **kwargs)
            return args[0]
        if func is torch.ops.aten._to_copy.default:
            label_out = to_there or (there and "device" not in kwargs)
        else:
            label_out = there or to_there
        return tree_map(lambda t: Elsewhere(t) if isinstance(t, torch.Tensor) else t, out) if label_out else out

    @staticmethod
    def _library_line() -> str:
        frames = [f for f in traceback.extract_stack() if f.filename.startswith(LIBRARY)]
        return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "outside the library"


@pytest.fixture
def watch(monkeypatch):
    monkeypatch.setattr(torch, "Generator", _LabelledGenerator)
    with _LabelledFactories(), DeviceWatch() as mode:
        yield mode


def label(model):
    model._apply(Elsewhere)
    assert model.device == LABEL
    return model


def on_cpu(result):
    return tree_map(lambda t: t.data_ if isinstance(t, Elsewhere) else t, result)


def last_logit(logits):
    return logits[:, -1].log_softmax(-1)[:, 3]


@pytest.fixture
def whisper():
    return tiny_whisper()


@pytest.fixture
def qwen2_audio(tmp_path):
    return tiny_qwen2_audio(tmp_path)


def test_the_watch_catches_a_tensor_left_on_the_cpu(whisper, watch):
    model = label(whisper)
    stray = torch.ones(model.cfg.d_model)  # no device: a CPU tensor
    hook = (model.hook_name("encoder", 0, "hook_resid_post"), lambda x, hook: x + stray)
    with torch.no_grad():
        model.run_with_hooks(
            clip(0, 0.5), torch.tensor([model.prompt_tokens()]), fwd_hooks=[hook], sample_rate=SAMPLE_RATE
        )
    assert watch.mixed and "aten.add.Tensor with CPU [(64,)]" in watch.mixed[0]
    watch.mixed.clear()
    with torch.no_grad():
        model(clip(0, 0.5), torch.tensor([model.prompt_tokens()]), sample_rate=SAMPLE_RATE)
    assert watch.mixed == [], sorted(set(watch.mixed))


def test_whisper_runs_decodes_and_interprets_on_its_own_device(whisper, watch, tmp_path):
    with torch.no_grad():  # the same computations on the plain CPU, to check the watch changes no number
        plain_tokens = whisper.generate(clip(0, 1.0), timestamps=True, max_new_tokens=4, sample_rate=SAMPLE_RATE)
        plain_logits, _ = whisper.run_with_cache(clip(0, 1.0), plain_tokens, sample_rate=SAMPLE_RATE)
    model = label(whisper)
    base, other = clip(0, 1.0), clip(1, 1.0)
    kw = dict(sample_rate=SAMPLE_RATE)
    tokens = model.generate(base, timestamps=True, max_new_tokens=4, **kw)
    assert tokens.device == LABEL and torch.equal(on_cpu(tokens), plain_tokens)
    model.generate([base, clip(2, 0.5)], beam_size=2, max_new_tokens=3, **kw)
    model.generate(base, temperature=0.7, best_of=2, seed=1, max_new_tokens=3, **kw)
    model.generate(base, stop_on_loop=True, max_new_tokens=3, **kw)
    model.transcribe(base, word_timestamps=True, temperature=0.0, max_new_tokens=3, **kw)
    model.transcribe([base, clip(2, 0.5)], batch_size=2, temperature=0.0, max_new_tokens=3, **kw)
    with torch.no_grad():
        logits, cache = model.run_with_cache(base, tokens, **kw)
    assert torch.equal(on_cpu(logits), plain_logits)
    logit_lens(model, cache, k=2)
    cache.decoder.accumulated_resid(apply_ln=True)  # TransformerLens' cache views over our hooks
    cache.decoder.decompose_resid()
    cache.decoder.stack_head_results()
    encoder_lens(model, base, max_new_tokens=3, sample_rate=SAMPLE_RATE)
    logit_attribution(model, cache, token=3)

    kw |= dict(tokens=tokens, progress=False)
    sites = layer_sites(model, "decoder:hook_resid_post")[-1:] + layer_sites(model, "encoder:hook_mlp_out")[:1]
    activation_patch(model, base, other, sites, last_logit, alpha=0.5, **kw)
    for kind in ("mean", "resample"):
        reference = other if kind == "resample" else [other, clip(3, 1.0)]
        ablate(model, base, sites[:1], last_logit, kind=kind, reference=reference, **kw)
    attribution_patch(model, base, other, last_logit, tokens=tokens, sample_rate=SAMPLE_RATE)
    sender = model.hook_name("encoder", 0, "hook_mlp_out")
    path_patch(model, base, other, sender, cross_attention_receivers(model, via="v")[:2], last_logit, **kw)

    hooks = [model.hook_name("encoder", 1, "hook_resid_post"), model.hook_name("decoder", 1, "hook_resid_post")]
    clips = [clip(seed, 0.5) for seed in range(3)]
    kw = dict(decoder_pooling="prompt_end", sample_rate=SAMPLE_RATE, progress=False)  # no 448-token transcripts
    store = extract_activations(model, clips, hooks, batch_size=2, out_dir=tmp_path, shard_size=2, **kw)
    assert store[hooks[0]].device.type == "cpu"  # what was written came off the device first
    assert watch.mixed == [], sorted(set(watch.mixed))


def test_the_audio_llm_on_its_own_device(qwen2_audio, watch):
    model = label(qwen2_audio)
    base, other = clip(0, 1.0), clip(1, 1.0)
    tokens = model.generate(base, max_new_tokens=3, sample_rate=SAMPLE_RATE)
    kw = dict(tokens=tokens, sample_rate=SAMPLE_RATE)
    with torch.no_grad():
        _, cache = model.run_with_cache(base, **kw)
    logit_lens(model, cache, k=2)
    sites = layer_sites(model, "decoder:hook_resid_post")[-1:] + layer_sites(model, "encoder:hook_mlp_out")[:1]
    activation_patch(model, base, other, sites, last_logit, progress=False, **kw)
    attribution_patch(model, base, other, last_logit, **kw)
    sender = model.hook_name("encoder", 0, "hook_mlp_out")
    path_patch(
        model, base, other, sender, cross_attention_receivers(model, via="v")[:2], last_logit, progress=False, **kw
    )
    hooks = [model.hook_name("encoder", 1, "hook_resid_post"), model.hook_name("decoder", 1, "hook_resid_post")]
    extract_activations(
        model, [base, other], hooks, decoder_pooling="prompt_end", sample_rate=SAMPLE_RATE, progress=False
    )
    assert watch.mixed == [], sorted(set(watch.mixed))


def test_language_detection_on_its_own_device(watch):
    model = label(random_whisper(d_model=64, n_heads=2, d_head=32, n_encoder_layers=1, n_decoder_layers=1))
    assert model.cfg.is_multilingual
    model.detect_language(clip(0, 1.0), sample_rate=SAMPLE_RATE)
    model.generate([clip(0, 1.0), clip(1, 0.5)], max_new_tokens=2, sample_rate=SAMPLE_RATE)  # language per clip
    assert watch.mixed == [], sorted(set(watch.mixed))
