"""Every Python example in the README runs as written, each in a fresh interpreter (so each block
must stand on its own, as a reader copies it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_on_its_own(index, tmp_path):
    code = "import matplotlib\nmatplotlib.use('Agg')\n" + BLOCKS[index].replace(
        '"logit_lens.png"', repr(str(tmp_path / "lens.png"))
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"README block {index} failed:\n{BLOCKS[index]}\n{done.stderr[-3000:]}"
    if '"logit_lens.png"' in BLOCKS[index]:
        assert (tmp_path / "lens.png").is_file()
