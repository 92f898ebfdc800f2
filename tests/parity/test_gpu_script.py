"""``benchmarks/gpu.py`` end to end on the CPU with small shapes (``--device cpu --tiny``): the
script a GPU run depends on works before any GPU time is spent on it, its parity section holds
on this device, and every row and target it reports is there."""

from __future__ import annotations

import json

from benchmarks import gpu


def test_gpu_script_runs_end_to_end_on_the_cpu(tmp_path):
    gpu.main(["--device", "cpu", "--tiny", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["complete"] and not data["skipped"]
    [parity], [bf16] = data["parity"], data["bfloat16"]
    assert parity["model"] == "tiny-random-en" and parity["hooks_compared"] >= 50  # every site of 2 + 2 layers
    assert parity["every_hook_within_spread"], parity["failures"]
    assert bf16["model"] == "tiny.en" and bf16["greedy_equals_fp32"]
    parts = {(r["model"], r["dtype"], r["batch"], r["part"]) for r in data["speed"] if r["ratio"] > 0}
    for model, n_parts in (("tiny-random", 5), ("tiny-random-audio-llm", 4)):  # every part of each
        assert len([p for p in parts if p[0] == model]) >= n_parts, f"{model}: missing speed rows"
    assert data["extraction"][0]["speedup"] > 0 and data["extraction"][0]["ours_gb_per_min"] > 0
    for name in ("forward_bf16_vs_hf_sdpa", "cache_every_hook_vs_hf_eager_all_outputs", "extraction_vs_hf_hooks"):
        assert data["targets"][name]["worst"] > 0, name  # measured: a ratio, whether or not the CPU meets it
    assert "## Targets" in (tmp_path / "gpu.md").read_text()
