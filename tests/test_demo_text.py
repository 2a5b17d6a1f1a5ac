"""Every generation demo in a stored notebook prints text a person would believe.

A demo cell carries a `# DEMO_TEXT` comment line and prints its text with
`course_lib.lab.demo.show_sample` (between "── sample ... ──" and "── end of sample ──"). For every
such cell of every stored notebook this test requires at least one printed sample, and each
sample must
- not loop: distinct character 4-grams / all 4-grams >= 0.5 ("the the the ..." scores ~0.1);
- be mostly visible text: at most half of its characters whitespace;
- be long enough to judge: at least 30 visible characters.

The stored notebooks are read as committed (tests/committed.py). `DEMO_TEXT_DIR=/some/dir` reads
the notebooks in that folder instead (e.g. a quick-mode build from tools/build_notebooks.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib.lab.demo import distinct_ngram_ratio, sample_blocks, whitespace_fraction

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from committed import committed_names, stored_notebook  # noqa: E402

MARKER = "# DEMO_TEXT"
MIN_DISTINCT_4GRAMS = 0.5
MAX_WHITESPACE = 0.5
MIN_VISIBLE = 30
REBUILD = "（课程维护者用 `make notebooks NB={}` 重新生成该 notebook）"


def demo_sources() -> list[Path]:
    return sorted(
        p
        for p in (ROOT / "notebooks" / "src").glob("*.py")
        if any(line.strip() == MARKER for line in p.read_text(encoding="utf-8").splitlines())
    )


def _notebook(stem: str) -> nbformat.NotebookNode:
    other = os.environ.get("DEMO_TEXT_DIR")
    if other:
        return nbformat.read(Path(other) / f"{stem}.ipynb", as_version=4)
    path = ROOT / "notebooks" / f"{stem}.ipynb"
    assert path in committed_names("notebooks", ".ipynb"), f"缺少 {path.name} {REBUILD.format(stem)}"
    return stored_notebook(path)


def cell_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "data" in out and "text/plain" in out["data"]:
            parts.append(out["data"]["text/plain"])
    return "".join(parts)


def problems(text: str) -> list[str]:
    """What is wrong with one printed sample (empty list: fine)."""
    out = []
    ratio = distinct_ngram_ratio(text)
    if ratio < MIN_DISTINCT_4GRAMS:
        out.append(f"重复太多 (distinct-4-gram ratio {ratio:.2f} < {MIN_DISTINCT_4GRAMS})")
    ws = whitespace_fraction(text)
    if ws > MAX_WHITESPACE:
        out.append(f"大部分是空白 (whitespace {ws:.0%} > {MAX_WHITESPACE:.0%})")
    visible = sum(not ch.isspace() for ch in text)
    if visible < MIN_VISIBLE:
        out.append(f"太短 ({visible} 个可见字符 < {MIN_VISIBLE})")
    return out


def test_problems_catch_loops_and_blanks():
    assert problems("def " + "the " * 30)
    assert problems("def" + " " * 120)
    assert problems("x = 1")
    assert not problems("def __init__(self, name):\n    self.name = name\n    self.items = []\n")


def test_some_notebooks_have_demos():
    assert demo_sources(), f"no notebook source has a `{MARKER}` cell"


@pytest.mark.parametrize("src", demo_sources(), ids=lambda p: p.stem)
def test_demo_text_reads_as_text(src):
    nb = _notebook(src.stem)
    cells = [
        c for c in nb.cells if c.cell_type == "code" and any(line.strip() == MARKER for line in c.source.splitlines())
    ]
    assert cells, f"{src.stem}.ipynb 里没有 `{MARKER}` 单元格，源文件里有 {REBUILD.format(src.stem)}"
    bad = []
    for i, cell in enumerate(cells):
        blocks = sample_blocks(cell_text(cell))
        if not blocks:
            bad.append(f"第 {i + 1} 个 DEMO_TEXT 单元格没有打印样本（用 course_lib.lab.demo.show_sample 打印）")
        for text in blocks:
            for p in problems(text):
                bad.append(f"第 {i + 1} 个 DEMO_TEXT 单元格: {p}: {text[:120]!r}")
    assert not bad, f"{src.stem}.ipynb 的生成示例不像正常文本:\n" + "\n".join(bad)
