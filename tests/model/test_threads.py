"""Hooks never leak across threads."""

from __future__ import annotations

import threading

import pytest
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


def _zero(x, hook):
    return torch.zeros_like(x)


def _in_other_thread(fn) -> tuple[threading.Thread, dict]:
    """Run ``fn`` on a daemon thread (a failure cannot hang the suite); its result or error lands in the dict."""
    out: dict = {}

    def target():
        try:
            out["result"] = fn()
        except Exception as error:  # noqa: BLE001 (handed back to the test)
            out["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def test_encode_waits_for_another_threads_hooks(small):
    """``encode`` holds the model's lock: called while another thread's block zeroes the encoder
    output, it waits for the block to end and returns the clean output."""
    clean = small.encode(CLIP)
    assert clean.abs().max() > 0
    with small.hooks([("hook_encoder_out", _zero)]):
        thread, out = _in_other_thread(lambda: small.encode(CLIP))
        thread.join(0.5)  # the block holds the model: the other thread must still be waiting
        assert thread.is_alive(), "encode ran inside another thread's hooks() block"
        assert not small.encode(CLIP).any()  # the block's own thread sees its hook
    thread.join(30)
    assert "error" not in out, out.get("error")
    assert torch.equal(out["result"], clean)


def test_reset_hooks_from_another_thread_waits_for_the_block(small):
    """``reset_hooks`` from another thread does not strip a running block: it waits for its end."""
    with small.hooks([("hook_encoder_out", _zero)]):
        thread, out = _in_other_thread(small.reset_hooks)
        thread.join(0.5)
        assert thread.is_alive(), "reset_hooks ran inside another thread's hooks() block"
        assert not small.encode(CLIP).any(), "the block's hook was stripped"
    thread.join(30)
    assert not thread.is_alive() and "error" not in out
    assert not any(hp.has_hooks() for hp in small.hook_dict.values())


def test_worker_started_inside_a_block_gets_an_error_not_a_deadlock(small, monkeypatch):
    """A thread pool's worker calling the model while the block that waits on it holds the model
    would wait forever; it gets a RuntimeError saying what to do, and the block then ends cleanly."""
    from concurrent.futures import ThreadPoolExecutor

    from hooked_whisper.hooked_audio_model import ModelLock

    monkeypatch.setattr(ModelLock, "grace_s", 0.3)
    # The pool outside the block: a regression's timeout ends the block before the pool joins its worker.
    with ThreadPoolExecutor(1) as pool, small.hooks([("hook_encoder_out", _zero)]):
        future = pool.submit(small.encode, CLIP)
        with pytest.raises(RuntimeError, match=r"deepcopy\(model\)"):
            future.result(timeout=30)  # a regression fails here instead of hanging
    assert not any(hp.has_hooks() for hp in small.hook_dict.values())
    assert small.encode(CLIP).abs().max() > 0  # the lock was released
