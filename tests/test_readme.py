"""Every Python example in the README runs as written, each in a fresh interpreter (so each block
must stand on its own, as a reader copies it). The interpreters run three at a time: starting
Python with torch is most of each block's time."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 5


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, tuple[subprocess.CompletedProcess, Path]]:
    def run(index: int) -> tuple[subprocess.CompletedProcess, Path]:
        folder = tmp_path_factory.mktemp(f"block{index}")
        code = "import matplotlib\nmatplotlib.use('Agg')\n" + BLOCKS[index].replace(
            '"logit_lens.png"', repr(str(folder / "lens.png"))
        )
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
        return done, folder

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(range(len(BLOCKS)), pool.map(run, range(len(BLOCKS)))))


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_on_its_own(index, runs):
    done, folder = runs[index]
    assert done.returncode == 0, f"README block {index} failed:\n{BLOCKS[index]}\n{done.stderr[-3000:]}"
    if '"logit_lens.png"' in BLOCKS[index]:
        assert (folder / "lens.png").is_file()
