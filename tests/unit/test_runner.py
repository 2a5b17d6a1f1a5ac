"""course_lib.lab.runner: command lines, and SIGKILL of a real training process at a logged step."""

import sys

from course_lib.lab.runner import run, run_and_kill, torchrun_train_command, train_command

TINY = dict(
    d_model=32,
    n_layers=1,
    n_heads=2,
    n_kv_heads=1,
    ffn_hidden=64,
    seq_len=32,
    batch_size=4,
    warmup_steps=1,
    log_interval=1,
    eval_interval=1000,
    ckpt_interval=2,
    tensorboard=False,
)


def test_flags_render_like_the_cli():
    cmd = train_command("out", max_steps=5, tensorboard=False, resume=True, betas=(0.9, 0.95))
    assert cmd[:3] == [sys.executable, "-m", "course_lib.train"]
    assert cmd[3:] == ["--out-dir", "out", "--max-steps", "5", "--no-tensorboard", "--resume", "--betas", "0.9", "0.95"]
    t = torchrun_train_command(2, "out", max_steps=5)
    assert "course_lib.launch" in t and "--nproc-per-node=2" in t and t[-4:] == ["--out-dir", "out", "--max-steps", "5"]


def test_run_and_kill_then_resume(tmp_path):
    out = tmp_path / "run"
    killed = run_and_kill(train_command(out, max_steps=400, **TINY), out, kill_after_step=4, timeout=300)
    assert killed.killed, killed.tail()
    assert 4 <= killed.last_logged_step < 400
    resumed = run(train_command(out, max_steps=killed.last_logged_step + 2, **TINY), out, timeout=300)
    assert resumed.returncode == 0, resumed.tail()
    assert "resumed from" in resumed.output
