"""Linear probes over layers: extract pooled activations for a set of clips, then fit a probe per
hook with cross-validation, next to a majority-class baseline and a shuffled-label control."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from hooked_whisper.audio import SAMPLE_RATE, audio_clips
from hooked_whisper.hook_layout import HookLayout

if TYPE_CHECKING:
    from hooked_whisper.extraction import Manifest
    from hooked_whisper.model import HookedWhisper

ENCODER_POOLINGS = ("mean_audio", "mean", "none")
DECODER_POOLINGS = ("last", "prompt_end", "mean", "none")


class ActivationStore:
    """Pooled activations per hook, one row per clip, in memory. ``ActivationStore.open(folder)``
    reads a folder written by ``extract_activations(..., out_dir=folder)`` (or the
    ``hooked-whisper extract`` command) lazily instead."""

    def __init__(self, hooks: list[str]):
        self.hooks = hooks
        self._memory: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
        self.n = 0

    @classmethod
    def open(cls, folder: str | Path) -> ShardedActivationStore:
        return ShardedActivationStore(folder)

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

    def __init__(self, folder: str | Path):
        from hooked_whisper.extraction import INDEX

        self.folder = Path(folder)
        path = self.folder / INDEX
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the extraction into {self.folder} has not finished")
        self.index = json.loads(path.read_text())
        ok = [e for e in self.index["rows"] if "error" not in e]
        self.hooks = self.index["hooks"]
        self.n = len(ok)
        self.labels = [e["label"] for e in ok]
        self.groups = [e["group"] for e in ok]
        self.clips = [e["clip"] for e in ok]
        self.failed = {e["clip"]: e["error"] for e in self.index["rows"] if "error" in e}

    def _read(self, hook: str) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
        from safetensors import safe_open

        from hooked_whisper.extraction import ROWS_KEY

        out = []
        for name in self.index["shards"]:
            with safe_open(str(self.folder / name), "pt") as f:
                keys = [k for k in f.keys() if k == hook or k.startswith(f"{hook}/")]
                out.append((f.get_tensor(ROWS_KEY).tolist(), {k: f.get_tensor(k) for k in keys}))
        return out

    def rows(self, hook: str) -> list[torch.Tensor]:
        self._check(hook)
        rows = []
        for held, tensors in self._read(hook):
            rows += list(tensors[hook]) if hook in tensors else [tensors[f"{hook}/{r}"] for r in held]
        return rows

    def __getitem__(self, hook: str) -> torch.Tensor:
        self._check(hook)
        parts = [tensors[hook] for _, tensors in self._read(hook) if hook in tensors]
        return torch.cat(parts) if parts else torch.stack(self.rows(hook))


def extract_activations(
    model: HookedWhisper,
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
    ``hooked_whisper.extraction``). Without it everything is kept in memory.
    """
    from hooked_whisper.extraction import Manifest, extract_to_folder

    manifest = clips if isinstance(clips, Manifest) else Manifest(list(clips), [None] * len(clips), [None] * len(clips))
    if len(manifest.clips) == 0:
        raise ValueError("no clips given: the dataset is empty")
    hooks = list(hooks)
    for name in hooks:
        model.check_hook_name(name)
    if pooling not in ENCODER_POOLINGS:
        raise ValueError(f"encoder pooling must be one of {ENCODER_POOLINGS}, not {pooling!r}")
    if decoder_pooling not in DECODER_POOLINGS and not isinstance(decoder_pooling, int):
        raise ValueError(f"decoder pooling must be one of {DECODER_POOLINGS} or a position, not {decoder_pooling!r}")
    pooled_batch = partial(_pooled_batch, model, hooks, pooling, decoder_pooling)
    if out_dir is not None:
        settings = {"model": str(getattr(model, "name_or_path", type(model).__name__))}
        settings |= {"pooling": pooling, "decoder_pooling": decoder_pooling}
        extract_to_folder(
            manifest, out_dir, hooks, pooled_batch, settings, batch_size, shard_size, dtype, sample_rate,
            max_seconds=30.0, progress=progress,
        )  # fmt: skip
        return ActivationStore.open(out_dir)
    store = ActivationStore(hooks)
    starts = range(0, len(manifest.clips), batch_size)
    for start in tqdm(starts, desc="extracting activations", disable=not progress, unit="batch"):
        waveforms = audio_clips(list(manifest.clips[start : start + batch_size]), sample_rate)
        store.append({k: [r.detach().to("cpu", dtype) for r in v] for k, v in pooled_batch(waveforms).items()})
    return store


def _pooled_batch(
    model: HookedWhisper, hooks: list[str], pooling, decoder_pooling, waveforms: list[torch.Tensor]
) -> dict[str, list[torch.Tensor]]:
    """One pooled activation per clip and hook for a batch of 16 kHz waveforms."""
    layouts = {h: model.hook_layout(h) for h in hooks}
    needs_decoder = any(layout.unit == "token" for layout in layouts.values())
    seconds = [w.shape[0] / SAMPLE_RATE for w in waveforms]
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
            batch[hook] = [_pool_audio(acts[i], layout, seconds[i], pooling) for i in range(len(waveforms))]
        else:
            batch[hook] = [_pool_decoder(model, acts[i], tokens[i], decoder_pooling) for i in range(len(waveforms))]
    return batch


def _store(cache: dict, x: torch.Tensor, hook) -> None:
    cache[hook.name] = x


def _pool_audio(x: torch.Tensor, layout: HookLayout, seconds: float, pooling: str | int) -> torch.Tensor:
    """Pool one clip's activation (batch axis removed) over its audio positions."""
    if layout.key_unit is not None:
        raise ValueError("attention patterns and scores have two position axes; pool hook_z or hook_attn_out instead")
    x = x.movedim(layout.pos_axis - 1, 0)  # positions first, whatever the hook's layout
    n_frames = min(math.ceil(seconds * layout.positions_per_second), x.shape[0])  # type: ignore[operator]
    if pooling == "mean_audio":
        return x[:n_frames].mean(0)
    if pooling == "mean":
        return x.mean(0)
    return x[:n_frames]


def _pool_decoder(model: HookedWhisper, x: torch.Tensor, tokens: torch.Tensor, pooling: str | int) -> torch.Tensor:
    last = model.real_length(tokens) - 1
    if pooling == "last":
        return x[last]
    if pooling == "prompt_end":
        return x[model.prompt_length(tokens) - 1]
    if pooling == "mean":
        return x[: last + 1].mean(0)
    if pooling == "none":
        return x[: last + 1]
    if not -x.shape[0] <= int(pooling) < x.shape[0]:
        raise ValueError(f"decoder position {pooling} is outside this clip's {x.shape[0]} positions")
    return x[int(pooling)]


@dataclass
class ProbeResult:
    hook: str
    layer: int | None
    accuracy: float  # mean over folds
    accuracy_std: float
    majority: float  # always predicting the training folds' most common class
    shuffled: float  # the same probe trained on shuffled labels: chance for this dataset


@dataclass
class ProbeReport:
    results: list[ProbeResult]
    classes: list
    n: int
    method: str
    folds: int

    def table(self) -> str:
        lines = ["| hook | accuracy | majority baseline | shuffled labels |", "|---|---|---|---|"]
        lines += [
            f"| {r.hook} | {r.accuracy:.3f} ± {r.accuracy_std:.3f} | {r.majority:.3f} | {r.shuffled:.3f} |"
            for r in self.results
        ]
        return "\n".join(lines)

    def best(self) -> ProbeResult:
        return max(self.results, key=lambda r: r.accuracy)


def _fit_predict(x_train, y_train, x_test, n_classes: int, method: str, l2: float) -> torch.Tensor:
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    if method == "ridge":  # one-hot least squares, closed form
        targets = torch.nn.functional.one_hot(y_train, n_classes).float()
        x1 = torch.cat([x_train, torch.ones(len(x_train), 1, device=x_train.device)], 1)
        eye = torch.eye(x1.shape[1], device=x1.device) * l2
        w = torch.linalg.solve(x1.T @ x1 + eye, x1.T @ targets)
        return (torch.cat([x_test, torch.ones(len(x_test), 1, device=x_test.device)], 1) @ w).argmax(1)
    w = torch.zeros(x_train.shape[1], n_classes, device=x_train.device, requires_grad=True)
    b = torch.zeros(n_classes, device=x_train.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x_train @ w + b, y_train) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (x_test @ w + b).argmax(1)


def fold_assignment(labels: torch.Tensor, groups: Sequence | None, folds: int, seed: int) -> torch.Tensor:
    """The test fold of every example. A group (a speaker, a video, the clean and noisy
    versions of one clip) never spans two folds; groups are dealt to folds class by class (by
    each group's most common label), so every fold holds every class where the groups allow.

    Raises if there are fewer groups than folds, or if some training split would lack a class
    (its probe could not learn that class, and the fold would score nothing meaningful)."""
    n = len(labels)
    group_ids = list(range(n)) if groups is None else list(groups)
    if len(group_ids) != n:
        raise ValueError(f"{len(group_ids)} groups for {n} examples: one group per example is needed")
    members = _group_members(group_ids)
    if len(members) < folds:
        raise ValueError(f"{len(members)} groups cannot fill {folds} folds: use folds <= {len(members)}")
    by_class: dict[int, list] = {}
    for g, idx in members.items():
        majority = int(torch.bincount(labels[idx]).argmax())
        by_class.setdefault(majority, []).append(g)
    generator = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(n, dtype=torch.long)
    dealt = 0
    for c in sorted(by_class):
        gs = by_class[c]
        for k in torch.randperm(len(gs), generator=generator).tolist():
            fold_of[members[gs[k]]] = dealt % folds
            dealt += 1
    n_classes = int(labels.max()) + 1
    for fold in range(folds):
        train_classes = set(labels[fold_of != fold].tolist())
        if len(train_classes) < n_classes:
            missing = sorted(set(range(n_classes)) - train_classes)
            raise ValueError(
                f"fold {fold}'s training split has no example of class index {missing}: too few groups of "
                "that class for this many folds; use fewer folds or more data"
            )
    return fold_of


def _cross_validate(x, y, n_classes, fold_of, method, l2) -> tuple[list[float], list[float]]:
    accs, majority = [], []
    for fold in range(int(fold_of.max()) + 1):
        test = fold_of == fold
        pred = _fit_predict(x[~test], y[~test], x[test], n_classes, method, l2)
        accs.append(float((pred == y[test]).float().mean()))
        common = torch.bincount(y[~test], minlength=n_classes).argmax()
        majority.append(float((y[test] == common).float().mean()))
    return accs, majority


def train_probes(
    activations: ActivationStore | dict[str, torch.Tensor],
    labels: Sequence,
    hooks: Sequence[str] | None = None,
    groups: Sequence | None = None,
    method: str = "logistic",
    folds: int = 5,
    seed: int = 0,
    l2: float = 1e-3,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ProbeReport:
    """A linear probe per hook, ``folds``-fold cross-validated (deterministic for a ``seed``).

    ``groups`` (one id per example: speaker, video, source clip) keeps each group inside one
    fold, so the probe is scored on groups it never saw; folds are stratified by label (see
    ``fold_assignment``).

    ``method`` is ``"logistic"`` (multinomial, L-BFGS, L2 penalty ``l2``) or ``"ridge"``
    (one-hot least squares). Features are standardised with the training fold's statistics.
    Runs on the GPU when there is one (or on ``device``).
    """
    hooks = list(
        hooks if hooks is not None else activations.hooks if isinstance(activations, ActivationStore) else activations
    )
    if not hooks:
        raise ValueError("no hooks to probe")
    if method not in ("logistic", "ridge"):
        raise ValueError(f"method must be 'logistic' or 'ridge', not {method!r}")
    classes = sorted(set(labels), key=str)
    if len(classes) < 2:
        raise ValueError(f"probing needs at least two classes; the labels hold only {classes}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    y = torch.tensor([classes.index(label) for label in labels])
    fold_of = shuffled_y = None
    results = []
    for hook in tqdm(hooks, desc="training probes", disable=not progress, unit="hook"):
        x = activations[hook].float().to(device)
        if x.shape[0] != len(y):
            raise ValueError(f"{len(y)} labels for {x.shape[0]} examples at {hook}: one label per clip is needed")
        x = x.flatten(1)
        if fold_of is None:
            fold_of = fold_assignment(y, groups, folds, seed).to(device)
            # The shuffled-label control moves labels between groups, each group's labels together.
            shuffled_y = y[_group_permutation(groups, len(y), seed + 1)].to(device)
            y = y.to(device)
        accs, majority = _cross_validate(x, y, len(classes), fold_of, method, l2)
        shuffled, _ = _cross_validate(x, shuffled_y, len(classes), fold_of, method, l2)
        match = re.search(r"_blocks\.(\d+)\.", hook)
        results.append(
            ProbeResult(
                hook,
                int(match.group(1)) if match else None,
                sum(accs) / len(accs),
                float(torch.tensor(accs).std()),
                sum(majority) / len(majority),
                sum(shuffled) / len(shuffled),
            )
        )
    return ProbeReport(results, classes, len(y), method, folds)


def _group_permutation(groups: Sequence | None, n: int, seed: int) -> torch.Tensor:
    """A permutation of ``n`` examples that moves whole groups onto each other's places when
    groups have equal sizes, and shuffles examples freely when there are no groups."""
    generator = torch.Generator().manual_seed(seed)
    if groups is None:
        return torch.randperm(n, generator=generator)
    members = _group_members(groups)
    by_size: dict[int, list[list[int]]] = {}
    for idx in members.values():
        by_size.setdefault(len(idx), []).append(idx)
    order = torch.arange(n)
    for same_size in by_size.values():
        perm = torch.randperm(len(same_size), generator=generator).tolist()
        for dst, src in zip(same_size, (same_size[k] for k in perm)):
            order[dst] = torch.tensor(src)
    return order


def _group_members(groups: Sequence) -> dict:
    """Each group's example indices, in order of first appearance."""
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    return members
