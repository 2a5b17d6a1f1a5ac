"""pytest plugin (`-p nbval_save`): after nbval has run a notebook, write the outputs it got back
into the notebook file, as JupyterLab's autosave does after Run All.

The learner-steps test (tests/test_learner_workspace.py) runs each lesson copy in my-notebooks/
through nbval (its `# NBVAL_CHECK_OUTPUT` cells compared with the stored outputs, every cell
free of errors) and then checks that saving the run changed nothing git sees.
"""

from __future__ import annotations

import nbformat


def pytest_sessionfinish(session):
    notebooks = {}
    for n, item in enumerate(session.items, start=1):
        outputs = getattr(item, "test_outputs", None)
        if type(item).__name__ != "IPyNbCell" or outputs is None:
            continue
        item.cell.outputs = [nbformat.from_dict(o) for o in outputs]
        item.cell.execution_count = n
        notebooks[str(item.path)] = item.parent.nb
    for path, nb in notebooks.items():
        nbformat.write(nb, path)
