"""Stored notebooks never drift from their jupytext sources, and always hold a clean full run.

- every notebooks/src/<name>.py has notebooks/<name>.ipynb whose cells (type and source)
  equal the jupytext conversion of the source  -> rebuild with `make notebooks NB=<name>`;
- every stored notebook was executed (all code cells have an execution count, some output)
  and holds no error output;
- no notebook or source uses NBVAL_RAISES_EXCEPTION (it passes even when nothing is raised).

The stored notebooks are read as committed (`git show HEAD:`, tests/committed.py): a learner works
in the copies `make lab` makes under my-notebooks/, and even a stored notebook autosaved by
JupyterLab does not turn this test red.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))
from build_notebooks import to_notebook  # noqa: E402
from committed import committed_names, stored_notebook  # noqa: E402

SOURCES = sorted((NB_DIR / "src").glob("*.py"))
STORED = committed_names("notebooks", ".ipynb")
AUTHORS = "（课程维护者 (course authors) 用 `make notebooks NB={}` 重新生成；学习者不需要做任何事）"


def test_there_are_notebooks():
    assert SOURCES, "notebooks/src/ 里没有任何 notebook 源文件"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_stored_notebook_matches_source(src):
    stored_path = NB_DIR / f"{src.stem}.ipynb"
    assert stored_path in STORED, f"缺少 {stored_path.name} {AUTHORS.format(src.stem)}"
    want = [(c.cell_type, c.source) for c in to_notebook(src).cells]
    got = [(c.cell_type, c.source) for c in stored_notebook(stored_path).cells]
    for i, (w, g) in enumerate(zip(want, got, strict=False)):
        assert w == g, (
            f"{stored_path.name} 第 {i} 个单元格与源文件 {src.name} 不一致 (drift) {AUTHORS.format(src.stem)}"
            f"\n期望: {w!r:.300}\n实际: {g!r:.300}"
        )
    assert len(want) == len(got), (
        f"{stored_path.name} 有 {len(got)} 个单元格，源文件转换后应有 {len(want)} 个 {AUTHORS.format(src.stem)}"
    )


@pytest.mark.parametrize("path", STORED, ids=lambda p: p.stem)
def test_stored_notebook_has_clean_outputs(path):
    assert (NB_DIR / "src" / f"{path.stem}.py").is_file(), f"{path.name} 没有对应的源文件 notebooks/src/{path.stem}.py"
    nb = stored_notebook(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    not_run = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.execution_count is None]
    assert not not_run, f"{path.name} 的单元格 {not_run} 没有执行过 {AUTHORS.format(path.stem)}"
    assert any(c.outputs for c in code), f"{path.name} 没有任何输出 (outputs)"
    errors = [
        (i, o.get("ename"))
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert not errors, f"{path.name} 保存了错误输出 (error outputs): {errors}"


@pytest.mark.parametrize("path", SOURCES + STORED, ids=lambda p: p.name)
def test_no_nbval_raises_exception(path):
    text = path.read_text(encoding="utf-8") if path.suffix == ".py" else nbformat.writes(stored_notebook(path))
    assert "NBVAL_RAISES_EXCEPTION" not in text, (
        f"{path.name} 使用了 NBVAL_RAISES_EXCEPTION：即使没有抛出异常它也会通过，不能用来证明任何事"
    )


NOISE = [
    (re.compile(r"USDT:|profiler_start|profiler_stop"), "性能分析器 (profiler) 的原生日志"),
    (re.compile(r"<[\w.]+(?: object)? at 0x[0-9a-fA-F]+>"), "对象的 repr（如 <torch._C.Generator at 0x…>）"),
    (re.compile(r"(?<![\w.])0%\|"), "停在 0% 的进度条"),
    (re.compile(r"(?<![\w.~])/(?:work|root|home|Users|tmp|__w|opt|usr|var|private)/[\w.-]+"), "构建机器上的绝对路径"),
    (re.compile(r"[\w.-]+[\\/](?:site|dist)-packages\b"), "Python 安装目录里的路径"),
    (re.compile(r"Triggered internally at"), "torch C++ 警告里的源码位置（构建 torch 的机器上的路径）"),
]

# Stored notebooks whose noise is already fixed at its cause but which wait for the lead's rebuild:
# {stem: (cell index, what the old output still shows)}. Only that exact noise in that cell is let
# through; delete the entry once the notebook is rebuilt.
AWAITING_REBUILD: dict[str, tuple[int, str]] = {}


def _output_text(output) -> str:
    if output.output_type == "stream":
        return output.get("text", "")
    data = output.get("data", {})
    return "".join(
        data.get(k, "") for k in ("text/plain", "text/markdown", "text/html") if isinstance(data.get(k, ""), str)
    )


@pytest.mark.parametrize("path", STORED, ids=lambda p: p.stem)
def test_stored_outputs_have_no_noise(path):
    """A learner reads the stored outputs before running anything: no stderr, no profiler chatter,
    no object reprs, no frozen progress bars, no paths of the machine that built them."""
    found = []
    for i, c in enumerate(stored_notebook(path).cells):
        if c.cell_type != "code":
            continue
        for o in c.outputs:
            if o.output_type == "stream" and o.get("name") == "stderr":
                found.append(f"单元格 {i}: stderr 输出 {o.get('text', '')[:80]!r}")
                continue
            text = _output_text(o)
            waiting = AWAITING_REBUILD.get(path.stem)
            if waiting and waiting[0] == i and waiting[1] in text:
                text = text.replace(waiting[1], "")  # fixed at its cause; the rebuild removes it
            for pattern, what in NOISE:
                m = pattern.search(text)
                if m:
                    found.append(f"单元格 {i}: {what}: {text[max(0, m.start() - 30) : m.end() + 30]!r}")
    assert not found, f"{path.name} 的保存输出里有噪声 {AUTHORS.format(path.stem)}：\n" + "\n".join(found[:10])
