"""Does the residual stream at ``<|endoftext|>`` tell a transcript with errors from a perfect one
better than the model's own confidence does? The seed paper's hallucination probe, on real
transcribed speech (data from ``hallucination_speech_data.py``):

    .venv/bin/python benchmarks/paper/hallucination_speech.py --data DIR --model tiny.en

Labels, as the paper: items transcribed with zero WER (class 0) against the N items with the
highest WER (class 1), N = the number of zero-WER items or of items with any error, whichever is
smaller (balanced classes); the insertion variant takes the N items with the highest insertion
rate against the zero-WER ones. Items in between are left out.

Probes: for every decoder layer, a ridge probe on the residual stream at the end-of-text
position (and, beside it, at the last text token and at every encoder layer mean-pooled), its
L2 chosen inside each training split, scored out of fold on held-out prompts (five folds, all
versions of a prompt in one fold). Own signals: a logistic probe on [average log-probability,
P(no speech), output length in tokens], on the same folds. The statistic is the AUROC of the
out-of-fold scores; intervals and the probe-minus-own-signals difference come from a bootstrap
over prompts (``paired_auroc_difference``). ``train_probes``' table (balanced accuracy,
permutation test, control task) is written beside it for the headline hooks.

Writes ``results/hallucination_speech.{md,json}`` and ``results/hallucination_speech_<model>.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent.parent.parent))
from benchmarks.paper.hallucination_speech_data import load  # noqa: E402
from hooked_whisper.plots import _pyplot  # noqa: E402
from hooked_whisper.probe_fitting import L2_GRID, fold_assignment, logistic_scores, ridge_operator  # noqa: E402
from hooked_whisper.probing import train_probes  # noqa: E402

HERE = Path(__file__).parent
FOLDS = 5
BOOTSTRAP = 2000
OWN_SIGNALS = ("avg_logprob", "no_speech_prob", "n_tokens")


# ---------------------------------------------------------------- labels


def balanced_labels(rows: list[dict], field: str, seed: int = 0) -> tuple[list[int], list[int], int]:
    """(item indices, labels, N): zero-WER items (0) against the N items highest in ``field``
    (1), N = min(#zero-WER, #items with field > 0); ties at the cut are broken by item order."""
    zero = [i for i, r in enumerate(rows) if r["wer"] == 0]
    worst = sorted((i for i, r in enumerate(rows) if r[field] > 0), key=lambda i: -rows[i][field])
    n = min(len(zero), len(worst))
    if n < FOLDS:
        raise ValueError(f"only {n} items per class for '{field}': the data are too small for {FOLDS} folds")
    # Every zero-WER item when they are the smaller class; otherwise a random n of them (a seeded
    # draw: item order follows prompt names, and its first n would be a biased sample).
    keep = np.random.default_rng(seed).choice(len(zero), size=n, replace=False)
    chosen = sorted([zero[k] for k in keep] + worst[:n])
    top = set(worst[:n])
    return chosen, [int(i in top) for i in chosen], n


# ---------------------------------------------------------------- scores and AUROC


def auroc(scores: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    """P(score of a random class-1 item > that of a random class-0 item), ties counting half;
    ``weights`` count each item that many times (a bootstrap resample)."""
    w = np.ones(len(y)) if weights is None else weights
    values, where = np.unique(scores, return_inverse=True)
    pos = np.bincount(where, w * (y == 1), len(values))
    neg = np.bincount(where, w * (y == 0), len(values))
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    total = pos.sum() * neg.sum()
    return float((pos * (below + 0.5 * neg)).sum() / total) if total > 0 else float("nan")


def ridge_scores(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, test: torch.Tensor, l2: float) -> torch.Tensor:
    """Class-1 minus class-0 score of the one-hot ridge probe fitted on ``train``."""
    onehot = torch.nn.functional.one_hot(y[train], 2).double()
    return (ridge_operator(x[train], x[test], l2) @ onehot).diff(dim=1)[:, 0]


def out_of_fold_ridge(x: torch.Tensor, y: torch.Tensor, groups: list, fold_of: torch.Tensor, seed: int) -> np.ndarray:
    """Out-of-fold ridge scores, the L2 chosen per training split by AUROC in a group-disjoint
    3-fold split of that split alone."""
    x = x.double()
    scores = torch.empty(len(y), dtype=torch.float64)
    for fold in range(int(fold_of.max()) + 1):
        test = fold_of == fold
        train_idx = (~test).nonzero()[:, 0]
        inner = fold_assignment(y[train_idx], [groups[i] for i in train_idx], 3, seed)
        best, best_auc = L2_GRID[len(L2_GRID) // 2], -1.0
        for l2 in L2_GRID:
            inner_scores = torch.empty(len(train_idx), dtype=torch.float64)
            for k in range(3):
                tr, te = train_idx[inner != k], train_idx[inner == k]
                inner_scores[inner == k] = ridge_scores(x, y, tr, te, l2)
            auc = auroc(inner_scores.numpy(), y[train_idx].numpy())
            if auc > best_auc:
                best, best_auc = l2, auc
        scores[test] = ridge_scores(x, y, train_idx, test.nonzero()[:, 0], best)
    return scores.numpy()


def nested_layer_scores(
    per_layer: dict[str, np.ndarray], acts: dict[str, torch.Tensor], y: torch.Tensor, groups: list,
    fold_of: torch.Tensor, seed: int,
) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """Out-of-fold scores of the layer chosen inside each training split: per outer fold, every
    layer is scored by its AUROC in a group-disjoint cross-validation of the training split alone,
    and the test fold takes the outer scores (``per_layer``) of the winner, so the test fold
    never takes part in the choice. Returns the scores and the layer chosen per fold."""
    scores, chosen = np.empty(len(y)), []
    for fold in range(FOLDS):
        test = (fold_of == fold).numpy()
        train = np.flatnonzero(~test)
        train_groups = [groups[i] for i in train]
        inner = fold_assignment(y[train], train_groups, FOLDS, seed + 1)
        inner_auc = {
            name: auroc(out_of_fold_ridge(acts[name][train], y[train], train_groups, inner, seed), y[train].numpy())
            for name in per_layer
        }
        best = max(inner_auc, key=inner_auc.get)
        chosen.append(best)
        scores[test] = per_layer[best][test]
    return scores, chosen


def out_of_fold_own_signals(signals: torch.Tensor, y: torch.Tensor, fold_of: torch.Tensor) -> np.ndarray:
    """Out-of-fold log-odds of a logistic probe on the model's own signals (three numbers, so a
    light fixed L2)."""
    scores = torch.empty(len(y))
    for fold in range(FOLDS):
        test = fold_of == fold
        log_p = logistic_scores(signals[~test], y[~test], signals[test], 2, l2=1e-3)
        scores[test] = log_p[:, 1] - log_p[:, 0]
    return scores.numpy()


def paired_auroc_difference(
    probe: np.ndarray, baseline: np.ndarray, y: np.ndarray, groups: list, repeats: int = BOOTSTRAP, seed: int = 0
) -> dict:
    """AUROC of ``probe`` minus AUROC of ``baseline`` (two out-of-fold scores of the same items)
    with 95% percentile intervals from one bootstrap over groups: each resample draws whole
    groups (prompts) with replacement and scores both on the same draw, so the difference's
    interval reflects their correlation. The out-of-fold scores are held fixed (the probes are
    not refitted per resample): the interval covers the sampling of prompts, not the variance
    of fitting. Returns the point values, intervals, and the share of resamples in which the
    difference is at or below zero (a one-sided bootstrap p)."""
    names = sorted(set(groups), key=str)
    index = {g: k for k, g in enumerate(names)}
    member = np.array([index[g] for g in groups])
    rng = np.random.default_rng(seed)
    draws = {"probe": [], "baseline": [], "difference": []}
    for _ in range(repeats):
        counts = np.bincount(rng.integers(len(names), size=len(names)), minlength=len(names))
        w = counts[member].astype(float)
        a, b = auroc(probe, y, w), auroc(baseline, y, w)
        draws["probe"].append(a)
        draws["baseline"].append(b)
        draws["difference"].append(a - b)
    point = {"probe": auroc(probe, y), "baseline": auroc(baseline, y)}
    point["difference"] = point["probe"] - point["baseline"]
    out = {k: {"value": v, "ci": [float(np.nanpercentile(draws[k], 2.5)), float(np.nanpercentile(draws[k], 97.5))]}
           for k, v in point.items()}  # fmt: skip
    out["p_not_greater"] = float(np.mean(np.array(draws["difference"]) <= 0))
    return out


# ---------------------------------------------------------------- the study


def study(rows: list[dict], acts: dict[str, torch.Tensor], field: str, seed: int = 0) -> dict:
    chosen, labels, n = balanced_labels(rows, field, seed)
    groups = [rows[i]["group"] for i in chosen]
    y = torch.tensor(labels)
    fold_of = fold_assignment(y, groups, FOLDS, seed)
    signals = torch.tensor([[rows[i][s] for s in OWN_SIGNALS] for i in chosen], dtype=torch.float32)
    own = out_of_fold_own_signals(signals, y, fold_of)
    single = {
        "avg_logprob (lower = error)": auroc(-signals[:, 0].numpy(), y.numpy()),
        "no_speech_prob (higher = error)": auroc(signals[:, 1].numpy(), y.numpy()),
    }
    # Nuisance baseline: which degradation the item went through (version and SNR), one-hot.
    versions = sorted({(rows[i]["condition"], rows[i]["snr_db"] or 0.0) for i in chosen})
    one_hot = torch.tensor([[float((rows[i]["condition"], rows[i]["snr_db"] or 0.0) == v) for v in versions]
                            for i in chosen])  # fmt: skip
    nuisance = out_of_fold_own_signals(one_hot, y, fold_of)
    layers, scores = {}, {}
    for name in sorted(acts, key=lambda k: (k.split(".")[0], int(k.split(".")[1]))):
        scores[name] = out_of_fold_ridge(acts[name][chosen], y, groups, fold_of, seed)
        layers[name] = paired_auroc_difference(scores[name], own, y.numpy(), groups, seed=seed)
    eot = {k: v for k, v in scores.items() if k.startswith("eot.")}
    nested, picked = nested_layer_scores(eot, {k: acts[k][chosen] for k in eot}, y, groups, fold_of, seed)
    layers["eot, layer chosen in training folds"] = paired_auroc_difference(nested, own, y.numpy(), groups, seed=seed)
    against_nuisance = {
        "degradation only (version x SNR) vs own signals": paired_auroc_difference(nuisance, own, y.numpy(), groups),
        "eot, layer chosen in training folds vs degradation only": paired_auroc_difference(
            nested, nuisance, y.numpy(), groups
        ),
    }
    conditions = {}
    for i, label in zip(chosen, labels):
        c = conditions.setdefault(rows[i]["condition"], [0, 0])
        c[label] += 1
    return {
        "field": field, "n_per_class": n, "items": len(chosen), "prompts": len(set(groups)),
        "class_1_min_" + field: min(rows[i][field] for i, lab in zip(chosen, labels) if lab),
        "classes_by_condition": conditions, "own_signals_single": single, "layers": layers,
        "nested_layers_per_fold": picked, "against_nuisance": against_nuisance,
    }  # fmt: skip


def plot(result: dict, model: str, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (variant, res) in zip(axes, result.items()):
        for prefix, label, marker in (("eot", "decoder, <|endoftext|>", "o"), ("last", "decoder, last text token", "s"),
                                      ("enc", "encoder, mean over audio", "^")):  # fmt: skip
            names = [k for k in res["layers"] if k.startswith(prefix + ".") and k.split(".")[1].isdigit()]
            xs = [int(k.split(".")[1]) for k in names]
            vals = [res["layers"][k]["probe"]["value"] for k in names]
            lows = [v - res["layers"][k]["probe"]["ci"][0] for k, v in zip(names, vals)]
            highs = [res["layers"][k]["probe"]["ci"][1] - v for k, v in zip(names, vals)]
            ax.errorbar(xs, vals, yerr=[lows, highs], marker=marker, capsize=3, label=label)
        base = next(iter(res["layers"].values()))["baseline"]
        ax.axhline(base["value"], color="k", linestyle="--", label="own signals (log-prob, P(no speech), length)")
        ax.axhspan(*base["ci"], color="k", alpha=0.1)
        ax.axhline(0.5, color="grey", linewidth=0.5)
        ax.set_title(f"{model}: zero WER vs top-{res['n_per_class']} by {variant.replace('_', ' ')}")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_xlabel("layer")
    axes[0].set_ylabel("AUROC on held-out prompts (95% prompt bootstrap)")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def comparison_row(name: str, r: dict) -> str:
    p, b, d = r["probe"], r["baseline"], r["difference"]
    return (
        f"| {name} | {p['value']:.3f} ({p['ci'][0]:.3f}-{p['ci'][1]:.3f}) | {b['value']:.3f} "
        f"({b['ci'][0]:.3f}-{b['ci'][1]:.3f}) | {d['value']:+.3f} ({d['ci'][0]:+.3f} to {d['ci'][1]:+.3f}) "
        f"| {r['p_not_greater']:.4f} |"
    )


def markdown(result: dict, model: str, rows: list[dict], table: str) -> str:
    by_condition: dict = {}
    for r in rows:
        by_condition.setdefault(
            r["condition"] + (f" {r['snr_db']:+.0f} dB" if r["snr_db"] is not None else ""), []
        ).append(r)
    lines = [f"# Hallucination probe on transcribed speech ({model})", "",
             f"{len(rows)} items from {len(set(r['group'] for r in rows))} prompts. Mean WER and share with zero WER "
             "per version:", "", "| version | items | mean WER | zero WER | mean insertion rate |",
             "|---|---|---|---|---|"]  # fmt: skip
    for cond, rs in sorted(by_condition.items()):
        wer = np.mean([r["wer"] for r in rs])
        zero = np.mean([r["wer"] == 0 for r in rs])
        ins = np.mean([r["insertion_rate"] for r in rs])
        lines.append(f"| {cond} | {len(rs)} | {wer:.3f} | {zero:.2f} | {ins:.3f} |")
    lines += ["", "Features: `eot.{l}` is `decoder_blocks.{l}.hook_resid_post` at `<|endoftext|>` (teacher-forced "
              "after the greedy transcript), `last.{l}` the same at the last text token (the position predicting "
              "end-of-text), `enc.{l}` `encoder_blocks.{l}.hook_resid_post` averaged over the frames holding audio. "
              "Own signals: a logistic probe on [average log-prob, P(no speech), tokens written], same folds. "
              "Intervals: 2000 resamples of prompts (out-of-fold scores held fixed)."]  # fmt: skip
    for variant, res in result.items():
        lines += ["", f"## Zero WER vs top-{res['n_per_class']} by {variant}", "",
                  f"{res['items']} items from {res['prompts']} prompts, {res['n_per_class']} per class (class 1: "
                  f"{variant} at least {res['class_1_min_' + variant]:.3f}); [class 0, class 1] by version: "
                  f"{res['classes_by_condition']}. Single signals: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in res["own_signals_single"].items())
                  + f". Layer chosen inside each training split: {res['nested_layers_per_fold']}.", "",
                  "| features | probe AUROC (95% CI) | own signals AUROC (95% CI) | probe - own (95% CI) "
                  "| P(diff <= 0) |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, r in res["layers"].items():
            lines.append(comparison_row(name, r))
        lines += ["", "Against the degradation an item went through (a logistic probe on the one-hot version x SNR):",
                  "", "| comparison | first AUROC | second AUROC | difference (95% CI) | P(diff <= 0) |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, r in res["against_nuisance"].items():
            lines.append(comparison_row(name, r))
    lines += ["", "## train_probes on the WER labels (balanced accuracy, permutation test, control task)", "", table]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the builder's --out folder")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--permutations", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, acts = load(args.data, args.model)
    result = {field: study(rows, acts, field) for field in ("wer", "insertion_rate")}
    chosen, labels, _ = balanced_labels(rows, "wer")
    headline = {k: v[chosen] for k, v in acts.items() if k.startswith("eot.")}
    report = train_probes(headline, labels, groups=[rows[i]["group"] for i in chosen], folds=FOLDS,
                          permutations=args.permutations, progress=False)  # fmt: skip
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    plot(result, args.model, out / f"hallucination_speech_{args.model}.png")
    payload = {"model": args.model, "items": len(rows), "studies": result,
               "train_probes": [vars(r) for r in report.results]}  # fmt: skip
    (out / "hallucination_speech.json").write_text(
        json.dumps(payload, indent=1, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)) + "\n"
    )
    (out / "hallucination_speech.md").write_text(markdown(result, args.model, rows, report.table()))
    print((out / "hallucination_speech.md").read_text())


if __name__ == "__main__":
    main()
