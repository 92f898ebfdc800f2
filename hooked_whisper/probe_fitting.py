"""The statistics behind ``train_probes``: linear probes, group-disjoint stratified folds, probe
strength chosen inside the training folds, and the controls a probe result is read against.

- Folds never split a group (a speaker, a video, the clean and noisy copies of one clip) and are
  stratified by label.
- Nested strength: for the probe that predicts fold k, each L2 strength of the grid is scored on
  the other folds (each in turn held out of a fit on the rest), and the best one is refitted on
  all folds but k. Fold k is never seen while choosing. With ``folds=2`` there is no other fold
  to score on, so a grid needs ``folds >= 3``.
- Permutation test: labels permuted between the groups of each fold (a group keeps one label for
  all its clips; a group that mixes labels is shuffled within itself), so every permuted fold has
  as many groups of each class as the real one (and its class balance in examples when a fold's
  groups are of one size: a large group, a music track among single-clip videos, carries its size
  to another label), and the whole nested procedure, strength choice included,
  is rerun on every permutation. p = (1 + #{permuted >= observed}) / (1 + permutations), on
  balanced accuracy. Features that carry nothing (constant, noise) give p near uniform.
- Control task (Hewitt and Liang, 2019), only with item types that recur across folds (the word,
  the sentence read, the sound event): every type gets a random label, shared by all its examples
  in training and test folds. A probe that memorises the types scores above chance on it, so a
  high control score says the probe is expressive enough to learn an arbitrary labelling of these
  items; selectivity = balanced accuracy - control balanced accuracy.
- Intervals: a bootstrap over groups (whole groups resampled, 2000 times) of balanced accuracy,
  and of AUROC for two classes. Paired differences of two probes scored on the same examples
  (a layer against the input, a random-init model, the layer before, a nuisance-only probe) are
  resampled together, with a p-value from flipping which probe is which, group by group.
- Online (prequential) code length (Voita and Titov, 2020): the bits needed to send the labels
  block by block (block ends at 0.1%, 0.2%, 0.4%, ... 100% of the examples), each block coded by
  a logistic probe trained on the blocks before it, at the strength that best coded the previous
  block (chosen on data already sent, from a fixed grid, not the probe's ``l2``); averaged over
  orderings of the groups.

``"ridge"`` (one-hot least squares) is closed-form: one SVD per training split gives the probe at
every strength of the grid and for every permutation of the labels. ``"logistic"`` refits each
time (slow with many permutations).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
MDL_L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
MDL_FRACTIONS = tuple(0.001 * 2**k for k in range(10)) + (1.0,)  # 0.1% ... 51.2%, 100%: ten coded blocks


def _standardise(x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = x_train.mean(0), x_train.std(0, correction=0).clamp(min=1e-6)
    return (x_train - mean) / std, (x_test - mean) / std


def ridge_operators(x_train: torch.Tensor, x_test: torch.Tensor, grid: Sequence[float]) -> torch.Tensor:
    """``P [strengths, n_test, n_train]``: the ridge probe's test scores at each strength are
    ``P[g] @ onehot(y_train)``, whatever the labels (an unpenalised intercept; the L2 strength is
    scaled by the number of training examples, so it means the same at any size). One SVD."""
    a, b = _standardise(x_train, x_test)
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    strengths = torch.tensor(list(grid), dtype=a.dtype, device=a.device)
    shrink = s / (s**2 + strengths[:, None] * len(a))  # [strengths, rank]
    operators = ((b @ vh.T)[None] * shrink[:, None, :]) @ u.T[None]
    return operators + 1.0 / len(a)  # the intercept: the training mean of each class column


def ridge_operator(x_train: torch.Tensor, x_test: torch.Tensor, l2: float) -> torch.Tensor:
    """``ridge_operators`` at one strength: ``P [n_test, n_train]``, test predictions ``P @ y_train``
    for any target (class columns, or a continuous one)."""
    return ridge_operators(x_train, x_test, [l2])[0]


def r_squared_with_interval(
    predicted: torch.Tensor, target: torch.Tensor, groups: Sequence | None, repeats: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(R^2, 95% group-bootstrap interval) of out-of-fold ``predicted`` values of a continuous
    ``target``: 1 - residual / total sum of squares, both weighted by the resampled groups."""
    predicted, target = predicted.double().cpu(), target.double().cpu()

    def r2(weights: torch.Tensor) -> torch.Tensor:
        mean = (weights @ target) / weights.sum(1)
        total = (weights * (target[None] - mean[:, None]) ** 2).sum(1)
        return 1 - (weights @ (target - predicted) ** 2) / total.clamp(min=1e-300)

    value = float(r2(torch.ones(1, len(target), dtype=torch.float64))[0])
    return (value, *_percentiles(r2(group_weights(groups, len(target), repeats, seed).double())))


def logistic_scores(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, n_classes: int, l2: float
) -> torch.Tensor:
    """Log-probabilities ``[n_test, n_classes]`` of a multinomial logistic probe (L-BFGS)."""
    a, b = _standardise(x_train, x_test)
    a = torch.cat([a, torch.ones(len(a), 1, device=a.device)], 1)
    b = torch.cat([b, torch.ones(len(b), 1, device=b.device)], 1)
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


def permuted_labels(
    y: torch.Tensor, groups: Sequence | None, fold_of: torch.Tensor, generator: torch.Generator, count: int = 1
) -> torch.Tensor:
    """``[count, n]`` label sets shuffled within each fold, as far as the groups allow: a group
    whose clips share a label takes the label of another such group of its fold (for all its
    clips); a group that mixes labels (a clip and its noisy copy) has its labels shuffled among
    its own clips. Each fold keeps its number of groups per class, and so its class balance in
    examples when its groups are of one size (unequal groups carry their sizes to their new labels)."""
    y_cpu, fold_cpu = y.cpu(), fold_of.cpu()
    out = y_cpu.repeat(count, 1)
    members = list(group_members(list(range(len(y))) if groups is None else groups).values())
    pure = [idx for idx in members if len(set(y_cpu[idx].tolist())) == 1]
    mixed = [idx for idx in members if len(set(y_cpu[idx].tolist())) > 1]
    if pure:
        # Sorting "fold + uniform(0, 1)" keys orders the groups fold by fold, at random inside each fold.
        group_fold = torch.tensor([int(fold_cpu[idx[0]]) for idx in pure])
        group_label = torch.tensor([int(y_cpu[idx[0]]) for idx in pure])
        by_fold = group_fold.argsort(stable=True)
        shuffled = (group_fold[None] + torch.rand(count, len(pure), generator=generator)).argsort(1)
        new_label = torch.empty(count, len(pure), dtype=y_cpu.dtype)
        new_label[:, by_fold] = group_label[shuffled]
        examples = torch.tensor([i for idx in pure for i in idx])
        of_group = torch.tensor([g for g, idx in enumerate(pure) for _ in idx])
        out[:, examples] = new_label[:, of_group]
    if mixed:
        examples = torch.tensor([i for idx in mixed for i in idx])  # group by group
        of_group = torch.tensor([g for g, idx in enumerate(mixed) for _ in idx], dtype=torch.float)
        order = (of_group[None] + torch.rand(count, len(examples), generator=generator)).argsort(1)
        out[:, examples] = y_cpu[examples][order]
    return out.to(y.device)


def control_labels(types: Sequence, fold_of: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The control task: a random label per item type (drawn from the examples' label distribution),
    the same for every example of the type in every fold. Raises when no type occurs in two
    folds: such a control is at chance whatever the probe, so it could not fail."""
    if len(types) != len(y):
        raise ValueError(f"{len(types)} control types for {len(y)} examples: one item type per example is needed")
    members = group_members(types)
    folds_of_type = [set(fold_of[idx].tolist()) for idx in members.values()]
    if not any(len(f) > 1 for f in folds_of_type):
        raise ValueError(
            "no control type occurs in more than one fold, so a control task on them is at chance by construction; "
            "pass item types that recur across groups (the word or sentence read, the sound event), or leave "
            "control_types out"
        )
    for _ in range(100):  # the examples' label distribution; redrawn until it holds two classes
        drawn = y.cpu()[torch.randint(len(y), (len(members),), generator=generator)]
        if len(set(drawn.tolist())) > 1:
            break
    else:
        raise ValueError(f"{len(members)} control types cannot carry two classes: more item types are needed")
    out = torch.empty_like(y.cpu())
    for idx, label in zip(members.values(), drawn.tolist()):
        out[idx] = label
    return out.to(y.device)


def balanced_accuracies(predictions: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Mean recall over the classes present, per row of ``[runs, n]`` predictions and labels:
    chance is 1 / classes whatever the class balance."""
    recalls, present = [], []
    for c in range(n_classes):
        count = (y == c).sum(-1)
        recalls.append(((predictions == c) & (y == c)).sum(-1) / count.clamp(min=1))
        present.append(count > 0)
    recalls_t, present_t = torch.stack(recalls, -1).float(), torch.stack(present, -1).float()
    return (recalls_t * present_t).sum(-1) / present_t.sum(-1)


def balanced_accuracy(predictions: torch.Tensor, y: torch.Tensor, n_classes: int) -> float:
    return float(balanced_accuracies(predictions, y, n_classes))


# ------------------------------------------------------------------------------------ cross-validation
@dataclass
class CrossValidation:
    """Out-of-fold predictions of one probe per label set (a row per set: the real labels, or each
    permutation), with the strength chosen per fold on the other folds."""

    predictions: torch.Tensor  # [runs, n]: each example predicted by the probe that never saw its fold
    scores: torch.Tensor  # [runs, n, classes]: the probe's class scores (for AUROC)
    l2: torch.Tensor  # [runs, folds]: the strength chosen for each fold
    inner_accuracy: torch.Tensor  # [runs, folds]: the chosen strength's accuracy on the other folds


def _fold_scores(x, labels, n_classes, train, test, method, grid) -> torch.Tensor:
    """Class scores ``[strengths, runs, n_test, classes]`` on ``test`` of probes fitted on ``train``."""
    if method == "ridge":
        # ridge_operators applied without forming them: [strengths, n_test, n_train] would not fit
        # in memory for large sets; projecting the labels onto the SVD basis first is small.
        a, b = _standardise(x[train], x[test])
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        strengths = torch.tensor(list(grid), dtype=a.dtype, device=a.device)
        shrink = s / (s**2 + strengths[:, None] * len(a))  # [strengths, rank]
        targets = _one_hot(labels[:, train], n_classes)  # [runs, n_train, classes]
        projected = torch.einsum("tq,rtc->rqc", u, targets)
        scores = torch.einsum("sq,gq,rqc->grsc", b @ vh.T, shrink, projected)
        return scores + targets.mean(1)[None, :, None, :]  # the intercept: each class's training share
    return torch.stack(
        [torch.stack([logistic_scores(x[train], row[train], x[test], n_classes, l2) for row in labels]) for l2 in grid]
    )


def cross_validate(
    x, labels, n_classes, fold_of, method, l2: float | Sequence[float], score_inner: bool = False
) -> CrossValidation:
    """Out-of-fold predictions for ``labels`` (``[n]`` or ``[runs, n]``). A sequence ``l2`` is a
    grid: each fold's strength is the one most accurate on the other folds (ties: the middle of
    the grid). ``score_inner`` scores a single strength on the other folds too (``inner_accuracy``,
    for choosing a hook inside the training folds)."""
    labels = labels[None] if labels.ndim == 1 else labels
    grid = [float(l2)] if isinstance(l2, (int, float)) else [float(v) for v in l2]
    folds = int(fold_of.max()) + 1
    if len(grid) > 1 and folds < 3:
        raise ValueError(
            f"choosing l2 from a grid inside the training folds needs folds >= 3 (the other training folds score "
            f"each strength); got folds={folds}: pass one l2 strength or more folds"
        )
    runs, n = labels.shape
    middle = torch.tensor([abs(i - len(grid) // 2) for i in range(len(grid))], device=x.device)
    predictions = torch.empty_like(labels)
    scores = torch.empty(runs, n, n_classes, device=x.device)
    chosen = torch.empty(runs, folds, device=x.device, dtype=torch.long)
    inner = torch.zeros(runs, folds, device=x.device)
    arange = torch.arange(runs, device=x.device)
    for k in range(folds):
        if len(grid) > 1 or (score_inner and folds >= 3):
            correct = torch.zeros(len(grid), runs, device=x.device)
            for j in range(folds):
                if j != k:
                    train, test = (fold_of != k) & (fold_of != j), fold_of == j
                    inner_scores = _fold_scores(x, labels, n_classes, train, test, method, grid)
                    correct += (inner_scores.argmax(-1) == labels[:, test]).sum(-1)
            # best accuracy, ties broken towards the middle of the grid
            best = (correct * (len(grid) + 1) - middle[:, None]).argmax(0)
            inner[:, k] = correct[best, arange] / int((fold_of != k).sum())
        else:
            best = torch.zeros(runs, dtype=torch.long, device=x.device)
        test = fold_of == k
        fold_scores = _fold_scores(x, labels, n_classes, fold_of != k, test, method, grid)[best, arange]
        scores[:, test] = fold_scores.float()
        predictions[:, test] = fold_scores.argmax(-1)
        chosen[:, k] = best
    strengths = torch.tensor(grid, device=x.device)[chosen]
    return CrossValidation(predictions, scores, strengths, inner)


def permutation_balanced_accuracies(
    x, y, groups, n_classes, fold_of, method, l2, permutations: int, seed: int, chunk: int = 200
) -> torch.Tensor:
    """Balanced accuracy of the whole nested procedure on ``permutations`` within-fold label
    permutations (``permuted_labels``); the permutations depend on ``seed`` alone, not on ``x``."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, permutations, chunk):
        rows = permuted_labels(y, groups, fold_of, generator, min(chunk, permutations - start))
        cv = cross_validate(x, rows, n_classes, fold_of, method, l2)
        out.append(balanced_accuracies(cv.predictions, rows, n_classes))
    return torch.cat(out) if out else torch.empty(0)


# ------------------------------------------------------------------------------------ intervals over groups
def group_weights(groups: Sequence | None, n: int, repeats: int, seed: int) -> torch.Tensor:
    """``[repeats, n]``: how many times each example is drawn when whole groups are resampled with
    replacement (examples of one group are not independent: resampling them one by one would
    give too narrow an interval)."""
    members = list(group_members(list(range(n)) if groups is None else groups).values())
    index = torch.empty(n, dtype=torch.long)
    for g, idx in enumerate(members):
        index[idx] = g
    pick = torch.randint(len(members), (repeats, len(members)), generator=torch.Generator().manual_seed(seed))
    counts = torch.zeros(repeats, len(members)).scatter_add_(1, pick, torch.ones(repeats, len(members)))
    return counts[:, index]


def weighted_balanced_accuracy(hits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, n_classes: int):
    """Balanced accuracy of 0/1 ``hits`` ``[n]`` under example weights ``[repeats, n]``."""
    recalls, present = [], []
    for c in range(n_classes):
        in_class = (y == c).float()
        total = weights @ in_class
        recalls.append((weights @ (in_class * hits)) / total.clamp(min=1e-12))
        present.append((total > 0).float())
    recalls_t, present_t = torch.stack(recalls, -1), torch.stack(present, -1)
    return (recalls_t * present_t).sum(-1) / present_t.sum(-1)


def weighted_auroc(score: torch.Tensor, positive: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """AUROC of ``score`` for the ``positive`` examples under example weights ``[repeats, n]``."""
    pos, neg = score[positive], score[~positive]
    beats = (pos[:, None] > neg[None]).float() + 0.5 * (pos[:, None] == neg[None]).float()
    w_pos, w_neg = weights[:, positive], weights[:, ~positive]
    return ((w_pos @ beats) * w_neg).sum(1) / (w_pos.sum(1) * w_neg.sum(1)).clamp(min=1e-12)


def _percentiles(values: torch.Tensor) -> tuple[float, float]:
    values = values[torch.isfinite(values)]
    return float(values.quantile(0.025)), float(values.quantile(0.975))


def bootstrap_balanced_accuracy(predictions, y, n_classes, groups, repeats=2000, seed=0) -> tuple[float, float]:
    """95% percentile interval of balanced accuracy, whole groups resampled ``repeats`` times."""
    weights = group_weights(groups, len(y), repeats, seed)
    return _percentiles(weighted_balanced_accuracy((predictions == y).float().cpu(), y.cpu(), weights, n_classes))


def auroc_with_interval(score, positive, groups, repeats=2000, seed=0) -> tuple[float, float, float]:
    """(AUROC, 95% group-bootstrap interval) of ``score`` separating ``positive`` examples."""
    score, positive = score.float().cpu(), positive.bool().cpu()
    value = float(weighted_auroc(score, positive, torch.ones(1, len(score)))[0])
    weights = group_weights(groups, len(score), repeats, seed)
    return (value, *_percentiles(weighted_auroc(score, positive, weights)))


@dataclass
class PairedDifference:
    """Balanced accuracy of probe a minus probe b on the same examples."""

    difference: float
    ci_low: float  # 95% interval, both probes resampled together by group
    ci_high: float
    p_value: float  # two-sided: which probe is which flipped group by group


def paired_difference(
    predictions_a, predictions_b, y, groups: Sequence | None, n_classes: int, repeats: int = 2000, seed: int = 0
) -> PairedDifference:
    """Compare two probes' out-of-fold predictions of the same labels ``y`` (a layer against the
    input, a random-init model, the layer before, a nuisance-only probe). The interval resamples
    whole groups, the two probes together; the p-value swaps the two probes' predictions for a
    random half of the groups (a group's examples are swapped together), ``repeats`` times.

    ``predictions_b`` may be ``[seeds, n]`` (random-init models of several seeds): probe b is then
    their average, each example's hit rate over the seeds (balanced accuracy is linear in the hits,
    so this is the mean of the seeds' balanced accuracies)."""
    y = y.cpu()
    if not (len(predictions_a) == predictions_b.shape[-1] == len(y)):
        raise ValueError(
            f"paired predictions need the same examples: got {len(predictions_a)}, {predictions_b.shape[-1]} "
            f"predictions for {len(y)} labels"
        )
    hits_a = (predictions_a.cpu() == y).float()
    hits_b = (predictions_b.cpu() == y).float()
    hits_b = hits_b.mean(0) if hits_b.ndim == 2 else hits_b
    weights = group_weights(groups, len(y), repeats, seed)
    boot = weighted_balanced_accuracy(hits_a, y, weights, n_classes) - weighted_balanced_accuracy(
        hits_b, y, weights, n_classes
    )
    # Balanced accuracy is linear in the hits: the difference is sum_i d_i, d_i = (a_i - b_i) / (n_class(i) * classes).
    counts = torch.bincount(y, minlength=n_classes).float()
    per_example = (hits_a - hits_b) / (counts[y] * int((counts > 0).sum()))
    observed = float(per_example.sum())
    members = list(group_members(list(range(len(y))) if groups is None else groups).values())
    per_group = torch.stack([per_example[idx].sum() for idx in members])
    generator = torch.Generator().manual_seed(seed + 1)
    signs = torch.randint(0, 2, (repeats, len(members)), generator=generator).float() * 2 - 1
    flipped = signs @ per_group
    p = (1 + int((flipped.abs() >= abs(observed) - 1e-12).sum())) / (1 + repeats)
    return PairedDifference(observed, *_percentiles(boot), p)


# ------------------------------------------------------------------------------------ online code length
def _logistic_log_probs_batched(x_train, y_train, x_test, n_classes: int, grid: Sequence[float]) -> torch.Tensor:
    """Log-probabilities ``[runs, strengths, n_test, classes]`` of multinomial logistic probes fitted
    on each run's ``x_train [runs, m, d]`` at each strength, all in one L-BFGS problem (the loss is a
    sum of independent convex terms, so each probe reaches its own optimum). The intercept is
    penalised too: a block seen with one class alone does not code the others as impossible."""
    mean, std = x_train.mean(1, keepdim=True), x_train.std(1, correction=0, keepdim=True).clamp(min=1e-6)
    ones = torch.ones
    a = torch.cat([(x_train - mean) / std, ones(*x_train.shape[:2], 1, device=x_train.device)], -1)
    b = torch.cat([(x_test - mean) / std, ones(*x_test.shape[:2], 1, device=x_test.device)], -1)
    strengths = torch.tensor(list(grid), device=a.device)
    w = torch.zeros(a.shape[0], len(grid), a.shape[-1], n_classes, device=a.device, requires_grad=True)
    # 40 iterations, not 100: code lengths within 2% of the longer fit (81.1 vs 82.4 bits on 100
    # examples, 242 vs 238 on 300) at a third of the time.
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=40, tolerance_grad=1e-5, line_search_fn="strong_wolfe")
    targets = y_train[:, None, :].expand(-1, len(grid), -1)

    def closure():
        opt.zero_grad()
        logits = torch.einsum("rmd,rgdc->rgmc", a, w)
        data = torch.nn.functional.cross_entropy(logits.flatten(0, 2), targets.flatten(), reduction="none")
        loss = data.view(targets.shape).mean(-1).sum() + (strengths[None, :, None, None] * w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return torch.einsum("rkd,rgdc->rgkc", b, w).log_softmax(-1)


def online_code_length(x, y, groups, n_classes, seed: int, orderings: int = 5) -> tuple[float, float]:
    """(prequential code length, uniform code length), in bits, averaged over ``orderings``
    random orders of the groups (each kept whole). The first block (to 0.1% of the examples, at
    least one) is sent with the uniform code; each later block (block ends double up to 51.2%,
    then 100%: ten blocks on a large set, eight from 300 examples) is coded by a logistic probe
    trained on everything sent before it, at the strength of ``MDL_L2_GRID`` that best coded the
    previous block (the strongest, nearly the uniform code, for the first). The code length does
    not depend on the probe's ``l2``."""
    members = list(group_members(list(range(len(y))) if groups is None else groups).values())
    n = len(y)
    ends = sorted({max(1, round(n * f)) for f in MDL_FRACTIONS})
    uniform = n * math.log2(n_classes)
    generator = torch.Generator().manual_seed(seed)
    orders = []
    for _ in range(orderings):
        orders.append([i for k in torch.randperm(len(members), generator=generator).tolist() for i in members[k]])
    order_t = torch.tensor(orders, device=y.device)  # [orderings, n]
    xo, yo = x[order_t], y[order_t]
    bits = torch.full((orderings,), ends[0] * math.log2(n_classes), dtype=torch.float64)
    choice = torch.full((orderings,), len(MDL_L2_GRID) - 1)
    for start, end in zip(ends, ends[1:]):
        log_probs = _logistic_log_probs_batched(xo[:, :start], yo[:, :start], xo[:, start:end], n_classes, MDL_L2_GRID)
        targets = yo[:, None, start:end, None].expand(-1, len(MDL_L2_GRID), -1, -1)
        block_bits = (-log_probs.gather(-1, targets).squeeze(-1).sum(-1) / math.log(2)).double().cpu()
        bits += block_bits[torch.arange(orderings), choice]
        choice = block_bits.argmin(1)  # the strength for the next block, chosen on data already sent
    return float(bits.mean()), uniform
