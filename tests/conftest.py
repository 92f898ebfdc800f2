"""Fixtures every layer may use: the bundled checkpoints (tiny.en, base), float32's measured
spread on a real clip, and a small random Whisper loaded like a real checkpoint. Nothing here
imports ``transformers``: the reference implementations' fixtures live in ``parity/conftest.py``."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from transformer_lens import ActivationCache

from hooked_whisper import HookedWhisper, HookedWhisperConfig
from tests.support import SPREAD_CLIP, relative_float32_error


def pytest_configure(config):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # pytest -n N: share the cores between the workers (and their subprocesses)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


# The test files that take longest, longest first (measured with --durations=0). The README's
# command hands whole files to two workers from one queue (--dist loadfile): when the long files
# go out first and the short ones fill in at the end, both workers finish at about the same time.
LONGEST_FILES = [
    "tests/docs/test_examples.py",
    "tests/toolkit/test_patching.py",
    "tests/parity/test_decoding.py",
    "tests/model/test_long_form.py",
    "tests/toolkit/test_extraction.py",
    "tests/parity/test_real_weights.py",
    "tests/model/test_hooks.py",
    "tests/model/test_decoding.py",
    "tests/parity/test_random_weights.py",
    "tests/toolkit/test_lens.py",
    "tests/parity/test_gpu_script.py",
    "tests/unit/test_device_discipline.py",
    "tests/docs/test_cli.py",
]


def pytest_collection_modifyitems(items):
    rank = {path: i for i, path in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def tiny_en() -> HookedWhisper:
    return HookedWhisper.from_pretrained("tiny.en")


@pytest.fixture(scope="session")
def tiny_en_float64(tiny_en) -> HookedWhisper:
    """tiny.en computed in float64: the exact answer float32 runs are measured against."""
    return copy.deepcopy(tiny_en).double()


@pytest.fixture(scope="session")
def base() -> HookedWhisper:
    return HookedWhisper.from_pretrained("base")


@pytest.fixture(scope="session")
def float32_and_float64_runs(
    tiny_en, tiny_en_float64
) -> tuple[torch.Tensor, ActivationCache, torch.Tensor, ActivationCache]:
    """tiny.en on a real clip reading its greedy transcript, in float32 and in float64: logits
    and every activation but the attention patterns (without a hook on them attention runs
    through the fused kernel, the fast path users run)."""

    def not_a_pattern(name: str) -> bool:
        return not name.endswith(("hook_pattern", "hook_attn_scores"))

    with torch.no_grad():
        logits, cache = tiny_en.run_with_cache(SPREAD_CLIP, names_filter=not_a_pattern)
        exact_logits, exact = tiny_en_float64.run_with_cache(
            SPREAD_CLIP, cache["hook_tokens"], names_filter=not_a_pattern
        )
    return logits, cache, exact_logits, exact


def computed_once_per_run(request, tmp_path_factory, name: str, compute):
    """A JSON value computed by whichever pytest worker asks first and read from a file by the
    others: the folder above each worker's temporary folder is the run's own (pytest-xdist's
    documented pattern), so nothing carries over between runs. Without workers, it is computed."""
    if not hasattr(request.config, "workerinput"):
        return compute()
    from filelock import FileLock  # a dependency of torch

    path = tmp_path_factory.getbasetemp().parent / f"{name}.json"
    with FileLock(f"{path}.lock"):
        if path.is_file():
            return json.loads(path.read_text())
        value = compute()
        path.write_text(json.dumps(value))
        return value


@pytest.fixture(scope="session")
def float32_spread(request, tmp_path_factory) -> float:
    """float32's measured relative error on tiny.en at this run's thread count: the largest
    ``max|float32 - float64| / max|float64|`` over the logits and every cached activation of
    a real clip. Tests comparing two float32 paths allow a few times this, scaled by the
    magnitude they compare (``tests.support.spread_bound``). Measured once per run: every
    worker runs at the same thread count."""

    def measure() -> float:
        return relative_float32_error(*request.getfixturevalue("float32_and_float64_runs"))

    name = f"float32_spread_{torch.get_num_threads()}_threads"
    return computed_once_per_run(request, tmp_path_factory, name, measure)


@pytest.fixture(scope="session")
def hf_export(tmp_path_factory):
    """Hugging Face folders written from the bundled checkpoints, keyed by model name."""
    from weights_conversion import save_hf_folder

    cache: dict[str, Path] = {}

    def export(model: HookedWhisper, name: str) -> Path:
        if name not in cache:
            cache[name] = save_hf_folder(model, tmp_path_factory.mktemp(name.replace(".", "_")))
        return cache[name]

    return export


@pytest.fixture(scope="session")
def small(tmp_path_factory) -> HookedWhisper:
    """A small random Whisper (four decoder layers, the real multilingual vocabulary) loaded
    from a Hugging Face folder as a real checkpoint is, so its parameters arrive in the layouts
    loading gives them: every fast path of tiny.en's, in a fraction of its time."""
    from weights_conversion import save_hf_folder

    torch.manual_seed(0)
    cfg = HookedWhisperConfig(d_model=64, n_heads=2, d_head=32, n_encoder_layers=1, n_decoder_layers=4)
    return HookedWhisper.from_pretrained(save_hf_folder(HookedWhisper(cfg), tmp_path_factory.mktemp("small")))
