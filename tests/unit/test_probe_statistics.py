"""The probe statistics on constructed features: folds, planted signals, controls and intervention tests."""

from __future__ import annotations

import pytest
import torch

from hooked_whisper.probing import fold_assignment, train_probes


def test_probes_recover_a_planted_signal():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 40, generator=g)
    labels = ["a" if v > 0 else "b" for v in (x[:, :5].sum(1) * 2 + 0.1 * torch.randn(300, generator=g))]
    noise = torch.randn(300, 40, generator=g)
    for method in ("logistic", "ridge"):
        report = train_probes(
            {"encoder_blocks.3.signal": x, "encoder_blocks.0.noise": noise},
            labels,
            method=method,
            l2=0.01,
            permutations=20 if method == "ridge" else 3,
            progress=False,
        )
        signal, pure_noise = report.results
        assert signal.layer == 3 and signal.accuracy > 0.85, method
        assert abs(signal.shuffled - 0.5) < 0.15 and abs(pure_noise.accuracy - 0.5) < 0.15, method
        assert 0.4 < signal.majority < 0.6
    runs = [train_probes({"encoder_blocks.3.signal": x}, labels, progress=False).results[0] for _ in range(2)]
    assert runs[0] == runs[1]  # deterministic for a seed


def test_folds_keep_groups_together_and_stratify():
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([0] * 30 + [1] * 30)
    groups = [f"speaker{i // 3}" for i in range(60)]  # 20 speakers, 3 clips each, one label per speaker
    fold_of = fold_assignment(labels, groups, folds=5, seed=0)
    for speaker in set(groups):
        assert len({int(fold_of[i]) for i, s in enumerate(groups) if s == speaker}) == 1, speaker
    for fold in range(5):
        test = fold_of == fold
        assert set(labels[test].tolist()) == {0, 1}  # stratified: every fold tests both classes
    x = torch.randn(60, 8, generator=g) + labels[:, None] * 3
    report = train_probes({"encoder_blocks.0.x": x}, labels.tolist(), groups=groups, progress=False)
    assert report.results[0].accuracy > 0.9
    with pytest.raises(ValueError, match="3 groups cannot fill 5 folds"):
        train_probes({"h": torch.zeros(6, 3)}, [0, 1, 0, 1, 0, 1], groups=[0, 0, 1, 1, 2, 2], progress=False)
    with pytest.raises(ValueError, match="has no example of class"):
        # one group of class 1: the fold that tests it trains on class 0 alone
        fold_assignment(torch.tensor([0, 0, 0, 1]), None, folds=2, seed=0)


def test_controls_separate_signal_from_chance():
    """Features that encode the label: high selectivity, a small permutation p-value and a short
    online code. Features independent of it: selectivity near 0, a large p-value, no compression.
    Groups of two clips share a label, and the noise features also encode the group, which a
    probe could memorise if groups leaked across folds."""
    g = torch.Generator().manual_seed(0)
    n_groups, per_group = 150, 2
    group_label = torch.randint(0, 3, (n_groups,), generator=g)
    groups = [i // per_group for i in range(n_groups * per_group)]
    y = group_label[torch.tensor(groups)]
    group_code = torch.randn(n_groups, 16, generator=g)[torch.tensor(groups)]  # identifies the group
    informative = torch.nn.functional.one_hot(y, 3).float() * 2 + torch.randn(len(y), 16, generator=g)[:, :3]
    features = {
        "encoder_blocks.1.signal": torch.cat([informative, torch.randn(len(y), 13, generator=g)], 1),
        "encoder_blocks.0.groups_only": group_code + 0.1 * torch.randn(len(y), 16, generator=g),
    }
    report = train_probes(features, y.tolist(), groups=groups, permutations=200, code_length=True, progress=False)
    signal, memoriser = report.results
    assert signal.accuracy > 0.8 and signal.selectivity > 0.4 and signal.p_value < 0.01
    assert signal.ci_low < signal.accuracy < signal.ci_high
    assert abs(memoriser.selectivity) < 0.15 and memoriser.p_value > 0.05
    assert abs(memoriser.accuracy - 1 / 3) < 0.15 and abs(memoriser.shuffled - 1 / 3) < 0.1
    assert signal.compression > 1.1 and memoriser.compression < 1.02
    assert "selectivity" in report.table()


def test_controls_when_a_group_mixes_labels():
    """Clean/noisy pairs: each group (a source clip) holds one clip of each label, so labels are
    shuffled within the pairs and the control task draws a label per clip."""
    g = torch.Generator().manual_seed(3)
    y = torch.tensor([0, 1] * 100)
    groups = [i // 2 for i in range(200)]
    source = torch.randn(100, 8, generator=g)[torch.tensor(groups)]  # what the two copies share
    features = {
        "encoder_blocks.1.noise_level": torch.cat([source, y[:, None] * 1.5 + torch.randn(200, 1, generator=g)], 1),
        "encoder_blocks.0.source_only": source + 0.1 * torch.randn(200, 8, generator=g),
    }
    signal, source_only = train_probes(features, y.tolist(), groups=groups, permutations=100, progress=False).results
    assert signal.p_value < 0.02 and signal.selectivity > 0.3
    assert source_only.p_value > 0.05 and abs(source_only.selectivity) < 0.15


def test_intervention_statistics():
    """McNemar counts only disagreements; the group bootstrap widens with correlated groups."""
    from hooked_whisper.metrics import group_bootstrap_interval, mcnemar_p

    assert mcnemar_p([True] * 6 + [False] * 4, [False] * 10) == 2 / 2**6  # six wins, no losses
    assert mcnemar_p([True, False] * 5, [False, True] * 5) == 1.0  # as many losses as wins
    assert mcnemar_p([True] * 10, [True] * 10) == 1.0  # no disagreement: no evidence
    outcomes = [True, True, False, False] * 10
    independent = group_bootstrap_interval(outcomes, list(range(40)))
    clustered = group_bootstrap_interval([i % 8 < 4 for i in range(40)], [i // 4 for i in range(40)])
    assert independent[0] < 0.5 < independent[1]
    assert clustered[1] - clustered[0] > independent[1] - independent[0]  # ten groups carry less information
    assert group_bootstrap_interval([True] * 5, list("abcde")) == (1.0, 1.0)
    with pytest.raises(ValueError, match="one group per outcome"):
        group_bootstrap_interval([True], [1, 2])


# ---------------------------------------------------------------- inputs that would silently mislead
def planted(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, ["a" if v > 0 else "b" for v in x[:, 0]]


def test_nan_or_inf_features_are_refused_naming_the_hook():
    x, labels = planted()
    x[3, 2], x[7, 4] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"features at layer.h hold NaN or infinite values \(2 of 6 columns, 2 of 60"):
        train_probes({"layer.h": x}, labels, permutations=0, progress=False)


def test_missing_labels_are_refused():
    x, labels = planted()
    for missing in (None, float("nan"), ""):
        bad = labels[:5] + [missing] + labels[6:]
        with pytest.raises(ValueError, match=r"1 labels are missing \(None, NaN or empty\), at examples \[5\]"):
            train_probes({"h": x}, bad, permutations=0, progress=False)


def test_float_labels_need_the_task_said():
    x, labels = planted()
    numeric = [float(label == "b") for label in labels]  # in the order of the string classes
    with pytest.raises(ValueError, match=r"labels are floats \(2 distinct values\).*task='classification'"):
        train_probes({"h": x}, numeric, permutations=0, progress=False)
    with pytest.raises(ValueError, match="fits classification probes"):
        train_probes({"h": x}, numeric, permutations=0, progress=False, task="regression")
    said = train_probes({"h": x}, numeric, permutations=0, progress=False, task="classification")
    assert (
        said.results[0].accuracy == train_probes({"h": x}, labels, permutations=0, progress=False).results[0].accuracy
    )


def test_labels_as_a_tensor_are_one_class_per_value():
    x, labels = planted()
    as_ints = torch.tensor([int(label == "b") for label in labels])
    report = train_probes({"h": x}, as_ints, permutations=0, progress=False)
    assert report.classes == [0, 1]
    assert (
        report.results[0].accuracy == train_probes({"h": x}, labels, permutations=0, progress=False).results[0].accuracy
    )
    with pytest.raises(ValueError, match=r"one per example \(1-D\); got shape \(60, 1\)"):
        train_probes({"h": x}, as_ints[:, None], permutations=0, progress=False)


def test_no_permutations_means_not_tested_and_folds_are_checked():
    x, labels = planted()
    report = train_probes({"h": x}, labels, permutations=0, progress=False)
    assert report.results[0].p_value is None and "| - | not tested |" in report.table()
    tested = train_probes({"h": x}, labels, permutations=5, progress=False)
    assert 0 < tested.results[0].p_value <= 1 and "not tested" not in tested.table()
    for folds in (0, 1):
        with pytest.raises(ValueError, match=rf"folds must be a whole number, 2 or more .*; got {folds}"):
            train_probes({"h": x}, labels, folds=folds, progress=False)
