#!/usr/bin/env python3
"""Copy prose edits from notebooks/src/<name>.py into the stored notebooks/<name>.ipynb without
executing anything.

    python tools/sync_markdown.py 4.0.1-checkpoint-resume 4.1.1-checkpoint-management

Copied: every markdown cell whose text differs (markdown cells have no outputs), and a code cell
whose text differs only in its comments (its stored outputs stay true: comments do not run).
Refused (exit 1, nothing written): a different number or order of cells, or a code cell whose
code changed; such a notebook needs `python tools/build_notebooks.py <name>`.
The conversion is the build tool's own (`to_notebook`: the measured run time filled in), so
tests/test_notebook_sources.py sees exactly what a rebuild would have stored.
"""

from __future__ import annotations

import io
import sys
import tokenize
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_notebooks import NB_DIR, SRC_DIR, to_notebook  # noqa: E402


def code_without_comments(source: str) -> list[tuple[int, str]]:
    """The tokens that run: comments, blank lines and indentation-only differences ignored."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    try:
        return [
            (t.type, t.string) for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in skip
        ]
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return [(-1, source)]  # not plain Python (a magic?): compare as text


def sync(name: str) -> int:
    src = SRC_DIR / f"{name}.py"
    stored_path = NB_DIR / f"{name}.ipynb"
    want = to_notebook(src)
    nb = nbformat.read(stored_path, as_version=4)
    if [c.cell_type for c in want.cells] != [c.cell_type for c in nb.cells]:
        raise SystemExit(f"{name}: the cells differ in number or type: rebuild it (tools/build_notebooks.py {name})")
    changed = 0
    for i, (w, s) in enumerate(zip(want.cells, nb.cells, strict=True)):
        if w.source == s.source:
            continue
        if w.cell_type == "code" and code_without_comments(w.source) != code_without_comments(s.source):
            raise SystemExit(
                f"{name}: code cell {i} changed more than its comments: rebuild it (tools/build_notebooks.py {name})"
            )
        s.source = w.source
        changed += 1
    if changed:
        nbformat.write(nb, stored_path)
    print(f"{name}: {changed} cell(s) copied")
    return changed


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    for n in sys.argv[1:]:
        sync(n.removesuffix(".py").removesuffix(".ipynb"))
