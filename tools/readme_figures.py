"""Copy a few plots from the stored (executed) notebooks into docs/img/ for the README.

    python tools/readme_figures.py        # after `make notebooks`

Figures are picked by notebook and by the first line of the plot's title text in the cell
source (robust to cells moving around). A figure that is not found is an error, not a silent skip.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img"

# (output file, notebook, text that appears in the source of the cell that draws it)
FIGURES = [
    ("resume.png", "4.0.1-checkpoint-resume.ipynb", "new_axes("),
    ("warmup.png", "4.0.2-lr-warmup.ipynb", "lr x warmup grid"),
    ("kv-cache.png", "4.2.3-kv-cache.ipynb", "new_axes("),
    ("batched.png", "4.2.4-batched-inference.ipynb", "new_axes("),
]


def extract(nb_name: str, needle: str) -> bytes:
    nb = nbformat.read(ROOT / "notebooks" / nb_name, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code" or needle not in cell.source:
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" in data:
                return base64.b64decode(data["image/png"])
    raise LookupError(f"{nb_name}: no PNG output in a cell containing {needle!r}")


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for fname, nb_name, needle in FIGURES:
        png = extract(nb_name, needle)
        (OUT / fname).write_bytes(png)
        print(f"{nb_name} -> docs/img/{fname} ({len(png):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
