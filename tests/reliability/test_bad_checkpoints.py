"""Bad checkpoints get a clear error naming the file and the problem; automatic resume falls
back to the previous good one; a different model config is a hard error (never a fallback,
never an overwrite); a malicious pickle is refused and its code never runs."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from course_lib.checkpoint import (
    MARKER_FILE,
    STATE_FILE,
    CheckpointError,
    CheckpointManager,
    safe_torch_load,
    sha256_file,
)
from course_lib.config import ModelConfig, TrainConfig
from course_lib.train import ConfigMismatchError, Trainer

MC = dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)


def small_state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"model": {"w": torch.randn(8, 8, generator=g)}, "step": step, "config": {"model": {}}}


def two_checkpoints(tmp_path) -> tuple[CheckpointManager, Path, Path]:
    mgr = CheckpointManager(tmp_path, keep_last=5, verbose=False)
    good = mgr.save(2, small_state(2))
    newest = mgr.save(4, small_state(4))
    return mgr, good, newest


def reseal(folder: Path) -> None:
    """Rewrite the marker so size and checksum match the (damaged) file: this gets past the
    marker checks and exercises the torch.load-level error handling."""
    m = json.loads((folder / MARKER_FILE).read_text())
    m["bytes"] = (folder / STATE_FILE).stat().st_size
    m["sha256"] = sha256_file(folder / STATE_FILE)
    (folder / MARKER_FILE).write_text(json.dumps(m))


def truncate(p: Path):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def zero(p: Path):
    p.write_bytes(b"")


def flip_bit(p: Path):
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10
    p.write_bytes(bytes(data))


def foreign(p: Path):
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 1}, p)  # a valid torch file, not ours


DAMAGE = {
    # name: (damage function, expected words in the marker-level error, in the load-level error)
    "truncated": (truncate, "truncated", "not a readable torch checkpoint"),
    "zero_byte": (zero, "0 bytes", "0 bytes"),
    "bit_flipped": (flip_bit, "SHA-256 mismatch", None),
    "foreign": (foreign, "differs from the recorded", "not a course_lib training checkpoint"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_checkpoint_clear_error_and_fallback(tmp_path, kind):
    damage, marker_msg, load_msg = DAMAGE[kind]
    mgr, good, newest = two_checkpoints(tmp_path)
    damage(newest / STATE_FILE)
    with pytest.raises(CheckpointError) as e:
        mgr.load(newest)
    assert str(newest) in str(e.value), f"错误信息应包含文件名：{e.value}"
    assert marker_msg in str(e.value), f"{kind}: 错误信息应说明问题（'{marker_msg}'）：{e.value}"
    # automatic resume falls back to the previous good checkpoint, and says why
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state, folder = mgr.load_latest()
    assert folder == good and state["step"] == 2
    assert any("skipping" in str(w.message) and newest.name in str(w.message) for w in caught)
    if load_msg is not None:  # same damage, but with a marker that matches it
        reseal(newest)
        with pytest.raises(CheckpointError) as e:
            mgr.load(newest)
        assert str(newest / STATE_FILE) in str(e.value) and load_msg in str(e.value), str(e.value)


def test_bit_flip_that_still_unpickles_is_caught_by_checksum(tmp_path):
    # Flip a bit inside tensor data (the last bytes before the zip directory are storage data):
    # torch.load would happily return wrong numbers; only the checksum notices.
    mgr, good, newest = two_checkpoints(tmp_path)
    p = newest / STATE_FILE
    raw = bytearray(p.read_bytes())
    start = raw.find(b"data/0") + 64  # into the first storage record
    raw[start] ^= 0x01
    p.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        mgr.load(newest)


def test_incomplete_save_is_invisible(tmp_path):
    mgr, good, newest = two_checkpoints(tmp_path)
    (newest / MARKER_FILE).unlink()  # as if killed before the marker was written
    assert mgr.latest() == good
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        mgr.verify(newest)


def test_no_checkpoint_at_all_returns_none(tmp_path):
    assert CheckpointManager(tmp_path, verbose=False).load_latest() is None
    with pytest.raises(CheckpointError, match="does not exist"):
        safe_torch_load(tmp_path / "nope.pt")


def test_rotation_keeps_last_k_and_deletes_after_save(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2, verbose=False)
    seen = []
    for s in (1, 2, 3, 4):
        mgr.save(s, small_state(s), on_written=lambda tmp: seen.append([st for st, _ in mgr.list_complete()]))
    # while step 3 was being written, steps 1 and 2 were both still there (delete only after)
    assert seen[2] == [1, 2]
    assert [s for s, _ in mgr.list_complete()] == [3, 4]
    assert not list(mgr.dir.glob(".tmp-*"))


# ---------------------------------------------------------------- malicious pickle
class Evil:
    """Unpickling this calls os.system(...), which creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch_zip", "raw_pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, container):
    marker = tmp_path / "PWNED"
    evil_path = tmp_path / "evil.pt"
    payload = {"model": {"w": torch.zeros(2)}, "format": "course_lib.checkpoint/1", "hook": Evil(marker)}
    if container == "torch_zip":
        torch.save(payload, evil_path)
    else:
        evil_path.write_bytes(pickle.dumps(payload, protocol=2))
    # sanity check of the test itself: full pickle WOULD run the payload
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Evil(probe)))
    assert probe.exists(), "test setup: the payload should run under plain pickle"

    with pytest.raises(CheckpointError) as e:
        safe_torch_load(evil_path)
    assert str(evil_path) in str(e.value) and "refused" in str(e.value), str(e.value)
    assert not marker.exists(), "恶意 pickle 里的代码被执行了！"

    # inside a checkpoint folder with a valid marker, automatic resume refuses it and falls back
    mgr = CheckpointManager(tmp_path / "run", keep_last=5, verbose=False)
    good = mgr.save(2, small_state(2))
    bad = mgr.save(4, small_state(4))
    (bad / STATE_FILE).write_bytes(evil_path.read_bytes())
    reseal(bad)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        state, folder = mgr.load_latest()
    assert folder == good
    assert not marker.exists(), "恶意 pickle 里的代码被执行了！"


# ---------------------------------------------------------------- config mismatch
def test_mismatched_model_config_is_a_hard_error_and_overwrites_nothing(tmp_path, tiny_corpus):
    tc = TrainConfig(
        data=tiny_corpus,
        max_steps=4,
        batch_size=2,
        seq_len=16,
        warmup_steps=1,
        eval_interval=100,
        eval_batches=1,
        log_interval=2,
        ckpt_interval=2,
        out_dir=str(tmp_path / "run"),
        tensorboard=False,
        val_fraction=0.2,
    )
    Trainer(ModelConfig(**MC), tc, console=False).fit()
    mgr = CheckpointManager(tmp_path / "run", verbose=False)
    before = {p.name: sha256_file(p / STATE_FILE) for _, p in mgr.list_complete()}
    with pytest.raises(ConfigMismatchError) as e:
        Trainer(ModelConfig(**dict(MC, d_model=64, n_heads=4)), tc, console=False)
    assert "d_model" in str(e.value) and str(tmp_path / "run") in str(e.value)
    after = {p.name: sha256_file(p / STATE_FILE) for _, p in mgr.list_complete()}
    assert before == after, "配置不匹配时不应覆盖或删除已有的 checkpoint"
