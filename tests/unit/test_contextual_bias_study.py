"""The contextual-bias study's own pieces (benchmarks/paper/contextual_bias.py): Holm's
adjustment, the transcript classes and the word masked at a set SNR."""

from __future__ import annotations

import math

import torch

from benchmarks.paper.contextual_bias import classify, holm, setting, with_noisy_word


def test_holm_controls_the_family_wise_error_and_keeps_a_real_effect():
    assert holm([0.01, 0.04, 0.03, 0.5]) == [0.04, 0.09, 0.09, 0.5]  # 4 x 0.01; max(3 x 0.03, 2 x 0.04); 1 x 0.5
    generator = torch.Generator().manual_seed(0)
    null = torch.rand(4000, 10, generator=generator)  # ten true null hypotheses per family
    any_rejected = sum(min(holm(row.tolist())) <= 0.05 for row in null) / len(null)
    # At most 5% of the families reject anything (binomial spread of 4000 draws: sd 0.0035).
    assert any_rejected <= 0.05 + 3 * 0.0035
    raw_rejected = float((null.min(1).values <= 0.05).float().mean())
    assert raw_rejected > 0.3  # unadjusted, most families would reject something: the adjustment matters
    assert holm([1e-4] + [0.5] * 9)[0] <= 0.05  # a strong effect survives among nine nulls


def test_classes_and_masking():
    assert classify(" She cooked white rice.", "lice", "rice") == "contextual"
    assert classify(" She cooked white lice.", "lice", "rice") == "acoustic"
    assert classify(" She cooked white ice.", "lice", "rice") == "neither"
    audio = 0.1 * torch.sin(torch.arange(32000) / 7.0)
    row = dict(word_start="0.5", word_end="1.5")
    noisy = with_noisy_word(audio, row, 0.0, seed=1)
    word = slice(8000, 24000)
    noise = noisy[word] - audio[word]
    assert torch.equal(noisy[:8000], audio[:8000]) and torch.equal(noisy[24000:], audio[24000:])
    assert torch.isclose(noise.pow(2).mean(), audio[word].pow(2).mean(), rtol=0.05)  # 0 dB; 16000 draws: sd 1.1%
    assert torch.equal(with_noisy_word(audio, row, None, seed=1), audio)


def test_category_words_and_their_random_control():
    from collections import Counter

    from benchmarks.paper.contextual_bias import random_categories, read_categories

    pairs = read_categories()
    sizes = Counter(c for _, c in pairs)
    assert len(sizes) >= 6 and min(sizes.values()) >= 20
    assert len({w for w, _ in pairs}) == len(pairs)  # a word in two categories would leak across held-out folds
    shuffled = random_categories(pairs, seed=0)
    assert Counter(shuffled.values()) == sizes  # the control keeps each category's size
    same = sum(shuffled[w] == c for w, c in pairs) / len(pairs)
    # Dealt at random, a word keeps its category about 1/6 of the time (binomial sd ~0.034 for 120 words).
    assert same < 1 / len(sizes) + 4 * 0.034
    assert random_categories(pairs, seed=0) == shuffled != random_categories(pairs, seed=1)


def test_best_white_setting_and_the_controls_at_its_alpha():
    from benchmarks.paper.contextual_bias import best_white, control_blocks, grid_for

    def line(source, alpha, flip, broke, region="target", tested=False):
        out = dict(source=source, region=region, layer=0, component="attn", alpha=alpha)
        out.update(flip_rate=flip, break_rate=broke, **({"p_vs_pink": 0.5} if tested else {}))
        return out

    lines = [
        line("white", 0.25, 0.5, 0.0),  # ties with alpha 0.5 on flip - break: the smaller alpha wins
        line("white", 0.5, 0.75, 0.25),
        line("white", 1.0, 0.9, 0.8, tested=True),
        line("white", 1.0, 1.0, 0.0, region="all"),  # not the word's frames
        line("pink", 0.25, 1.0, 0.0),  # a control is never the best white-noise setting
    ]
    assert best_white(lines)["alpha"] == 0.25
    assert best_white(lines, "pink")["alpha"] == 1.0  # only the lines tested against that control
    assert best_white(lines, "speech")["alpha"] == 0.25  # none tested against it: every white line
    # No correct items: every break rate is NaN, and the flip rate alone decides.
    no_correct = [line("white", a, flip, math.nan) for a, flip in ((0.25, 0.0), (0.5, 0.1), (1.0, 0.6))]
    assert best_white(no_correct)["alpha"] == 1.0
    assert grid_for("focused", ["pink"]) == [("white", "target", ["attn", "mlp", "resid"], [0.25, 0.5, 1.0])]
    assert control_blocks(["pink", "mean"], 0.5) == [
        ("pink", "target", ["attn", "mlp", "resid"], [0.5]),
        ("mean", "target", ["attn", "mlp", "resid"], [0.5]),
    ]


def test_a_setting_for_one_model_and_level_comes_before_the_model_and_the_default():
    text = "2,base=4,tiny.en@5=20"
    assert setting(text, "tiny.en", "5") == "20"
    assert setting(text, "tiny.en", "auto") == "2"
    assert setting(text, "base", "5") == "4"
