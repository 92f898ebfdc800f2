"""The probe statistics on constructed features: folds, planted signals, controls and intervention tests."""

from __future__ import annotations

import pytest
import torch

from hooked_whisper.probe_fitting import L2_GRID
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
    """Features that encode the label: a permutation p at its floor and an interval far above
    chance. Features independent of it: a large p-value and an interval covering chance. Groups
    of two clips share a label, and the noise features also encode the group, which a probe
    could memorise if groups leaked across folds."""
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
    report = train_probes(features, y.tolist(), groups=groups, permutations=200, progress=False)
    signal, memoriser = report.results
    assert signal.accuracy > 0.8 and signal.p_value == 1 / 201 and signal.ci_low > 0.7
    assert signal.ci_low < signal.balanced_accuracy < signal.ci_high
    assert memoriser.p_value > 0.05 and memoriser.ci_low < 1 / 3 + 1e-6 < memoriser.ci_high + 2e-6  # float32 1/3
    assert abs(memoriser.shuffled - 1 / 3) < 0.05 and signal.auroc is None  # three classes: no AUROC
    assert report.selected.hooks == ["encoder_blocks.1.signal"] * 5
    # The hook chosen in the training folds is compared like any probe: with its own hook's probe
    # (the same predictions, every fold chose it) and with the memoriser (far above it).
    same = report.compare(report.selected, "encoder_blocks.1.signal")
    assert same.difference == 0 and same.p_value == 1
    assert report.compare(report.selected, memoriser).ci_low > 0.3


def test_controls_when_a_group_mixes_labels():
    """Clean/noisy pairs: each group (a source clip) holds one clip of each label, so labels are
    shuffled within the pairs."""
    g = torch.Generator().manual_seed(3)
    y = torch.tensor([0, 1] * 100)
    groups = [i // 2 for i in range(200)]
    source = torch.randn(100, 8, generator=g)[torch.tensor(groups)]  # what the two copies share
    features = {
        "encoder_blocks.1.noise_level": torch.cat([source, y[:, None] * 1.5 + torch.randn(200, 1, generator=g)], 1),
        "encoder_blocks.0.source_only": source + 0.1 * torch.randn(200, 8, generator=g),
    }
    signal, source_only = train_probes(features, y.tolist(), groups=groups, permutations=100, progress=False).results
    assert signal.p_value < 0.02 and signal.auroc[1] > 0.6
    assert source_only.p_value > 0.05 and source_only.auroc[1] < 0.5 < source_only.auroc[2]


def test_permutation_test_can_fail():
    """The permuted labels keep each fold's class balance and the strength is chosen again on
    each permutation, so features with no information give p-values spread over (0, 1]: constant
    features are never significant, noise is significant at 5% about once in 20 seeds. A real
    signal sits at the floor, 1 / (1 + permutations)."""
    constant = train_probes({"h": torch.zeros(60, 4)}, ["a", "b"] * 30, folds=5, permutations=100, progress=False)
    assert constant.results[0].p_value > 0.2 and constant.results[0].balanced_accuracy == 0.5
    labels = ["a", "b"] * 20
    noise_p = []
    for seed in range(20):
        x = torch.randn(40, 16, generator=torch.Generator().manual_seed(seed))
        noise_p.append(train_probes({"h": x}, labels, permutations=40, seed=seed, progress=False).results[0].p_value)
    assert sum(p < 0.05 for p in noise_p) < 3 and sum(p > 0.5 for p in noise_p) >= 6, noise_p
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(0))
    x[:, 0] += 3 * torch.tensor([label == "a" for label in labels])
    assert train_probes({"h": x}, labels, permutations=40, progress=False).results[0].p_value == 1 / 41


def test_control_task_labels_recur_across_folds():
    """Item types (10 words said by 12 speakers each) recur across folds, so a probe on features
    that identify the type (one-hot: anything can be memorised) scores far above chance on the
    control task; constant features do not, on the control or on the real labels."""
    types = [f"word{i % 10}" for i in range(120)]
    speakers = [i // 10 for i in range(120)]
    labels = ["x" if i % 20 < 10 else "y" for i in range(120)]
    identity = torch.nn.functional.one_hot(torch.tensor([i % 10 for i in range(120)]), 10).float()
    features = {"memorisable": identity, "constant": torch.zeros(120, 4)}
    report = train_probes(features, labels, groups=speakers, control_types=types, permutations=20, progress=False)
    memorisable, constant = report.results
    assert memorisable.control > 0.9 and abs(constant.control - 0.5) < 1e-6
    assert constant.balanced_accuracy <= 0.5 and constant.p_value > 0.2
    assert memorisable.selectivity == memorisable.balanced_accuracy - memorisable.control
    assert "control" in report.table()
    with pytest.raises(ValueError, match="no control type occurs in more than one fold"):
        train_probes(features, labels, groups=speakers, control_types=speakers, permutations=0, progress=False)


def test_gain_over_a_nuisance_only_probe():
    """A label set by the clip's loudness: a layer that carries loudness (plus noise) gains
    nothing over the loudness-only probe (interval covers 0); a layer that carries the label
    beyond loudness gains (interval above 0), and Holm-adjusted p-values sit beside the raw ones."""
    g = torch.Generator().manual_seed(0)
    n = 120
    loudness = torch.randn(n, generator=g)
    hidden = torch.randn(n, generator=g)
    y = ((loudness + hidden) > 0).long()
    features = {
        "encoder_blocks.0.loudness_only": torch.cat([loudness[:, None], torch.randn(n, 7, generator=g)], 1),
        "encoder_blocks.1.beyond": torch.cat([loudness[:, None], hidden[:, None], torch.randn(n, 6, generator=g)], 1),
    }
    report = train_probes(
        features, y.tolist(), groups=[i // 2 for i in range(n)], nuisance={"loudness": loudness}, permutations=20,
        progress=False,
    )  # fmt: skip
    same, beyond = report.results
    assert same.gain.ci_low < 0 < same.gain.ci_high and same.gain.p_value > 0.05
    assert beyond.gain.ci_low > 0 and beyond.gain.p_value < 0.01
    assert all(r.gain_p_adjusted >= r.gain.p_value and r.p_adjusted >= r.p_value for r in report.results)
    assert 0.6 < report.nuisance[0] < 0.9 and "gain over nuisance" in report.table()
    nuisance_hits = (report.nuisance_predictions == report.labels).float()  # its balanced accuracy, recomputed
    assert abs(sum(nuisance_hits[report.labels == c].mean() for c in (0, 1)) / 2 - report.nuisance[0]) < 1e-6
    compared = report.compare("encoder_blocks.1.beyond", "encoder_blocks.0.loudness_only")
    assert compared.ci_low > 0 and compared.p_value < 0.05
    random_init = [  # five seeds of a network that passes loudness on, and nothing else
        train_probes({"init": torch.cat([loudness[:, None], torch.randn(n, 7, generator=g)], 1)}, y, permutations=0,
                     groups=[i // 2 for i in range(n)], seed=seed, progress=False).results[0]
        for seed in range(5)
    ]  # fmt: skip
    assert report.compare("encoder_blocks.1.beyond", random_init).ci_low > 0
    versus_init = report.compare("encoder_blocks.0.loudness_only", random_init)
    assert versus_init.ci_low < 0 < versus_init.ci_high
    with pytest.raises(ValueError, match="nuisance columns have 3 rows for 120 examples"):
        train_probes(features, y.tolist(), nuisance=torch.zeros(3), permutations=0, progress=False)


def test_best_hook_is_chosen_inside_the_training_folds():
    """Among 8 hooks of pure noise the highest out-of-fold score is above chance by selection
    alone; the hook chosen inside the training folds scores at chance, on average, on the folds
    it never saw."""
    labels = ["a", "b"] * 30
    best, selected = [], []
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        noise = {f"encoder_blocks.{i}.noise": torch.randn(60, 8, generator=g) for i in range(8)}
        report = train_probes(
            noise, labels, permutations=0, seed=seed, l2=[1.0] if seed % 2 else L2_GRID, progress=False
        )
        best.append(report.best().balanced_accuracy)
        selected.append(report.selected.balanced_accuracy)
    # six seeds of 60 examples: the mean of a chance score has SD about 0.065 / sqrt(6) = 0.027
    assert sum(best) / 6 > 0.6 and abs(sum(selected) / 6 - 0.5) < 0.07, (best, selected)


def test_r_squared_interval_resamples_groups():
    """R^2 of a regression read out of fold: a real fit has an interval above 0; the same residual
    spread, shared by the ten clips of each of six sources, gives a wider interval than spread
    over sixty independent clips."""
    from hooked_whisper.probe_fitting import r_squared_with_interval

    g = torch.Generator().manual_seed(0)
    target = torch.randn(60, generator=g)
    fit = r_squared_with_interval(target + 0.5 * torch.randn(60, generator=g), target, None)
    assert 0.5 < fit[0] < 0.9 and fit[1] > 0.4
    offsets = torch.randn(6, generator=g).repeat_interleave(10)  # one error per source
    clustered = r_squared_with_interval(target + 0.5 * offsets, target, [i // 10 for i in range(60)])
    independent = r_squared_with_interval(target + 0.5 * offsets, target, None)
    assert clustered[2] - clustered[1] > independent[2] - independent[1]


def test_multiple_comparison_adjustments():
    from hooked_whisper.metrics import adjust_p_values

    p = [0.01, 0.04, 0.03, 0.005]
    assert adjust_p_values(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])  # Holm: 4, 3, 2, 1 times, kept monotone
    assert adjust_p_values(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])  # m p / rank, minimum from above
    with pytest.raises(ValueError, match="'holm' or 'bh'"):
        adjust_p_values(p, "bonferroni")


def test_code_length_does_not_depend_on_the_probe_strength():
    """The online code picks its own strength block by block, so the same features give the same
    code length whatever ``l2`` the probe is given; it is shorter than the uniform code when the
    features carry the label, and not when they do not."""
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1] * 50)
    x = torch.randn(100, 6, generator=g)
    features = {"signal": x + 2 * labels[:, None] * torch.eye(6)[0], "noise": x}
    runs = [
        train_probes(features, labels, l2=l2, permutations=0, code_length=True, progress=False) for l2 in (0.01, 10.0)
    ]
    assert [r.code_bits for r in runs[0].results] == [r.code_bits for r in runs[1].results]
    signal, noise = runs[0].results
    assert signal.compression > 1.1 and noise.compression < 1.0


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


def test_cluster_permutation_test_counts_source_clips():
    """Ten wins over the control: from ten source clips, significant; the same ten wins as ten
    cuts of two clips, not (two clips cannot tell an effect from chance)."""
    from hooked_whisper.metrics import adjust_p_values, cluster_permutation_p

    stopped, control = [1] * 10 + [0] * 10, [0] * 20
    independent = cluster_permutation_p(stopped, control, list(range(20)), repeats=2000)
    clustered = cluster_permutation_p(stopped, control, [i // 5 for i in range(10)] + list(range(10, 20)), 2000)
    assert independent < 0.01 and clustered > 0.2
    assert cluster_permutation_p([1, 0] * 10, [0, 1] * 10, list(range(20)), repeats=2000) > 0.5
    assert adjust_p_values([independent, clustered])[0] == pytest.approx(2 * independent)


def test_head_stability_over_half_splits():
    from hooked_whisper.metrics import head_stability

    g = torch.Generator().manual_seed(0)
    clear = {f"clip{i}": {"XL5H1": 1.0 + 0.1 * float(torch.randn(1, generator=g)), "XL5H3": 0.2} for i in range(20)}
    assert head_stability(clear)["agreement"] == 1.0
    tied = torch.randn(20, 6, generator=g)  # six heads, no best one
    assert head_stability(tied, n_splits=100)["agreement"] < 0.6
    # Yes/no outcomes tie exactly (every head stops every loop): no head is best, so the halves
    # agree only by chance (1 in 6), not every time as the first index of argmax would have it.
    exact = head_stability(torch.ones(20, 6), n_splits=200)
    assert exact["agreement"] < 0.35 and min(exact["best_counts"].values()) > 0


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
