"""Every Python example in the README runs as written (in order, in one namespace)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib

ROOT = Path(__file__).parent.parent


def test_readme_examples_run(tmp_path):
    matplotlib.use("Agg")
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(ROOT)  # the examples use repository-relative paths
    try:
        for block in blocks:
            exec(
                compile(block.replace('"logit_lens.png"', repr(str(tmp_path / "lens.png"))), "README.md", "exec"),
                namespace,
            )
    finally:
        os.chdir(cwd)
    assert (tmp_path / "lens.png").is_file()
    assert namespace["effect"].shape == (namespace["model"].cfg.n_decoder_layers * namespace["model"].cfg.n_heads,)
