"""The statistics behind ``train_probes``: linear probes, group-disjoint stratified folds, probe
strength chosen inside the training folds, and the controls a probe result is read against.

- Folds never split a group (a speaker, a video, the clean and noisy copies of one clip).
- The L2 strength is chosen by cross-validation on each training split alone (nested).
- Permutation test: labels permuted between groups (a group's clips keep one label; a group that
  mixes labels, such as a clip and its noisy copy, is shuffled within itself), the whole
  cross-validation rerun; p = (1 + #{permuted >= observed}) / (1 + repeats), on balanced accuracy
  (mean recall per class), whose chance level does not move with the class balance that a
  permutation of unequal groups changes.
- Control task (Hewitt and Liang, 2019): every group gets a random label drawn from the label
  distribution; selectivity = balanced accuracy - control balanced accuracy. A probe that
  memorises groups scores well on the control task when groups leak across folds, and at chance
  when they do not.
- Online (prequential) code length (Voita and Titov, 2020): the bits needed to transmit the
  labels block by block, each block coded by a probe trained on the blocks before it; shorter
  than the uniform code when the features hold the label, and it still ranks layers whose
  accuracies have saturated.

``"ridge"`` (one-hot least squares) is closed-form: every fold, strength and permutation reuses
one solve, so thousands of permutations cost seconds. ``"logistic"`` refits each time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def _standardise(x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    ones = torch.ones
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return (
        torch.cat([x_train, ones(len(x_train), 1, device=x_train.device)], 1),
        torch.cat([x_test, ones(len(x_test), 1, device=x_test.device)], 1),
    )


def ridge_operator(x_train: torch.Tensor, x_test: torch.Tensor, l2: float) -> torch.Tensor:
    """``P [n_test, n_train]`` such that the ridge probe's test scores are ``P @ onehot(y_train)``
    (scaled by the number of training examples, so that ``l2`` means the same at any size)."""
    a, b = _standardise(x_train, x_test)
    gram = a.T @ a + l2 * len(a) * torch.eye(a.shape[1], device=a.device, dtype=a.dtype)
    return b @ torch.linalg.solve(gram, a.T)


def logistic_scores(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, n_classes: int, l2: float
) -> torch.Tensor:
    """Log-probabilities ``[n_test, n_classes]`` of a multinomial logistic probe (L-BFGS)."""
    a, b = _standardise(x_train, x_test)
    w = torch.zeros(a.shape[1], n_classes, device=a.device, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w, y_train) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (b @ w).log_softmax(-1)


def predict(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, n_classes: int, method: str, l2: float
) -> torch.Tensor:
    if method == "ridge":
        return (ridge_operator(x_train, x_test, l2) @ _one_hot(y_train, n_classes)).argmax(1)
    return logistic_scores(x_train, y_train, x_test, n_classes, l2).argmax(1)


def _one_hot(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, n_classes).float()


# ------------------------------------------------------------------------------------ folds
def group_members(groups: Sequence) -> dict:
    """Each group's example indices, in order of first appearance."""
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    return members


def fold_assignment(labels: torch.Tensor, groups: Sequence | None, folds: int, seed: int) -> torch.Tensor:
    """The test fold of every example. A group never spans two folds; groups are dealt to folds
    class by class (by each group's most common label), so every fold holds every class where
    the groups allow.

    Raises if there are fewer groups than folds, or if some training split would lack a class
    (its probe could not learn that class, and the fold would score nothing meaningful)."""
    n = len(labels)
    group_ids = list(range(n)) if groups is None else list(groups)
    if len(group_ids) != n:
        raise ValueError(f"{len(group_ids)} groups for {n} examples: one group per example is needed")
    members = group_members(group_ids)
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


def _split_groups(y: torch.Tensor, groups: Sequence | None) -> tuple[list[list[int]], list[list[int]]]:
    """(groups whose examples share one label, groups that mix labels), as index lists."""
    members = group_members(list(range(len(y))) if groups is None else groups).values()
    pure = [idx for idx in members if len(set(y[idx].tolist())) == 1]
    mixed = [idx for idx in members if len(set(y[idx].tolist())) > 1]
    return pure, mixed


def permuted_labels(y: torch.Tensor, groups: Sequence | None, generator: torch.Generator) -> torch.Tensor:
    """Labels shuffled within what the groups allow: a group whose clips share a label takes
    another such group's label (for all its clips); a group that mixes labels (a clip and its
    noisy copy) has its labels shuffled among its own clips."""
    pure, mixed = _split_groups(y, groups)
    out = y.clone()
    labels = [int(y[idx[0]]) for idx in pure]
    for idx, k in zip(pure, torch.randperm(len(pure), generator=generator).tolist()):
        out[idx] = labels[k]
    for idx in mixed:
        out[idx] = y[idx][torch.randperm(len(idx), generator=generator)]
    return out


def control_labels(y: torch.Tensor, groups: Sequence | None, generator: torch.Generator) -> torch.Tensor:
    """The control task: a random label per group (per clip inside groups that mix labels),
    drawn from the examples' label distribution. Only memorising groups can predict it."""
    pure, mixed = _split_groups(y, groups)
    out = torch.empty_like(y)
    for idx in pure:
        out[idx] = y[int(torch.randint(len(y), (1,), generator=generator))]
    for idx in mixed:
        out[idx] = y[torch.randint(len(y), (len(idx),), generator=generator)]
    return out


def balanced_accuracy(predictions: torch.Tensor, y: torch.Tensor, n_classes: int) -> float:
    """Mean recall over the classes present: chance is 1 / classes whatever the class balance,
    so it is the statistic the permutation test and the control task compare."""
    recalls = [(predictions[y == c] == c).float().mean() for c in range(n_classes) if (y == c).any()]
    return float(torch.stack(recalls).mean())


# ------------------------------------------------------------------------------------ cross-validation
@dataclass
class CrossValidation:
    """Out-of-fold predictions of one probe, with the strength chosen per fold."""

    predictions: torch.Tensor  # [n], each example predicted by the probe that never saw its fold
    fold_accuracies: list[float]
    l2: list[float]  # chosen per fold


def _choose_l2(x, y, groups, n_classes, method, grid, seed) -> float:
    """The grid strength with the best accuracy in a group-disjoint 3-fold split of ``x``."""
    try:
        inner = fold_assignment(y, groups, 3, seed)
    except ValueError:  # too few groups inside this training split to choose: take the middle
        return grid[len(grid) // 2]
    scores = []
    for l2 in grid:
        correct = 0
        for fold in range(3):
            test = inner == fold
            correct += int((predict(x[~test], y[~test], x[test], n_classes, method, l2) == y[test]).sum())
        scores.append(correct)
    return grid[max(range(len(grid)), key=lambda i: (scores[i], -abs(i - len(grid) // 2)))]


def cross_validate(x, y, groups, n_classes, fold_of, method, l2: float | Sequence[float], seed) -> CrossValidation:
    """Out-of-fold predictions; a sequence ``l2`` is a grid searched inside each training split."""
    predictions = torch.empty_like(y)
    accuracies, chosen = [], []
    for fold in range(int(fold_of.max()) + 1):
        test = fold_of == fold
        train_groups = None if groups is None else [g for g, t in zip(groups, test.tolist()) if not t]
        strength = l2 if isinstance(l2, (int, float)) else _choose_l2(
            x[~test], y[~test], train_groups, n_classes, method, tuple(l2), seed
        )  # fmt: skip
        predictions[test] = predict(x[~test], y[~test], x[test], n_classes, method, strength)
        accuracies.append(float((predictions[test] == y[test]).float().mean()))
        chosen.append(float(strength))
    return CrossValidation(predictions, accuracies, chosen)


def permutation_accuracies(x, y, groups, n_classes, fold_of, method, l2s, repeats, seed) -> list[float]:
    """Cross-validated balanced accuracy on ``repeats`` label permutations (``permuted_labels``),
    each fold at the strength chosen for the real labels. Ridge reuses one solve per fold."""
    generator = torch.Generator().manual_seed(seed)
    perms = [permuted_labels(y.cpu(), groups, generator).to(y.device) for _ in range(repeats)]
    predictions = [torch.empty_like(y) for _ in perms]
    for fold in range(int(fold_of.max()) + 1):
        test = fold_of == fold
        if method == "ridge":
            operator = ridge_operator(x[~test], x[test], l2s[fold])
            for p, pred in zip(perms, predictions):
                pred[test] = (operator @ _one_hot(p[~test], n_classes)).argmax(1)
        else:
            for p, pred in zip(perms, predictions):
                pred[test] = predict(x[~test], p[~test], x[test], n_classes, method, l2s[fold])
    return [balanced_accuracy(pred, p, n_classes) for pred, p in zip(predictions, perms)]


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of a proportion (Wilson score), over the out-of-fold predictions."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def online_code_length(x, y, groups, n_classes, l2: float, seed: int) -> tuple[float, float]:
    """(prequential code length, uniform code length), in bits. Groups are shuffled and kept
    whole; the first 1/16 of the examples is sent with the uniform code, then each block (to
    1/8, 1/4, 1/2, all) is coded by a logistic probe trained on everything before it."""
    generator = torch.Generator().manual_seed(seed)
    members = list(group_members(list(range(len(y))) if groups is None else groups).values())
    order = [i for k in torch.randperm(len(members), generator=generator).tolist() for i in members[k]]
    order_t = torch.tensor(order, device=y.device)
    x, y = x[order_t], y[order_t]
    n = len(y)
    ends = sorted({max(2, round(n * f)) for f in (1 / 16, 1 / 8, 1 / 4, 1 / 2)} | {n})
    uniform = n * math.log2(n_classes)
    bits = ends[0] * math.log2(n_classes)
    for start, end in zip(ends, ends[1:]):
        log_probs = logistic_scores(x[:start], y[:start], x[start:end], n_classes, l2)
        bits += float(-log_probs.gather(1, y[start:end, None]).sum()) / math.log(2)
    return bits, uniform
