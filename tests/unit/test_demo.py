"""course_lib.lab.demo (sampling demos and the text checks) and course_lib.lab.experiments (lr x warmup grid)."""

import contextlib
import io
import math

import pytest
import torch

import course_lib.lab.demo as demo
from course_lib.config import ModelConfig
from course_lib.data import ByteTokenizer
from course_lib.lab.demo import (
    distinct_ngram_ratio,
    sample_blocks,
    sample_text,
    show_sample,
    stream_sample,
    whitespace_fraction,
)
from course_lib.lab.experiments import cell_summary, final_loss, lr_warmup_grid, spike
from course_lib.model import DIYModel


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=256)
    return DIYModel(cfg).eval(), ByteTokenizer()


def test_same_seed_same_text_other_seed_other_text(tiny):
    model, tok = tiny
    a = sample_text(model, tok, "def ", 60, seed=3, stop=None)
    assert a == sample_text(model, tok, "def ", 60, seed=3, stop=None)
    assert a != sample_text(model, tok, "def ", 60, seed=4, stop=None)


def test_stop_string_ends_the_text_and_is_not_included(tiny, monkeypatch):
    model, tok = tiny
    pieces = ["ab", "c\n", "\nd", "ef"]  # the newline pair straddles two pieces
    monkeypatch.setattr(demo, "stream_generate", lambda *a, **k: iter(pieces))
    out = "".join(stream_sample(model, tok, "x", 10))
    assert "\n\n" not in out and out.startswith("abc") and "d" not in out
    assert "".join(stream_sample(model, tok, "x", 10, stop=None)) == "abc\n\ndef"


def test_show_sample_prints_a_block_the_test_can_find(tiny):
    model, tok = tiny
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        text = show_sample(model, tok, "import ", 40, seed=1)
    assert sample_blocks(buf.getvalue()) == ["import " + text]


def test_text_measures():
    assert distinct_ngram_ratio("the " * 30) < 0.2
    assert distinct_ngram_ratio("abcdefgh") == 1.0
    assert whitespace_fraction(" " * 10 + "ab") > 0.8 and whitespace_fraction("") == 1.0


def test_grid_shapes_and_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RUNS_DIR", str(tmp_path))
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)
    seen = []
    curves = lr_warmup_grid(
        cfg, (0.01,), (0, 2), (0, 1), 3, name="test-grid", on_cell=seen.append, batch_size=2, seq_len=16
    )
    assert set(curves) == {(0.01, 0), (0.01, 2)} and all(len(r) == 3 for runs in curves.values() for r in runs)
    # same seed -> same first loss (same init, same first batch) whatever the warmup
    assert curves[(0.01, 0)][0][0] == curves[(0.01, 2)][0][0]
    assert [c["warmup"] for c in seen] == [0, 2]


def test_spike_and_final():
    assert spike([5.5, 5.0, 4.0]) == 0.0
    assert spike([5.5, 9.5, 4.0]) == pytest.approx(4.0)
    assert spike([5.5, 5.0, 9.5], within=2) == 0.0
    assert final_loss([3.0] * 5 + [1.0] * 10) == 1.0
    s = cell_summary(0.1, 0, [[5.0, 7.0, 3.0], [5.0, math.inf, math.inf]])
    assert s["diverged runs"] == 1 and s["spike (max seed)"] == math.inf
