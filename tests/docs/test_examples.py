"""Every Python example in the README and in docs/ runs as written, each in a fresh interpreter
from the repository root (so each block must stand on its own, as a reader copies it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCKS = [
    (page, index, code)
    for page in PAGES
    for index, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))
]


def test_the_readme_has_a_quick_start():
    assert any(page.name == "README.md" for page, _, _ in BLOCKS)


@pytest.mark.parametrize(
    "page, index, code", BLOCKS, ids=[f"{page.relative_to(ROOT)}:{index}" for page, index, _ in BLOCKS]
)
def test_block_runs_on_its_own(page, index, code, tmp_path):
    run = "import matplotlib\nmatplotlib.use('Agg')\n" + code.replace(
        '"logit_lens.png"', repr(str(tmp_path / "lens.png"))
    )
    done = subprocess.run([sys.executable, "-c", run], cwd=ROOT, capture_output=True, text=True, timeout=600)
    where = f"{page.relative_to(ROOT)} block {index}"
    assert done.returncode == 0, f"{where} failed:\n{code}\n{done.stderr[-3000:]}"
    if '"logit_lens.png"' in code:
        assert (tmp_path / "lens.png").is_file(), f"{where} wrote no picture"
