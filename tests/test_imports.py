"""The dependency graph of course_lib is explicit and acyclic.

Every import of one course_lib module by another sits at the top of the importing module (so
the graph can be read from the file heads), and that graph has no cycle. Imports of
third-party or optional packages inside functions are fine (e.g. ``torch.ao`` guarded by
``try``); this test only looks at imports between course_lib modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "course_lib"
# The two layers: the ML core (course_lib/*.py) and the course machinery (course_lib/lab/*.py).
# Module names below are relative to course_lib: "model", "lab.grading".
SUBPACKAGES = ("lab",)


def _modules() -> dict[str, ast.Module]:
    files = sorted(PKG.glob("*.py")) + [f for sub in SUBPACKAGES for f in sorted((PKG / sub).glob("*.py"))]
    return {_name(f): ast.parse(f.read_text(encoding="utf-8"), str(f)) for f in files}


def _name(f: Path) -> str:
    rel = f.relative_to(PKG).with_suffix("")
    parts = [x for x in rel.parts if x != "__init__"]
    return ".".join(parts) or "__init__"


def _package(name: str) -> str:
    """The package a module's relative imports start from ("" = course_lib, "lab" = course_lib.lab)."""
    return name.rsplit(".", 1)[0] if "." in name else ""


def _resolve(dotted: str, known: set[str]) -> str | None:
    """The known module that a dotted name (relative to course_lib) refers to, or None."""
    while dotted:
        if dotted in known:
            return dotted
        dotted = dotted.rsplit(".", 1)[0] if "." in dotted else ""
    return None


def _targets(node: ast.AST, known: set[str], importer: str = "") -> list[str]:
    """course_lib modules named by an import node (relative or absolute), as names relative to course_lib."""
    out = []
    if isinstance(node, ast.ImportFrom):
        mod = node.module or ""
        if node.level >= 1:
            pkg = _package(importer).split(".") if _package(importer) else []
            pkg = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
            base = ".".join(pkg + ([mod] if mod else []))
        elif mod == "course_lib" or mod.startswith("course_lib."):
            base = mod.removeprefix("course_lib").lstrip(".")
        else:
            return []
        for a in node.names:  # from X import name: name may be a submodule of X
            sub = f"{base}.{a.name}" if base else a.name
            hit = sub if sub in known else _resolve(base, known)
            if hit:
                out.append(hit)
    elif isinstance(node, ast.Import):
        for a in node.names:
            if a.name.startswith("course_lib."):
                hit = _resolve(a.name.removeprefix("course_lib."), known)
                if hit:
                    out.append(hit)
    return [t for t in out if t in known]


def _top_level_imports(tree: ast.Module) -> list[ast.AST]:
    """Imports executed when the module is imported or run (module body, incl. if/try blocks
    there, ``if __name__ == "__main__":`` too: an entry point's imports are edges of the graph)."""
    found = []
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.If, ast.Try)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                stack.extend(getattr(node, field, []) or [])
        elif isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)
    return found


def graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {
        name: {t for n in _top_level_imports(tree) for t in _targets(n, known, name)} - {name}
        for name, tree in mods.items()
    }


def test_no_function_local_imports_between_course_lib_modules():
    mods = _modules()
    known = set(mods)
    bad = []
    for name, tree in mods.items():
        top = {id(n) for n in _top_level_imports(tree)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top and _targets(node, known):
                bad.append(f"course_lib/{name.replace('.', '/')}.py:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "course_lib 模块之间的 import 应写在文件开头（依赖关系一目了然）；这些写在函数里：\n" + "\n".join(
        bad
    )


def find_cycle(g: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path [a, b, ..., a], or [] if the graph is acyclic."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    path: list[str] = []

    def visit(n: str) -> list[str]:
        state[n] = 1
        path.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        path.pop()
        state[n] = 2
        return []

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def test_find_cycle_detects_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_course_lib_has_no_import_cycle():
    cycle = find_cycle(graph())
    assert not cycle, "course_lib 的 import 有环 (import cycle)：" + " -> ".join(cycle)


def test_leaf_modules_import_nothing_from_course_lib():
    g = graph()
    for leaf in ("absmax", "fsio", "callbacks", "util", "lab.paths"):
        if leaf in g:
            assert not g[leaf], (
                f"course_lib/{leaf.replace('.', '/')}.py 应是叶子模块 (leaf)，却导入了 {sorted(g[leaf])}"
            )


def test_core_never_imports_the_course_machinery():
    """The layer rule: the ML core (course_lib/*.py) is a library a learner can take away;
    it never imports course_lib.lab (grading, quizzes, lesson measurements, plotting)."""
    mods = _modules()
    known = set(mods)
    bad = []
    for name, tree in mods.items():
        if name.startswith("lab"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                hits = [t for t in _targets(node, known, name) if t == "lab" or t.startswith("lab.")]
                if hits:
                    bad.append(f"course_lib/{name}.py:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "核心模块 (core) 不应导入课程工具 course_lib.lab：\n" + "\n".join(bad)


def test_the_graph_sees_both_layers():
    g = graph()
    assert "lab.grading" in g and "model" in g
    assert "model" in g["lab.measure"], "course_lib/lab/measure.py 导入 model（由 from ..model import 解析）"


def test_cli_is_a_leaf_of_shared_helpers():
    """cli.py builds parsers from the config metadata and formats one-line errors; the entry points
    are train.main() and generate.main(), so cli imports nothing but config (no cycle back)."""
    assert graph()["cli"] <= {"config"}, f"course_lib/cli.py 只应导入 config，却导入了 {sorted(graph()['cli'])}"
