"""Every Python example in the README and in docs/ runs as written, each in a process of its own
from the repository root, with fresh globals: a block must stand on its own, as a reader copies it.

The processes are forked from one warm interpreter that has only imported the libraries (torch,
TransformerLens, hooked_whisper, matplotlib with the Agg backend) and run nothing: a block still
executes its own imports and would fail on a missing one, but does not pay three seconds of
imports each time."""

from __future__ import annotations

import json
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

# Reads one JSON request a line ({"code", "stdout", "stderr"}), forks, runs the code in the child
# with fresh globals and its output sent to the two files, and answers with the child's exit status.
SERVER = r"""
import json, os, sys, traceback
import matplotlib
matplotlib.use("Agg")
import torch, transformer_lens, hooked_whisper.model, hooked_whisper.lens, hooked_whisper.patching
import hooked_whisper.probing, hooked_whisper.plots, hooked_whisper.qwen2_audio
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            exec(compile(request["code"], "<block>", "exec"), {"__name__": "__main__"})
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.fixture(scope="module")
def run_block():
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )

    def run(code: str, tmp_path: Path) -> tuple[int, str]:
        out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        server.stdin.write(json.dumps({"code": code, "stdout": str(out), "stderr": str(err)}) + "\n")
        server.stdin.flush()
        status = server.stdout.readline()
        assert status, "the block server died"
        return int(status), err.read_text() if err.exists() else ""

    yield run
    server.stdin.close()
    server.wait(timeout=60)


def test_the_readme_has_a_quick_start():
    assert any(page.name == "README.md" for page, _, _ in BLOCKS)


def test_a_failing_block_is_reported(run_block, tmp_path):
    """The runner can fail: a block that uses a name it never imported (fresh globals) fails."""
    status, err = run_block("print(HookedWhisper)", tmp_path)
    assert status == 1 and "NameError" in err


@pytest.mark.parametrize(
    "page, index, code", BLOCKS, ids=[f"{page.relative_to(ROOT)}:{index}" for page, index, _ in BLOCKS]
)
def test_block_runs_on_its_own(page, index, code, tmp_path, run_block):
    picture = repr(str(tmp_path / "lens.png"))
    status, err = run_block(code.replace('"logit_lens.png"', picture), tmp_path)
    where = f"{page.relative_to(ROOT)} block {index}"
    assert status == 0, f"{where} failed:\n{code}\n{err[-3000:]}"
    if '"logit_lens.png"' in code:
        assert (tmp_path / "lens.png").is_file(), f"{where} wrote no picture"
