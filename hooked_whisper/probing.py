"""Linear probes over layers: extract pooled activations for a set of clips (in memory, or into
shards for a corpus: ``hooked_whisper.extraction``), then fit a probe per hook with
group-disjoint cross-validation and its controls (``hooked_whisper.probe_fitting``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from hooked_whisper.audio import SAMPLE_RATE, audio_clips
from hooked_whisper.hook_layout import HookLayout, layer_of
from hooked_whisper.probe_fitting import (
    L2_GRID,
    balanced_accuracy,
    control_labels,
    cross_validate,
    fold_assignment,
    online_code_length,
    permutation_accuracies,
    wilson_interval,
)

if TYPE_CHECKING:
    from hooked_whisper.extraction import Manifest
    from hooked_whisper.hooked_audio_model import HookedAudioModel

ENCODER_POOLINGS = ("mean_audio", "mean", "none")
DECODER_POOLINGS = ("last", "prompt_end", "mean", "none")


class ActivationStore:
    """Pooled activations per hook, one row per clip, in memory. ``ActivationStore.open(folder)``
    reads a folder written by ``extract_activations(..., out_dir=folder)`` (or the
    ``hooked-whisper extract`` command) lazily instead."""

    def __init__(self, hooks: list[str], unpooled: Sequence[str] = ()):
        self.hooks = hooks
        self.unpooled = set(unpooled)  # hooks kept with pooling "none": one row per position, not per clip
        self._memory: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
        self.n = 0

    @classmethod
    def open(cls, folder: str | Path, verify: bool = True) -> ShardedActivationStore:
        """Read an extraction folder back. With ``verify`` (the default) every shard is read once
        and checked against the checksums written with it (a shard that fails is refused, naming
        the file); without it each tensor is still checked when it is read."""
        return ShardedActivationStore(folder, verify)

    def append(self, batch: dict[str, list[torch.Tensor]]) -> None:
        """Add one batch: for each hook, one tensor per clip (shapes may differ with pooling='none')."""
        for hook, rows in batch.items():
            self._memory[hook].extend(rows)
        self.n += len(next(iter(batch.values())))

    def _check(self, hook: str) -> None:
        if hook not in self.hooks:
            raise KeyError(f"{hook!r} was not extracted; this store has {self.hooks}")

    def rows(self, hook: str) -> list[torch.Tensor]:
        self._check(hook)
        return list(self._memory[hook])

    def __getitem__(self, hook: str) -> torch.Tensor:
        """``[n_clips, ...]`` for pooled activations (pooling='none' rows differ in length: use ``rows``)."""
        return torch.stack(self.rows(hook))


class ShardedActivationStore(ActivationStore):
    """An extraction folder read lazily: ``store[hook]`` reads that hook's tensors from each
    shard (memory-mapped) and nothing else. Rows are the clips that loaded, in manifest order;
    ``labels``, ``groups`` and ``clips`` follow them, ``failed`` maps the others to the reason."""

    def __init__(self, folder: str | Path, verify: bool = True):
        from hooked_whisper.extraction import INDEX, _read_shard

        self.folder = Path(folder)
        path = self.folder / INDEX
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the extraction into {self.folder} has not finished")
        self.index = json.loads(path.read_text())
        ok = [e for e in self.index["rows"] if "error" not in e]
        self.hooks = self.index["hooks"]
        self.unpooled = set(self.index.get("unpooled", []))
        self.n = len(ok)
        self.labels = [e["label"] for e in ok]
        self.groups = [e["group"] for e in ok]
        self.clips = [e["clip"] for e in ok]
        self.failed = {e["clip"]: e["error"] for e in self.index["rows"] if "error" in e}
        if verify:
            for name in self.index["shards"]:
                _read_shard(self.folder / name, verify=True)

    @property
    def shard_count(self) -> int:
        return len(self.index["shards"])

    def _read_one(self, hook: str, shard: int) -> tuple[list[int], dict[str, torch.Tensor]]:
        from hooked_whisper.extraction import ROWS_KEY, _open_shard, check_tensor

        path = self.folder / self.index["shards"][shard]
        with _open_shard(path) as f:
            metadata = f.metadata() or {}
            keys = [k for k in f.keys() if k == hook or k.startswith(f"{hook}/")]
            tensors = {k: f.get_tensor(k) for k in [ROWS_KEY, *keys]}
        for key, tensor in tensors.items():
            check_tensor(path, key, tensor, metadata)
        return tensors.pop(ROWS_KEY).tolist(), tensors

    def _read(self, hook: str) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
        return [self._read_one(hook, shard) for shard in range(self.shard_count)]

    def shard_rows(self, hook: str, shard: int) -> tuple[list[int], list[torch.Tensor]]:
        """The manifest rows shard ``shard`` holds and their activations at ``hook``, one tensor
        per clip, read from that shard alone: a corpus larger than memory is streamed shard by
        shard (``hooked_whisper.saes.training``)."""
        self._check(hook)
        held, tensors = self._read_one(hook, shard)
        return held, list(tensors[hook]) if hook in tensors else [tensors[f"{hook}/{r}"] for r in held]

    def rows(self, hook: str) -> list[torch.Tensor]:
        self._check(hook)
        rows = []
        for held, tensors in self._read(hook):
            rows += list(tensors[hook]) if hook in tensors else [tensors[f"{hook}/{r}"] for r in held]
        return rows

    def __getitem__(self, hook: str) -> torch.Tensor:
        self._check(hook)
        if self.n == 0:
            raise ValueError(f"{self.folder} holds no activations: every clip failed (see store.failed)")
        parts = [tensors[hook] for _, tensors in self._read(hook) if hook in tensors]
        return torch.cat(parts) if parts else torch.stack(self.rows(hook))


def extract_activations(
    model: HookedAudioModel,
    clips: Sequence | Manifest,
    hooks: Sequence[str],
    pooling: str | int = "mean_audio",
    decoder_pooling: str | int = "last",
    batch_size: int = 8,
    out_dir: str | Path | None = None,
    sample_rate: int | None = None,
    progress: bool = True,
    shard_size: int = 256,
    dtype: torch.dtype = torch.float32,
    allow_hooks: bool = False,
) -> ActivationStore:
    """Activations at ``hooks`` for every clip (paths or waveforms at ``sample_rate``, or a
    ``Manifest`` with labels and groups), pooled.

    Encoder hooks use ``pooling``: ``"mean_audio"`` averages the frames that hold real audio
    (50 per second; the zero padding up to 30 s is left out), ``"mean"`` all 1500, ``"none"``
    keeps every audio frame. Decoder hooks run on the prompt plus the greedy transcript and use
    ``decoder_pooling``: ``"last"`` (the last transcript token, the position that predicts
    end-of-text), ``"prompt_end"`` (the last token of the transcription prompt, English for
    multilingual models, which predicts the first word; no transcript is generated), an
    int position, ``"mean"`` over real tokens, or ``"none"``.

    With ``out_dir`` the activations go to safetensors shards of ``shard_size`` clips (in
    ``dtype``) and the result is read back lazily (``ActivationStore.open``): memory stays
    bounded whatever the corpus size, a rerun resumes, clips that fail to load are recorded and
    skipped, and under ``torchrun`` each process extracts its share (see
    ``hooked_whisper.extraction``). Each shard records a hash of its clips, a fingerprint of the
    model's weights, the active hooks and the options: a rerun recomputes the shards whose
    inputs changed, and says so. Extracting into a folder while hooks are active on the model is
    refused unless ``allow_hooks=True`` (the shards then record the hooks' names). Without
    ``out_dir`` everything is kept in memory.
    """
    from hooked_whisper.extraction import Manifest, active_hooks, extract_to_folder, model_fingerprint

    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number of clips, 1 or more; got {batch_size!r}")
    manifest = clips if isinstance(clips, Manifest) else Manifest(list(clips), [None] * len(clips), [None] * len(clips))
    if len(manifest.clips) == 0:
        raise ValueError("no clips given: the dataset is empty")
    hooks = [hooks] if isinstance(hooks, str) else list(hooks)
    if not hooks:
        raise ValueError("no hooks given: name at least one hook to extract (model.hook_dict lists them)")
    for name in hooks:
        model.check_hook_name(name)
    if pooling not in ENCODER_POOLINGS:
        raise ValueError(f"encoder pooling must be one of {ENCODER_POOLINGS}, not {pooling!r}")
    if decoder_pooling not in DECODER_POOLINGS and not isinstance(decoder_pooling, int):
        raise ValueError(f"decoder pooling must be one of {DECODER_POOLINGS} or a position, not {decoder_pooling!r}")
    pooled_batch = partial(_pooled_batch, model, hooks, pooling, decoder_pooling)
    unpooled = [h for h in hooks if (decoder_pooling if model.hook_layout(h).unit == "token" else pooling) == "none"]
    if out_dir is not None:
        settings = {"model": str(getattr(model, "name_or_path", type(model).__name__))}
        settings |= {"pooling": pooling, "decoder_pooling": decoder_pooling, "unpooled": unpooled}
        hooked = active_hooks(model)
        if hooked and not allow_hooks:
            raise ValueError(
                f"the model has {len(hooked)} hook(s) active ({'; '.join(hooked[:3])}"
                f"{' ...' if len(hooked) > 3 else ''}): "
                "the shards would hold hooked activations. Extract outside the `with model.hooks(...)` block, "
                "or pass allow_hooks=True to extract with them (the shards record them)"
            )
        state = {"model": model_fingerprint(model), "hooks": json.dumps(hooked)}
        extract_to_folder(
            manifest, out_dir, hooks, pooled_batch, settings, batch_size, shard_size, dtype, sample_rate,
            max_seconds=30.0, progress=progress, model_state=state,
        )  # fmt: skip
        return ActivationStore.open(out_dir)
    store = ActivationStore(hooks, unpooled)
    starts = range(0, len(manifest.clips), batch_size)
    for start in tqdm(starts, desc="extracting activations", disable=not progress, unit="batch"):
        waveforms = audio_clips(list(manifest.clips[start : start + batch_size]), sample_rate)
        store.append({k: [r.detach().to("cpu", dtype) for r in v] for k, v in pooled_batch(waveforms).items()})
    return store


def _pooled_batch(
    model: HookedAudioModel, hooks: list[str], pooling, decoder_pooling, waveforms: list[torch.Tensor]
) -> dict[str, list[torch.Tensor]]:
    """One pooled activation per clip and hook for a batch of 16 kHz waveforms."""
    layouts = {h: model.hook_layout(h) for h in hooks}
    needs_decoder = any(layout.unit == "token" for layout in layouts.values())
    mel = model.to_mel(waveforms, SAMPLE_RATE)
    with torch.no_grad():
        if needs_decoder:
            # The last prompt position needs no transcript: skip generating one.
            tokens_in = model.probe_tokens() if decoder_pooling == "prompt_end" else None
            _, cache = model.run_with_cache(mel, tokens_in, names_filter=[*hooks, "hook_tokens"])
            tokens = cache["hook_tokens"]
        else:
            cache, tokens = {}, None
            with model.hooks(fwd_hooks=[(h, partial(_store, cache)) for h in hooks]):
                model.encode(mel)
    batch: dict[str, list[torch.Tensor]] = {}
    for hook in hooks:
        acts, layout = cache[hook], layouts[hook]
        if layout.unit != "token":
            batch[hook] = [
                _pool_audio(acts[i], layout, model.real_position_count(layout.unit, len(w)), pooling)
                for i, w in enumerate(waveforms)
            ]
        else:
            batch[hook] = [_pool_decoder(model, acts[i], tokens[i], decoder_pooling) for i in range(len(waveforms))]
    return batch


def _store(cache: dict, x: torch.Tensor, hook) -> None:
    cache[hook.name] = x


def _pool_audio(x: torch.Tensor, layout: HookLayout, n_real: int, pooling: str | int) -> torch.Tensor:
    """Pool one clip's activation (batch axis removed) over its audio positions, the first
    ``n_real`` of which hold the clip (``model.real_position_count``)."""
    if layout.key_unit is not None:
        raise ValueError("attention patterns and scores have two position axes; pool hook_z or hook_attn_out instead")
    x = x.movedim(layout.pos_axis - 1, 0)  # positions first, whatever the hook's layout
    n_frames = min(n_real, x.shape[0])
    if pooling == "mean_audio":
        return x[:n_frames].mean(0)
    if pooling == "mean":
        return x.mean(0)
    return x[:n_frames]


def _pool_decoder(model: HookedAudioModel, x: torch.Tensor, tokens: torch.Tensor, pooling: str | int) -> torch.Tensor:
    last = model.real_length(tokens) - 1
    if pooling == "last":
        return x[last]
    if pooling == "prompt_end":
        return x[model.prompt_length(tokens) - 1]
    if pooling == "mean":
        return x[: last + 1].mean(0)
    if pooling == "none":
        return x[: last + 1]
    # A position counts within this row's own tokens (negative ones from its own end), never
    # into the end-of-text padding a batch adds to its shorter rows.
    n = last + 1
    if not -n <= int(pooling) < n:
        raise ValueError(
            f"decoder position {pooling} is outside this clip's {n} tokens (prompt and transcript): use a "
            f"position in [-{n}, {n - 1}], or decoder_pooling='last'"
        )
    return x[int(pooling) % n]


def _check_labels(labels, task: str | None) -> list:
    """``labels`` as a list of hashable classes, refusing what would silently become a class."""
    import numpy as np

    if task not in (None, "classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', not {task!r}")
    if task == "regression":
        raise ValueError(
            "train_probes fits classification probes; for a continuous target fit a regression on "
            "store[hook] yourself (e.g. ridge regression), or bin the target and pass task='classification'"
        )
    if isinstance(labels, (torch.Tensor, np.ndarray)):
        if labels.ndim != 1:
            raise ValueError(f"labels must be one per example (1-D); got shape {tuple(labels.shape)}")
        labels = labels.tolist()
    labels = [x.item() if isinstance(x, np.generic) else x for x in labels]
    missing = [i for i, x in enumerate(labels) if x is None or x == "" or (isinstance(x, float) and math.isnan(x))]
    if missing:
        raise ValueError(
            f"{len(missing)} labels are missing (None, NaN or empty), at examples {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}: they would become a class of their own; drop those examples"
        )
    unhashable = next((x for x in labels if not isinstance(x, (str, int, float, bool))), None)
    if unhashable is not None:
        raise ValueError(
            f"labels are strings, integers or booleans, one per example; got a {type(unhashable).__name__}"
        )
    if task is None and any(isinstance(x, float) for x in labels):
        raise ValueError(
            f"the labels are floats ({len(set(labels))} distinct values): a probe here is a classifier, each "
            "distinct value a class. Pass task='classification' if they are classes, or task='regression' for a "
            "continuous target"
        )
    return labels


@dataclass
class ProbeResult:
    hook: str
    layer: int | None
    accuracy: float  # out-of-fold, over every example
    balanced_accuracy: float  # mean recall per class (chance: 1 / classes)
    accuracy_std: float  # spread over folds
    ci_low: float  # 95% Wilson interval of the accuracy
    ci_high: float
    majority: float  # always predicting the training folds' most common class
    shuffled: float  # mean balanced accuracy with permuted labels (chance for this design)
    p_value: float | None  # permutation test: P(permuted >= balanced accuracy); None when not tested
    control: float  # balanced accuracy on the control task: a random label per group (Hewitt and Liang)
    selectivity: float  # balanced accuracy - control
    l2: float  # median strength chosen inside the training folds
    code_bits: float | None = None  # online (prequential) code length of the labels, if asked
    uniform_bits: float | None = None  # the same with no features: n log2(classes)

    @property
    def compression(self) -> float | None:
        """Uniform code length over online code length: above 1 when the features hold the label."""
        return None if self.code_bits is None else self.uniform_bits / self.code_bits  # type: ignore[operator]


@dataclass
class ProbeReport:
    results: list[ProbeResult]
    classes: list
    n: int
    method: str
    folds: int
    permutations: int
    n_layers: int | None = None  # for relative depth in the table

    def table(self) -> str:
        columns = ["hook", "depth", "accuracy", "95% CI", "balanced", "majority", "permuted", "p", "control"]
        columns += ["selectivity", "compression"]
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for r in self.results:
            depth = f"{(r.layer + 1) / self.n_layers:.2f}" if r.layer is not None and self.n_layers else "-"
            compression = f"{r.compression:.2f}" if r.compression is not None else "-"
            permuted = "-" if r.p_value is None else f"{r.shuffled:.3f}"
            p = "not tested" if r.p_value is None else f"{r.p_value:.3f}"
            lines.append(
                f"| {r.hook} | {depth} | {r.accuracy:.3f} ± {r.accuracy_std:.3f} | {r.ci_low:.2f}-{r.ci_high:.2f} "
                f"| {r.balanced_accuracy:.3f} | {r.majority:.3f} | {permuted} | {p} "
                f"| {r.control:.3f} | {r.selectivity:+.3f} | {compression} |"
            )
        return "\n".join(lines)

    def best(self) -> ProbeResult:
        return max(self.results, key=lambda r: r.accuracy)


def train_probes(
    activations: ActivationStore | dict[str, torch.Tensor],
    labels: Sequence,
    hooks: Sequence[str] | None = None,
    groups: Sequence | None = None,
    method: str = "ridge",
    folds: int = 5,
    seed: int = 0,
    l2: float | Sequence[float] = L2_GRID,
    permutations: int = 100,
    code_length: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    task: str | None = None,
) -> ProbeReport:
    """A linear probe per hook, cross-validated over ``folds`` group-disjoint folds, with its
    controls (see ``hooked_whisper.probe_fitting``): majority baseline, a permutation test
    (``permutations`` group-level label shuffles, p-value), the control task and selectivity,
    a 95% interval, and with ``code_length=True`` the online code length (MDL probing).

    ``groups`` (one id per example: speaker, video, source clip) keeps each group inside one
    fold, so the probe is scored on groups it never saw; folds are stratified by label.
    ``method`` is ``"ridge"`` (one-hot least squares, closed form: fast enough for thousands of
    permutations) or ``"logistic"`` (multinomial, L-BFGS). ``l2`` is a strength, or a grid
    searched by cross-validation inside each training split. Deterministic for a ``seed``; runs
    on the GPU when there is one (or on ``device``).

    ``labels`` are one class per example (strings, integers, booleans; a list, or a 1-D tensor
    or array); None, NaN and empty labels are refused. Probes are classifiers: float labels
    could be a continuous target, so they need ``task="classification"`` (each distinct value a
    class). ``permutations=0`` skips the permutation test (its p-value is None, "not tested").
    """
    hooks = list(
        hooks if hooks is not None else activations.hooks if isinstance(activations, ActivationStore) else activations
    )
    if not hooks:
        raise ValueError("no hooks to probe")
    if method not in ("logistic", "ridge"):
        raise ValueError(f"method must be 'logistic' or 'ridge', not {method!r}")
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise ValueError(f"folds must be a whole number, 2 or more (cross-validation); got {folds!r}")
    if not isinstance(permutations, int) or isinstance(permutations, bool) or permutations < 0:
        raise ValueError(f"permutations must be a whole number, 0 (no test) or more; got {permutations!r}")
    labels = _check_labels(labels, task)
    if isinstance(activations, ActivationStore):
        for hook in hooks:
            if hook in activations.unpooled:
                raise ValueError(
                    f"{hook} was extracted with pooling 'none' (one vector per position, not per clip); a probe "
                    "needs one vector per clip: extract with pooling='mean_audio' / decoder_pooling='last', or "
                    "pool the rows yourself (store.rows(hook)) and pass {hook: tensor}"
                )
    classes = sorted(set(labels), key=str)
    if len(classes) < 2:
        raise ValueError(f"probing needs at least two classes; the labels hold only {classes}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    y = torch.tensor([classes.index(label) for label in labels])
    n_rows = activations.n if isinstance(activations, ActivationStore) else len(activations[hooks[0]])
    if n_rows != len(y):
        raise ValueError(f"{len(y)} labels for {n_rows} examples: one label per clip is needed")
    if groups is not None and len(groups) != len(y):
        raise ValueError(f"{len(groups)} groups for {len(y)} examples: one group per example is needed")
    fold_of = fold_assignment(y, groups, folds, seed).to(device)
    control_y = control_labels(y, groups, torch.Generator().manual_seed(seed + 2)).to(device)
    y = y.to(device)
    n_classes, results = len(classes), []
    for hook in tqdm(hooks, desc="training probes", disable=not progress, unit="hook"):
        x = activations[hook].float().to(device)
        if x.shape[0] != len(y):
            raise ValueError(f"{len(y)} labels for {x.shape[0]} examples at {hook}: one label per clip is needed")
        x = x.flatten(1)
        bad = ~torch.isfinite(x)
        if bad.any():
            raise ValueError(
                f"the features at {hook} hold NaN or infinite values ({int(bad.any(0).sum())} of {x.shape[1]} columns, "
                f"{int(bad.any(1).sum())} of {x.shape[0]} examples): a probe cannot fit them; drop or fix those "
                "examples (a clip that overflowed, a float16 extraction out of range)"
            )
        cv = cross_validate(x, y, groups, n_classes, fold_of, method, l2, seed)
        correct = int((cv.predictions == y).sum())
        accuracy = correct / len(y)
        balanced = balanced_accuracy(cv.predictions, y, n_classes)
        permuted = permutation_accuracies(x, y, groups, n_classes, fold_of, method, cv.l2, permutations, seed + 1)
        control = cross_validate(x, control_y, groups, n_classes, fold_of, method, cv.l2[len(cv.l2) // 2], seed)
        majority = [
            float((y[fold_of == f] == torch.bincount(y[fold_of != f], minlength=n_classes).argmax()).float().mean())
            for f in range(folds)
        ]
        low, high = wilson_interval(correct, len(y))
        control_balanced = balanced_accuracy(control.predictions, control_y, n_classes)
        median_l2 = sorted(cv.l2)[len(cv.l2) // 2]
        code = online_code_length(x, y, groups, n_classes, median_l2, seed) if code_length else None
        results.append(
            ProbeResult(
                hook=hook,
                layer=layer_of(hook),
                accuracy=accuracy,
                balanced_accuracy=balanced,
                accuracy_std=float(torch.tensor(cv.fold_accuracies).std()),
                ci_low=low,
                ci_high=high,
                majority=sum(majority) / len(majority),
                shuffled=sum(permuted) / len(permuted) if permuted else float("nan"),
                p_value=(1 + sum(p >= balanced for p in permuted)) / (1 + len(permuted)) if permuted else None,
                control=control_balanced,
                selectivity=balanced - control_balanced,
                l2=median_l2,
                code_bits=code[0] if code else None,
                uniform_bits=code[1] if code else None,
            )
        )
    return ProbeReport(results, classes, len(y), method, folds, permutations)
