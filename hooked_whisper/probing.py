"""Linear probes over layers: extract pooled activations for a set of clips (in memory, or into
shards for a corpus: ``hooked_whisper.extraction``), then fit a probe per hook with
group-disjoint cross-validation and its controls (``hooked_whisper.probe_fitting``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from hooked_whisper.audio import SAMPLE_RATE, audio_clips
from hooked_whisper.hook_layout import HookLayout, layer_of
from hooked_whisper.metrics import adjust_p_values
from hooked_whisper.probe_fitting import (
    L2_GRID,
    PairedDifference,
    auroc_with_interval,
    balanced_accuracy,
    bootstrap_balanced_accuracy,
    control_labels,
    cross_validate,
    fold_assignment,
    online_code_length,
    paired_difference,
    permutation_balanced_accuracies,
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
    balanced_accuracy: float  # mean recall per class (chance: 1 / classes): the reported statistic
    accuracy_std: float  # spread of accuracy over folds
    ci_low: float  # 95% interval of the balanced accuracy, whole groups resampled 2000 times
    ci_high: float
    majority: float  # always predicting the training folds' most common class
    shuffled: float  # mean balanced accuracy with permuted labels (chance for this design)
    p_value: float | None  # permutation test: P(permuted >= balanced accuracy); None when not tested
    p_adjusted: float | None  # the same, adjusted over the hooks of this call (Holm by default)
    control: float | None  # balanced accuracy on the control task (only with control_types)
    selectivity: float | None  # balanced accuracy - control (only with control_types)
    l2: float  # median strength chosen inside the training folds
    auroc: tuple[float, float, float] | None = None  # two classes: (AUROC, 95% group-bootstrap interval)
    gain: PairedDifference | None = None  # over the nuisance-only probe (only with nuisance=)
    gain_p_adjusted: float | None = None
    code_bits: float | None = None  # online (prequential) code length of the labels, if asked
    uniform_bits: float | None = None  # the same with no features: n log2(classes)
    predictions: torch.Tensor | None = field(default=None, compare=False, repr=False)  # out-of-fold, [n]
    inner_accuracy: torch.Tensor | None = field(default=None, compare=False, repr=False)  # per fold, on the others

    @property
    def compression(self) -> float | None:
        """Uniform code length over online code length: above 1 when the features hold the label."""
        return None if self.code_bits is None else self.uniform_bits / self.code_bits  # type: ignore[operator]


@dataclass
class SelectedLayer:
    """The best hook chosen inside the training folds: for each test fold, the hook whose probe
    was most accurate on the other folds; its predictions on the test fold are scored. The score
    of a choice made without seeing the data it is scored on."""

    hooks: list[str]  # the hook chosen for each fold
    balanced_accuracy: float
    ci_low: float
    ci_high: float
    predictions: torch.Tensor | None = field(default=None, compare=False, repr=False)  # out-of-fold, [n]

    @property
    def hook(self) -> str:
        """The hook chosen for the most folds."""
        return max(set(self.hooks), key=lambda h: (self.hooks.count(h), -self.hooks.index(h)))


@dataclass
class ProbeReport:
    results: list[ProbeResult]
    classes: list
    n: int
    method: str
    folds: int
    permutations: int
    n_layers: int | None = None  # for relative depth in the table
    correction: str = "holm"
    selected: SelectedLayer | None = None  # None with one hook, 2 folds, or logistic at one strength
    nuisance: tuple[float, float, float] | None = None  # the nuisance-only probe: (balanced accuracy, 95% interval)
    nuisance_predictions: torch.Tensor | None = field(default=None, compare=False, repr=False)  # out-of-fold, [n]
    labels: torch.Tensor | None = field(default=None, compare=False, repr=False)  # class indices, [n]
    groups: Sequence | None = field(default=None, compare=False, repr=False)

    def table(self) -> str:
        columns = ["hook", "depth", "accuracy", "balanced", "95% CI", "majority", "permuted", "p"]
        columns.append(f"p ({self.correction})")
        optional = {
            "AUROC": any(r.auroc for r in self.results),
            "control": any(r.control is not None for r in self.results),
            "gain over nuisance": self.nuisance is not None,
            "compression": any(r.code_bits is not None for r in self.results),
        }
        columns += [name for name, shown in optional.items() if shown]
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for r in self.results:
            depth = f"{(r.layer + 1) / self.n_layers:.2f}" if r.layer is not None and self.n_layers else "-"
            tested = r.p_value is not None
            cells = [
                r.hook, depth, f"{r.accuracy:.3f} ± {r.accuracy_std:.3f}", f"{r.balanced_accuracy:.3f}",
                f"{r.ci_low:.2f}-{r.ci_high:.2f}", f"{r.majority:.3f}", f"{r.shuffled:.3f}" if tested else "-",
                f"{r.p_value:.4f}" if tested else "not tested", f"{r.p_adjusted:.4f}" if tested else "-",
            ]  # fmt: skip
            if optional["AUROC"]:
                cells.append(f"{r.auroc[0]:.3f} ({r.auroc[1]:.2f}-{r.auroc[2]:.2f})" if r.auroc else "-")
            if optional["control"]:
                cells.append(f"{r.control:.3f} (selectivity {r.selectivity:+.3f})" if r.control is not None else "-")
            if optional["gain over nuisance"] and r.gain is not None:
                g = r.gain
                cells.append(
                    f"{g.difference:+.3f} ({g.ci_low:+.2f} to {g.ci_high:+.2f}, p {g.p_value:.4f}, "
                    f"{self.correction} {r.gain_p_adjusted:.4f})"
                )
            if optional["compression"]:
                cells.append(f"{r.compression:.2f}" if r.compression is not None else "-")
            lines.append("| " + " | ".join(cells) + " |")
        if self.nuisance is not None:
            low, high = self.nuisance[1:]
            lines.append(f"\nnuisance-only probe: balanced accuracy {self.nuisance[0]:.3f} ({low:.2f}-{high:.2f})")
        if self.selected is not None:
            s = self.selected
            lines.append(
                f"\nbest hook chosen inside the training folds: {s.hook} (per fold: {', '.join(s.hooks)}), "
                f"held-out balanced accuracy {s.balanced_accuracy:.3f} ({s.ci_low:.2f}-{s.ci_high:.2f})"
            )
        return "\n".join(lines)

    def best(self) -> ProbeResult:
        """The hook with the highest out-of-fold accuracy. Its score was also used to pick it, so it
        flatters when hooks are close: ``selected`` holds the choice made inside the training folds
        and its held-out score."""
        return max(self.results, key=lambda r: r.accuracy)

    def result(self, hook: str) -> ProbeResult:
        for r in self.results:
            if r.hook == hook:
                return r
        raise KeyError(f"{hook!r} was not probed; this report has {[r.hook for r in self.results]}")

    def compare(
        self,
        a: str | ProbeResult | SelectedLayer,
        b: str | ProbeResult | SelectedLayer | Sequence[ProbeResult | SelectedLayer],
        repeats: int = 2000,
        seed: int = 0,
    ) -> PairedDifference:
        """Balanced accuracy of probe ``a`` minus probe ``b`` (hooks of this report, or results of
        another ``train_probes`` call on the same examples, labels and groups: the input, the layer
        before), with its 95% group-bootstrap interval and a paired p-value. ``b`` may be a list of
        results (random-init models of several seeds): ``a`` is compared with their average. Either
        may be a ``report.selected`` (the hook chosen inside the training folds, fold by fold)."""
        first = self.result(a) if isinstance(a, str) else a
        others = [self.result(r) if isinstance(r, str) else r for r in (b if isinstance(b, (list, tuple)) else [b])]
        if first.predictions is None or any(r.predictions is None for r in others) or self.labels is None:
            raise ValueError("these results hold no out-of-fold predictions: compare results of train_probes")
        predictions_b = torch.stack([r.predictions for r in others])
        return paired_difference(
            first.predictions, predictions_b, self.labels, self.groups, len(self.classes), repeats, seed
        )


def _nuisance_columns(nuisance, n: int) -> torch.Tensor:
    """A ``[n, columns]`` float tensor from a tensor or a dict of named ones (each ``[n]`` or ``[n, k]``)."""
    parts = nuisance.values() if isinstance(nuisance, dict) else [nuisance]
    columns = []
    for part in parts:
        part = torch.as_tensor(part).float()
        part = part[:, None] if part.ndim == 1 else part.flatten(1)
        if len(part) != n:
            raise ValueError(f"nuisance columns have {len(part)} rows for {n} examples: one row per example is needed")
        if not torch.isfinite(part).all():
            raise ValueError("nuisance columns hold NaN or infinite values: fix or drop those examples")
        columns.append(part)
    if not columns:
        raise ValueError("nuisance is empty: pass a tensor or a dict of named columns")
    return torch.cat(columns, 1)


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
    nuisance: torch.Tensor | dict[str, torch.Tensor] | None = None,
    control_types: Sequence | None = None,
    correction: str = "holm",
    bootstrap: int = 2000,
) -> ProbeReport:
    """A linear probe per hook, cross-validated over ``folds`` group-disjoint folds, with its
    controls (see ``hooked_whisper.probe_fitting``): majority baseline; a permutation test
    (``permutations`` within-fold label shuffles, the strength chosen again on each), its p-value
    and the p-value adjusted over the hooks of this call (``correction``: ``"holm"``, the default,
    or ``"bh"``); a 95% group-bootstrap interval (``bootstrap`` resamples) of the balanced accuracy,
    and the AUROC with its interval for two classes; the best hook chosen inside the training
    folds with its held-out score (``report.selected``); with ``nuisance`` (a tensor, or a dict of
    named columns: duration, loudness, SNR, one-hot source) a probe on the nuisance columns alone
    and each hook's gain over it, with a paired interval and p-value; with ``control_types`` (an
    item type per example that recurs across groups) the control task and selectivity; with
    ``code_length=True`` the online code length (MDL probing). ``report.compare(a, b)`` gives the
    paired difference of any two probes on the same examples.

    ``groups`` (one id per example: speaker, video, source clip) keeps each group inside one
    fold, so the probe is scored on groups it never saw; folds are stratified by label.
    ``method`` is ``"ridge"`` (one-hot least squares, closed form: fast enough for thousands of
    permutations) or ``"logistic"`` (multinomial, L-BFGS; every permutation refits every fold at every
    strength, so keep ``permutations`` small or test with ridge). ``l2`` is a strength, or a grid
    searched on the other training folds (needs ``folds >= 3``). Deterministic for a ``seed``;
    runs on the GPU when there is one (or on ``device``).

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
    if correction not in ("holm", "bh"):
        raise ValueError(f"correction must be 'holm' or 'bh', not {correction!r}")
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
    y = y.to(device)
    n_classes, results = len(classes), []
    control_y = None
    if control_types is not None:
        control_y = control_labels(control_types, fold_of, y, torch.Generator().manual_seed(seed + 2))
    nuisance_cv = None
    if nuisance is not None:
        nuisance_cv = cross_validate(_nuisance_columns(nuisance, len(y)).to(device), y, n_classes, fold_of, method, l2)
    # Choosing a hook inside the training folds needs each probe scored on the other folds: free
    # with a strength grid (scored to choose it), a few more solves for ridge at one strength.
    grid_given = not isinstance(l2, (int, float)) and len(l2) > 1
    choose_hook = len(hooks) > 1 and folds >= 3 and (grid_given or method == "ridge")
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
        cv = cross_validate(x, y, n_classes, fold_of, method, l2, score_inner=choose_hook)
        predictions = cv.predictions[0]
        accuracy = float((predictions == y).float().mean())
        balanced = balanced_accuracy(predictions, y, n_classes)
        fold_accuracies = [float((predictions[fold_of == f] == y[fold_of == f]).float().mean()) for f in range(folds)]
        permuted = permutation_balanced_accuracies(
            x, y, groups, n_classes, fold_of, method, l2, permutations, seed + 1
        ).tolist()
        control = selectivity = None
        if control_y is not None:
            control_cv = cross_validate(x, control_y, n_classes, fold_of, method, l2)
            control = balanced_accuracy(control_cv.predictions[0], control_y, n_classes)
            selectivity = balanced - control
        majority = [
            float((y[fold_of == f] == torch.bincount(y[fold_of != f], minlength=n_classes).argmax()).float().mean())
            for f in range(folds)
        ]
        low, high = bootstrap_balanced_accuracy(predictions, y, n_classes, groups, bootstrap, seed)
        auroc = None
        if n_classes == 2:
            margin = cv.scores[0, :, 1] - cv.scores[0, :, 0]
            auroc = auroc_with_interval(margin, y == 1, groups, bootstrap, seed)
        gain = None
        if nuisance_cv is not None:
            gain = paired_difference(predictions, nuisance_cv.predictions[0], y, groups, n_classes, bootstrap, seed)
        median_l2 = float(cv.l2[0].median())
        code = online_code_length(x, y, groups, n_classes, seed) if code_length else None
        results.append(
            ProbeResult(
                hook=hook,
                layer=layer_of(hook),
                accuracy=accuracy,
                balanced_accuracy=balanced,
                accuracy_std=float(torch.tensor(fold_accuracies).std()),
                ci_low=low,
                ci_high=high,
                majority=sum(majority) / len(majority),
                shuffled=sum(permuted) / len(permuted) if permuted else float("nan"),
                p_value=(1 + sum(p >= balanced - 1e-9 for p in permuted)) / (1 + len(permuted)) if permuted else None,
                p_adjusted=None,
                control=control,
                selectivity=selectivity,
                l2=median_l2,
                auroc=auroc,
                gain=gain,
                code_bits=code[0] if code else None,
                uniform_bits=code[1] if code else None,
                predictions=predictions.cpu(),
                inner_accuracy=cv.inner_accuracy[0].cpu(),
            )
        )
    tested = [r for r in results if r.p_value is not None]
    for r, adjusted in zip(tested, adjust_p_values([r.p_value for r in tested], correction)):
        r.p_adjusted = adjusted
    if nuisance_cv is not None:
        for r, adjusted in zip(results, adjust_p_values([r.gain.p_value for r in results], correction)):
            r.gain_p_adjusted = adjusted
    report = ProbeReport(results, classes, len(y), method, folds, permutations, correction=correction)
    report.labels, report.groups = y.cpu(), groups
    if choose_hook:
        report.selected = _select_inside_folds(results, y.cpu(), fold_of.cpu(), n_classes, groups, bootstrap, seed)
    if nuisance_cv is not None:
        nuisance_predictions = nuisance_cv.predictions[0]
        report.nuisance_predictions = nuisance_predictions.cpu()
        report.nuisance = (
            balanced_accuracy(nuisance_predictions, y, n_classes),
            *bootstrap_balanced_accuracy(nuisance_predictions, y, n_classes, groups, bootstrap, seed),
        )
    return report


def _select_inside_folds(results, y, fold_of, n_classes, groups, bootstrap, seed) -> SelectedLayer:
    """For each fold, the hook most accurate on the other folds (at the strengths chosen there),
    scored on that fold."""
    folds = int(fold_of.max()) + 1
    chosen, predictions = [], torch.empty_like(y)
    for k in range(folds):
        best = max(results, key=lambda r: float(r.inner_accuracy[k]))  # first hook on ties
        chosen.append(best.hook)
        predictions[fold_of == k] = best.predictions[fold_of == k]
    low, high = bootstrap_balanced_accuracy(predictions, y, n_classes, groups, bootstrap, seed)
    return SelectedLayer(chosen, balanced_accuracy(predictions, y, n_classes), low, high, predictions)
