"""Two one-liners that every layer needs, written once (a leaf module: imports nothing from course_lib)."""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """Ceiling division for non-negative ints: how many blocks of size ``b`` hold ``a`` items."""
    return -(-a // b)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name if it has none.

    For one-line error reports: torch's messages often carry a multi-line C++ trace after the
    sentence that matters."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
