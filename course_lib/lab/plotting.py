"""One look for every plot in the course: titled, labelled axes with units, a grid, a legend.

Plot text (titles, axis labels, legends) is in English so that it renders with the fonts every
machine has; the lesson prose around it is in Chinese.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt

STYLE = {
    "figure.figsize": (8, 4.2),
    "figure.dpi": 90,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "axes.titleweight": "bold",
}


def use_style() -> None:
    plt.rcParams.update(STYLE)


def new_axes(title: str, xlabel: str, ylabel: str, ncols: int = 1, figsize=None, **kw):
    """``fig, ax`` (or a row of axes) with the house style, a title and labelled axes."""
    use_style()
    fig, axes = plt.subplots(
        1,
        ncols,
        figsize=figsize
        or (STYLE["figure.figsize"][0] * (1 if ncols == 1 else 0.6 * ncols), STYLE["figure.figsize"][1]),
        **kw,
    )
    for ax in axes if ncols > 1 else [axes]:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    if ncols == 1:
        axes.set_title(title)
    else:
        fig.suptitle(title, fontweight="bold")
    return fig, axes


def label(
    ax, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None, legend: bool = True
) -> None:
    if title:
        ax.set_title(title)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend()


def smooth(values: Sequence[float], window: int = 10) -> list:
    """Trailing moving average, for noisy loss curves (the raw curve should be plotted too)."""
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def print_table(rows: Sequence[dict], columns: Sequence[str] | None = None, floatfmt: str = "{:.4g}") -> None:
    """A plain aligned text table (renders the same in notebooks, terminals and stored outputs)."""
    if not rows:
        print("(empty)")
        return
    cols = list(columns or rows[0].keys())

    def fmt(v):
        return floatfmt.format(v) if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
