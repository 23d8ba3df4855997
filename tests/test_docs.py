"""The docs stay true: every block marked runnable runs, every relative link resolves, and
nothing points outside the repository.

A runnable block is a ```python fence directly after a line `<!-- runnable -->`. A page's
runnable blocks run in order in one fresh interpreter (later blocks use earlier names), in a
temporary directory, offline.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- runnable -->"
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
# Pages other sessions write: linked from here before they land in this tree.
EXPECTED_PAGES = {
    "docs/architecture.md",
    "docs/fidelity.md",
    "docs/install.md",
    "docs/porting.md",
    "docs/scale-out.md",
    "docs/security.md",
}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```")


def runnable_blocks(text: str) -> list[str]:
    """The code of each ```python block whose fence directly follows the runnable marker."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        if i + 1 >= len(lines) or lines[i + 1].strip() != "```python":
            raise AssertionError(f"line {i + 1}: {MARKER} is not directly followed by a ```python fence")
        end = next(j for j in range(i + 2, len(lines)) if FENCE.match(lines[j]))
        blocks.append("\n".join(lines[i + 2 : end]))
    return blocks


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_runnable_blocks_are_found_with_their_code():
    text = f"intro\n{MARKER}\n```python\nx = 1\ny = x + 1\n```\n```python\nnot marked\n```\n"
    assert runnable_blocks(text) == ["x = 1\ny = x + 1"]
    with pytest.raises(AssertionError, match="not directly followed"):
        runnable_blocks(f"{MARKER}\n\n```python\nx = 1\n```\n")


@pytest.mark.parametrize("page", [p for p in PAGES if MARKER in p.read_text()], ids=lambda p: _relative(p))
def test_runnable_blocks_run(page, tmp_path):
    code = "\n\n".join(runnable_blocks(page.read_text()))
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{_relative(page)}: its runnable blocks failed:\n{done.stderr[-4000:]}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: _relative(p))
def test_relative_links_resolve_inside_the_repository(page):
    text = page.read_text()
    assert "../shared" not in text and "/work/shared" not in text, "points outside the repository"
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        resolved = (page.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{target} leaves the repository"
        name = _relative(resolved)
        assert resolved.exists() or name in EXPECTED_PAGES, f"{_relative(page)} links to missing {target}"
