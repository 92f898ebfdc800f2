"""Hooks never leak across threads."""

from __future__ import annotations

import threading

import torch

from tests.support import DATA

CLIP = DATA / "librivox_0880.wav"


def test_two_threads_never_share_hooks(small):
    """One thread ablates cross-attention (and caches), the other runs clean: each gets what it
    would get alone, however their calls interleave."""
    model = small
    deaf = [(f"decoder_blocks.{l}.hook_cross_attn_out", lambda x, hook: torch.zeros_like(x)) for l in range(4)]
    alone_clean = model.generate(CLIP, max_new_tokens=20)
    alone_deaf = model.generate(CLIP, fwd_hooks=deaf, max_new_tokens=20)
    assert not torch.equal(alone_clean, alone_deaf), (
        "the ablation must change the tokens for the test to prove anything"
    )
    _, alone_cache = model.run_with_cache(CLIP, alone_clean[:, :-1])
    results: dict[str, list] = {"clean": [], "deaf": [], "cache": []}

    def clean_runs():
        for _ in range(10):
            results["clean"].append(model.generate(CLIP, max_new_tokens=20))

    def deaf_runs():
        for _ in range(10):
            results["deaf"].append(model.generate(CLIP, fwd_hooks=deaf, max_new_tokens=20))
            results["cache"].append(model.run_with_cache(CLIP, alone_clean[:, :-1])[1])

    threads = [threading.Thread(target=clean_runs), threading.Thread(target=deaf_runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results["clean"]) == len(results["deaf"]) == 10
    assert all(torch.equal(r, alone_clean) for r in results["clean"])
    assert all(torch.equal(r, alone_deaf) for r in results["deaf"])
    for cache in results["cache"]:
        assert sorted(cache.keys()) == sorted(alone_cache.keys())
        assert torch.equal(cache["hook_tokens"], alone_cache["hook_tokens"])
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())
