"""Issue 9's defects, one test each (each failed on the code before the fix):

1. ``resume=False`` into a used out_dir: the new run never shares rotation with the old one's
   checkpoints (they are moved aside, never deleted) and no message recommends losing data.
2. Damaged checkpoints (marker not an object, marker a folder, unreadable files) fall back to
   the previous good checkpoint instead of crashing; each skip is reported once.
3. The process group is synchronised before it is destroyed; torchrun restarts get
   ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` without the learner setting it.
4. A resume that changes schedule-shaping fields (max_steps) says so, with the lr jump.
Minor: a kill between rename and rotation leaves keep_last + 1 checkpoints only until the next
start; a full disk during a save is reported as a full disk, and the earlier checkpoints stay.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from course_lib import checkpoint as ckpt_mod
from course_lib import distributed
from course_lib.checkpoint import (
    MARKER_FILE,
    STATE_FILE,
    CheckpointError,
    CheckpointManager,
)
from course_lib.config import ModelConfig, TrainConfig
from course_lib.faults import fault_env
from course_lib.lab.runner import run, train_command
from course_lib.train import ConfigMismatchError, Trainer
from course_lib.train import main as train_main

MC = {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64, "max_seq_len": 64}


def tc(out, data, **kw):
    base = {
        "data": data,
        "max_steps": 6,
        "batch_size": 4,
        "seq_len": 32,
        "warmup_steps": 1,
        "eval_interval": 100,
        "eval_batches": 1,
        "log_interval": 1,
        "ckpt_interval": 2,
        "keep_last": 2,
        "out_dir": str(out),
        "tensorboard": False,
        "device": "cpu",
    }
    base.update(kw)
    return TrainConfig(**base)


def steps(folder: Path) -> list:
    return sorted(int(p.name.split("_")[1]) for p in folder.glob("step_*"))


# ---- defect 1 ------------------------------------------------------------------------------
def test_no_resume_into_used_out_dir_moves_the_old_run_aside(tmp_path, tiny_corpus, capsys):
    out = tmp_path / "run"
    Trainer(ModelConfig(**MC), tc(out, tiny_corpus, max_steps=10), console=False).fit()
    assert steps(out / "checkpoints") == [8, 10]
    big = dict(MC, d_model=64, ffn_hidden=128)
    with pytest.raises(ConfigMismatchError) as e:
        Trainer(ModelConfig(**big), tc(out, tiny_corpus, max_steps=4), console=False)
    msg = str(e.value)
    assert "delete" not in msg.lower() and "remove" not in msg.lower() and "rm " not in msg, msg
    assert "moves the old checkpoints aside" in msg, msg
    new = Trainer(ModelConfig(**big), tc(out, tiny_corpus, max_steps=4, resume=False), console=False)
    new.fit()
    assert "moved to" in capsys.readouterr().err
    # the new run's checkpoints survive its own rotation, and the latest one is the new model
    assert steps(out / "checkpoints") == [2, 4], "新 run 的检查点被轮换 (rotation) 删掉了"
    state, _ = CheckpointManager(out).load_latest()
    assert state["config"]["model"]["d_model"] == 64 and state["step"] == 4
    # and nothing of the old run was lost
    old = new.previous_run
    assert old is not None and old.parent == out and steps(old / "checkpoints") == [8, 10]
    old_state = CheckpointManager(old).load(old / "checkpoints" / "step_00000010")
    assert old_state["config"]["model"]["d_model"] == 32
    assert (old / "metrics.jsonl").exists() and (old / "config.json").exists()


def test_no_resume_into_an_empty_or_new_folder_moves_nothing(tmp_path, tiny_corpus):
    t = Trainer(ModelConfig(**MC), tc(tmp_path / "fresh", tiny_corpus, max_steps=2, resume=False), console=False)
    assert t.previous_run is None
    t.fit()
    assert not list((tmp_path / "fresh").glob("previous-*"))


# ---- defect 2 ------------------------------------------------------------------------------
def _two(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=5, verbose=False)
    good = mgr.save(2, {"model": {"w": torch.ones(2)}})
    newest = mgr.save(4, {"model": {"w": torch.zeros(2)}})
    return mgr, good, newest


def _marker_json(text):
    def damage(folder: Path, monkeypatch):
        (folder / MARKER_FILE).write_text(text)

    return damage


def _marker_dir(folder: Path, monkeypatch):
    (folder / MARKER_FILE).unlink()
    (folder / MARKER_FILE).mkdir()


def _unreadable(name):
    def damage(folder: Path, monkeypatch):
        # we may run as root (chmod 000 would not stop us): make the read itself fail
        target = folder / name
        real_open = open

        def fake_open(path, *a, **kw):
            if Path(path) == target:
                raise PermissionError(13, "Permission denied", str(target))
            return real_open(path, *a, **kw)

        real_read_text = Path.read_text

        def fake_read_text(self, *a, **kw):
            if self == target:
                raise PermissionError(13, "Permission denied", str(target))
            return real_read_text(self, *a, **kw)

        monkeypatch.setattr("builtins.open", fake_open)
        monkeypatch.setattr(Path, "read_text", fake_read_text)

    return damage


@pytest.mark.parametrize(
    "damage",
    [
        _marker_json("[]"),
        _marker_json("null"),
        _marker_json("42"),
        _marker_json('"done"'),
        _marker_dir,
        _unreadable(MARKER_FILE),
        _unreadable(STATE_FILE),
    ],
    ids=[
        "marker-list",
        "marker-null",
        "marker-number",
        "marker-string",
        "marker-folder",
        "marker-unreadable",
        "state-unreadable",
    ],
)
def test_damaged_checkpoint_falls_back(tmp_path, monkeypatch, damage):
    mgr, good, newest = _two(tmp_path)
    damage(newest, monkeypatch)
    with pytest.raises(CheckpointError, match=newest.name):
        mgr.load(newest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state, path = mgr.load_latest()
    assert path == good and torch.equal(state["model"]["w"], torch.ones(2))
    assert len([w for w in caught if "skipping" in str(w.message)]) == 1


def test_skip_is_reported_once(tmp_path, capsys):
    mgr, _good, newest = _two(tmp_path)
    (newest / MARKER_FILE).write_text("[]")
    mgr.verbose = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mgr.load_latest()
    printed = capsys.readouterr().err.count("skipping")
    assert printed + len(caught) == 1, f"跳过的消息应只出现一次：stderr {printed} 次，warnings {len(caught)} 次"


# ---- defect 3 ------------------------------------------------------------------------------
def test_cleanup_synchronises_before_destroying_the_group(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", lambda *a, **k: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda *a, **k: calls.append("destroy"))
    distributed.cleanup()
    assert calls == ["barrier", "destroy"]
    calls.clear()
    distributed.cleanup(synchronize=False)  # after an error the other ranks may never reach a barrier
    assert calls == ["destroy"]


def test_launcher_turns_off_the_shared_rendezvous_store(tmp_path):
    """``python -m course_lib.launch`` (what the course runs, and the one-liner for hand use)
    gives torchrun TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 even when the caller's environment
    lacks it: the workers then do not use the agent's store (the cause of connectFullMesh
    failures after --max-restarts)."""
    env = {
        k: v
        for k, v in distributed.subprocess_env({"OMP_NUM_THREADS": "1"}).items()
        if k != "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"
    }
    probe = "import os; print('AGENT_STORE=' + os.environ.get('TORCHELASTIC_USE_AGENT_STORE', '?'))"
    base = ["--standalone", "--nproc-per-node=1", "--max-restarts=1", "--no-python", sys.executable, "-c", probe]
    launched = subprocess.run(
        [sys.executable, "-m", "course_lib.launch", *base],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert "AGENT_STORE=False" in launched.stdout, launched.stdout + launched.stderr[-2000:]
    plain = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", *base],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert "AGENT_STORE=True" in plain.stdout, "plain torchrun should share its store (else this test proves nothing)"


def test_worker_warns_when_restarts_may_fail(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    assert distributed.restarts_may_fail()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    assert not distributed.restarts_may_fail()


# ---- defect 4 (schedule) -------------------------------------------------------------------
def test_resume_with_changed_max_steps_warns_with_the_lr_jump(tmp_path, tiny_corpus, capsys):
    out = tmp_path / "run"
    Trainer(
        ModelConfig(**MC),
        tc(out, tiny_corpus, max_steps=4, ckpt_interval=4, schedule="linear", min_lr=0.0),
        console=False,
    ).fit()
    capsys.readouterr()
    Trainer(
        ModelConfig(**MC),
        tc(out, tiny_corpus, max_steps=8, ckpt_interval=4, schedule="linear", min_lr=0.0),
        console=False,
    )
    err = capsys.readouterr().err
    assert "max_steps 4 -> 8" in err and "learning-rate schedule" in err, err
    # old schedule: lr 0 after its last step; new one (warmup 1, linear to step 8): 3e-3 * 4/7 at step 5
    assert "0 -> 0.00171 at step 5" in err, f"应给出 lr 的跳变：{err}"
    assert "betas" not in err, f"没有改变的字段不应出现在警告里：{err}"
    # bookkeeping-only changes (metadata resume='free') are not warned about
    capsys.readouterr()
    Trainer(
        ModelConfig(**MC),
        tc(out, tiny_corpus, max_steps=4, ckpt_interval=4, schedule="linear", min_lr=0.0, log_interval=3, keep_last=1),
        console=False,
    )
    assert "warning" not in capsys.readouterr().err


# ---- minor ---------------------------------------------------------------------------------
def test_kill_between_rename_and_rotation_is_tidied_on_the_next_start(tmp_path, tiny_corpus):
    out = tmp_path / "run"
    flags = {
        "d_model": 32,
        "n_layers": 1,
        "n_heads": 2,
        "n_kv_heads": 1,
        "ffn_hidden": 64,
        "max_seq_len": 64,
        "seq_len": 32,
        "batch_size": 4,
        "warmup_steps": 1,
        "log_interval": 1,
        "eval_interval": 100,
        "ckpt_interval": 2,
        "keep_last": 2,
        "max_steps": 6,
        "tensorboard": False,
        "data": tiny_corpus,
        "device": "cpu",
    }
    r = run(train_command(out, **flags), out, timeout=300, env=fault_env("save_renamed", 6))
    assert r.returncode != 0 and steps(out / "checkpoints") == [2, 4, 6], r.tail()
    r = run(train_command(out, **flags), out, timeout=300)
    assert r.returncode == 0 and "nothing to do" in r.output, r.tail()
    assert steps(out / "checkpoints") == [4, 6]


def test_disk_full_during_save_says_so_and_keeps_the_earlier_checkpoints(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path, keep_last=3, verbose=False)
    mgr.save(2, {"model": {"w": torch.ones(2)}})

    def full_disk(obj, f, *a, **kw):
        f.write(b"x" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 100")

    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="disk full") as e:
        mgr.save(4, {"model": {"w": torch.zeros(2)}})
    assert "intact" in str(e.value) and "delete" not in str(e.value).lower()
    monkeypatch.undo()
    assert [p.name for p in sorted(mgr.dir.iterdir())] == ["step_00000002"], "不应留下半成品临时目录"
    assert mgr.load_latest()[1].name == "step_00000002"


def test_cli_reports_a_failed_save_in_one_line(tmp_path, tiny_corpus, monkeypatch, capsys):
    monkeypatch.setattr(
        ckpt_mod.torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device"))
    )
    rc = train_main(
        [
            "--out-dir",
            str(tmp_path / "r"),
            "--data",
            tiny_corpus,
            "--d-model",
            "32",
            "--n-layers",
            "1",
            "--n-heads",
            "2",
            "--n-kv-heads",
            "1",
            "--ffn-hidden",
            "64",
            "--max-seq-len",
            "64",
            "--seq-len",
            "32",
            "--batch-size",
            "4",
            "--max-steps",
            "2",
            "--warmup-steps",
            "1",
            "--no-tensorboard",
        ]
    )
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert rc == 1 and len(err) == 1 and "disk full" in err[0], err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["max_steps"] == 2
