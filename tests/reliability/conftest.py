from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_corpus(tmp_path) -> str:
    """A small .txt corpus (the course library's own sources): loads in milliseconds."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "course_lib").glob("*.py")))
    path = tmp_path / "corpus.txt"
    path.write_text(text[:60_000], encoding="utf-8")
    return str(path)
