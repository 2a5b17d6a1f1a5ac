"""Grader for exercises/ex411_train_script.py: the learner's whole training script, run as real
processes and really killed.

Oracle: the same script run once without interruption. The graded run is the same command
started again and again on one output folder, each process killed at a different instant:
right after an optimizer step (6th); in the middle of the first file it writes under
checkpoints/ (the file is cut to half, whatever wrote it: torch.save, Path.write_bytes,
shutil.copyfile, open().write); in the middle of the second such file (for a script that
writes a temporary file and then copies it onto the final name, that second file is the final
name); just before the rename that puts a written checkpoint into place; then to the end.
The final weights must be bitwise equal to the uninterrupted run's, and the metrics.jsonl the
killed-and-resumed runs leave behind must hold every logged step with the uninterrupted run's
values. A grader-side wrapper (train_script_harness.py) records, at every step, hashes of the
weights, the batch, the RNG state, the optimizer state and the learning rate, so a failure names
the state that was not restored instead of only saying "weights differ".

On Linux the runs are forked from a server that has imported torch once (forkserver.py): real
processes all the same, each killed with a real SIGKILL, without six torch imports per grading.

What this proves: process death at any of those instants (SIGKILL runs no cleanup code) is
survived. It does not prove survival of a power cut: the page cache outlives a SIGKILL.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forkserver  # noqa: E402  (same folder)

EX = "ex411_train_script"
ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("train_script_harness.py")
ARGS = {"max_steps": 12, "save_every": 4, "log_every": 2, "warmup_steps": 3, "lr": 3e-3, "grad_clip": 0.5, "seed": 0}
# resume points of the next process: 4; 4 (step 8's first file torn); 8 (step 12's second file
# torn: step 8 went through); 8 (killed before step 12's rename); -
KILLS = ["step:6", "write:1", "write:2", "rename:1", ""]
RUN_TIMEOUT = 300  # one run of the 12-step script takes ~5 s; generous for a loaded machine

STATE_NAMES = {
    "w": "模型权重 (model.state_dict()) 与不中断时不同：模型没有保存/恢复，或恢复的不是最新的完整 checkpoint？",
    "d": "恢复后的训练 batch 与不中断时不同：数据位置 (data position) 没有保存/恢复？",
    "r": "恢复后的随机数状态与不中断时不同 (dropout 用的 RNG)：RNG 状态没有保存/恢复？"
    "（注意：创建 DataLoader 迭代器也会从全局 RNG 取数）",
    "lr": "恢复后的学习率与不中断时不同：scheduler 状态没有保存/恢复？",
    "o": "恢复后的优化器状态与不中断时不同：optimizer.state_dict()（Adam 的动量和步数）没有保存/恢复？",
}


def expected_lr(step: int) -> float:
    w, n, lr = ARGS["warmup_steps"], ARGS["max_steps"], ARGS["lr"]
    if step < w:
        return lr * (step + 1) / w
    progress = min(1.0, (step - w) / max(1, n - w))
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def cli_args(out_dir: Path) -> list[str]:
    out = ["--out-dir", str(out_dir)]
    for k, v in ARGS.items():
        out += ["--" + k.replace("_", "-"), str(v)]
    return out


def run_once(script: Path, out_dir: Path, trace: Path, kill: str, server=None) -> subprocess.CompletedProcess:
    """One run of the learner's script under the harness: a fresh ``python`` or, where the fork
    server runs (forkserver.py: Linux), a process forked from it with torch already imported."""
    env = dict(os.environ, **base_env(), HARNESS_TRACE=str(trace), HARNESS_KILL=kill)
    env["HARNESS_CKPT_DIR"] = str(out_dir / "checkpoints")
    cmd = [sys.executable, str(HARNESS), str(script), *cli_args(out_dir)]
    if server is not None:
        out, err = trace.with_name(trace.stem + ".out"), trace.with_name(trace.stem + ".err")
        rc = server.run(cmd[1:], ROOT, env, out, err, RUN_TIMEOUT)
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
        if rc == 124:
            stderr += f"\n你的脚本运行超过 {RUN_TIMEOUT} 秒，可能有死循环 (infinite loop)"
        return subprocess.CompletedProcess(cmd, rc, stdout, stderr)
    try:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return subprocess.CompletedProcess(
            cmd, 124, out, f"你的脚本运行超过 {RUN_TIMEOUT} 秒，可能有死循环 (infinite loop)"
        )


def base_env() -> dict[str, str]:
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def read_trace(trace: Path) -> list[list[dict]]:
    """Events split into processes (one list per 'start')."""
    runs: list[list[dict]] = []
    if not trace.exists():
        return runs
    for line in trace.read_text().splitlines():
        if not line.strip():
            continue
        ev = json.loads(line)
        if ev["e"] == "start":
            runs.append([])
        elif runs:
            runs[-1].append(ev)
    return runs


def steps_of(events: list[dict]) -> list[dict]:
    """One record per optimizer step: the first training forward before it + the step event."""
    out, fwd = [], None
    for ev in events:
        if ev["e"] == "fwd" and fwd is None:
            fwd = ev
        elif ev["e"] == "step":
            out.append({**(fwd or {"w": "", "d": "", "r": ""}), "lr": ev["lr"], "o": ev["o"], "gn": ev["gn"]})
            fwd = None
    return out


def describe(kill: str) -> str:
    kind, _, k = kill.partition(":")
    if kind == "step":
        return f"这个进程第 {k} 次 optimizer.step() 之后 SIGKILL"
    if kind == "write":
        return f"这个进程写 checkpoints/ 下第 {k} 个文件写到一半时 SIGKILL"
    if kind == "rename":
        return f"这个进程第 {k} 次把文件换名到位 (os.replace) 之前 SIGKILL"
    return "不再杀，跑到结束"


def tail(proc: subprocess.CompletedProcess, n: int = 6) -> str:
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return "\n".join(lines[-n:])


class Runs:
    def __init__(self, script: Path, tmp: Path, server=None):
        self.script = script
        self.ref_dir, self.dir = tmp / "uninterrupted", tmp / "killed"
        self.ref_trace, self.trace = tmp / "ref.jsonl", tmp / "killed.jsonl"
        self.ref = run_once(script, self.ref_dir, self.ref_trace, "", server)
        self.ref_steps = steps_of(read_trace(self.ref_trace)[0]) if read_trace(self.ref_trace) else []
        self.procs = []
        if self.ref.returncode == 0:
            for kill in KILLS:
                self.procs.append(run_once(script, self.dir, self.trace, kill, server))
                if kill and self.procs[-1].returncode != -9:
                    break  # it should have been killed; something else happened


@pytest.fixture(scope="module")
def runs(impl_path, tmp_path_factory):
    server = None
    if forkserver.available():
        server = forkserver.ForkServer(ROOT, dict(os.environ, **base_env()))
    try:
        return Runs(impl_path(EX), tmp_path_factory.mktemp("train_script"), server)
    finally:
        if server is not None:
            server.close()


def require_reference(runs: Runs) -> None:
    assert runs.ref.returncode == 0, (
        f"不中断地运行你的脚本就失败了（退出码 {runs.ref.returncode}），输出最后几行：\n{tail(runs.ref)}"
    )


def test_uninterrupted_run(runs):
    """Warmup schedule, clipping, logging and the final weights file, on the uninterrupted run."""
    require_reference(runs)
    steps = runs.ref_steps
    assert len(steps) == ARGS["max_steps"], (
        f"--max-steps {ARGS['max_steps']} 应做 {ARGS['max_steps']} 次 optimizer.step()，实际 {len(steps)} 次"
    )
    for i, s in enumerate(steps):
        want = expected_lr(i)
        assert abs(s["lr"][0] - want) <= 1e-9 + 1e-6 * want, (
            f"第 {i} 步（从 0 数）的学习率：期望 {want:.6g}，实际 {s['lr'][0]:.6g}。warmup 与衰减的约定见练习说明"
        )
        assert s["gn"] <= ARGS["grad_clip"] * (1 + 1e-4), (
            f"第 {i} 步 optimizer.step() 前的梯度范数：期望 ≤ {ARGS['grad_clip']}，实际 {s['gn']:.4g}："
            "梯度裁剪要放在 backward() 之后、step() 之前"
        )
    assert len({s["r"] for s in steps}) > 1, "每一步的 RNG 状态都一样：模型处于 train() 模式吗（dropout 要用随机数）？"
    final = runs.ref_dir / "final_model.safetensors"
    assert final.is_file(), f"跑完后应有 {final.name}（用已写好的 save_final_weights）"
    log = runs.ref_dir / "metrics.jsonl"
    assert log.is_file(), "应把日志写到 out_dir/metrics.jsonl（每行一个 JSON）"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    want_steps = list(range(0, ARGS["max_steps"], ARGS["log_every"]))
    got_steps = [r.get("step") for r in rows]
    assert got_steps == want_steps, f"日志里的 step：期望 {want_steps}，实际 {got_steps}"
    for r in rows:
        missing = {"step", "loss", "lr", "grad_norm"} - set(r)
        assert not missing, f"日志行缺少字段 {sorted(missing)}：{r}"
        assert abs(r["lr"] - expected_lr(r["step"])) <= 1e-9 + 1e-6 * r["lr"], (
            f"日志第 {r['step']} 步的 lr：期望 {expected_lr(r['step']):.6g}（这一步实际使用的），实际 {r['lr']:.6g}"
        )


def test_checkpoint_contents(runs):
    """Every torch.save payload loads with weights_only=True and holds the whole state."""
    require_reference(runs)
    saves = [ev for run in read_trace(runs.ref_trace) for ev in run if ev["e"] == "save"]
    n_saves = ARGS["max_steps"] // ARGS["save_every"]
    assert saves, f"没有调用 torch.save：--save-every {ARGS['save_every']} 时应保存 {n_saves} 次"
    bad = [s for s in saves if not s["weights_only_ok"]]
    assert not bad, "保存的内容不能用 torch.load(..., weights_only=True) 读回：只放张量和普通容器（dict/list/int/str）"
    keys = set().union(*(s["keys"] for s in saves))
    want = {"model", "optimizer", "scheduler", "step", "rng", "data", "config"}
    assert want <= keys, f"checkpoint 的顶层键：期望至少 {sorted(want)}，实际 {sorted(keys)}"


def killed_event(events: list[dict]) -> dict:
    return next((ev for ev in reversed(events) if ev["e"] == "killed"), {})


def why_previous(prev: dict) -> str:
    """What the previous process's kill left behind, and the likely mistake, for a message."""
    if prev.get("at") == "write":
        return (
            f"检查点不是原子写入的 (not atomic)：上一次运行写 checkpoints/{prev['file']} 时被杀，"
            f"这个文件只写了一半（{prev['kept']}/{prev['size']} 字节），这次启动却把它当成 checkpoint 读了。"
            "整个文件先写到临时文件（如 step_N.pt.tmp），写完再 os.replace 到最终名字；"
            "不要直接写最终名字（Path.write_bytes），也不要把临时文件复制 (shutil.copyfile) 过去；"
            "恢复时只找正式名字的文件"
        )
    if prev.get("at") == "rename":
        others = [f for f in prev.get("files", []) if f != prev.get("src")]
        if not others:
            return (
                f"上一次运行在把 {prev.get('src') or prev.get('dst')} 换名到位 (os.replace) 之前被杀，"
                f"那一刻 checkpoints/ 里只有 {prev.get('files')}：旧的 checkpoint 在新的换名到位之前就被删掉了，"
                "重跑只能从头开始。先 os.replace 新的 checkpoint，再删旧的"
            )
        return (
            f"上一次运行在换名到位 (os.replace) 之前被杀，那一刻 checkpoints/ 里有 {prev.get('files')}："
            "应从其中最新的完整 checkpoint 恢复"
        )
    return ""


def test_resume_after_kills_is_bitwise(runs):
    """SIGKILL after a step, in the middle of a checkpoint write (twice) and before the rename into
    place; the chain must end bitwise identical."""
    require_reference(runs)
    ref = runs.ref_steps
    segments = read_trace(runs.trace)
    resume_at = 0
    prev: dict = {}  # the previous process's "killed" event
    for n, (kill, proc) in enumerate(zip(KILLS, runs.procs, strict=False)):
        label = f"第 {n + 1} 次运行（{describe(kill)}）"
        why = why_previous(prev)
        hint = f"。{why}" if why else ""
        if kill:
            assert proc.returncode == -9, (
                f"{label}：进程应被杀掉，却以退出码 {proc.returncode} 结束{hint}"
                + (
                    "（这个进程一次也没有写 checkpoints/ 下的文件或换名？）"
                    if proc.returncode == 0 and not kill.startswith("step")
                    else ""
                )
                + f"。输出最后几行：\n{tail(proc)}"
            )
        else:
            assert proc.returncode == 0, (
                f"{label}：应正常跑完，退出码 {proc.returncode}{hint}。输出最后几行：\n{tail(proc)}"
            )
        events = segments[n] if n < len(segments) else []
        seg = steps_of(events)
        if n > 0:
            assert seg or not kill, f"{label}：恢复后一步也没有训练{hint}"
        done = resume_at
        if seg:
            # where did this process start? find the reference step whose weights it started from
            matches = [i for i, s in enumerate(ref) if s["w"] == seg[0]["w"]]
            assert matches, f"{label}：开始训练时的{STATE_NAMES['w']}{hint}"
            start = matches[-1]
            assert start == resume_at, (
                f"{label}：应从最新的完整 checkpoint（第 {resume_at} 步）恢复，实际从第 {start} 步开始"
                + (hint or ("：没有找到并加载已有的 checkpoint？" if start == 0 else ""))
            )
            for j, s in enumerate(seg):
                i = start + j
                assert i < len(ref), f"{label}：比不中断的运行多做了 optimizer.step()（恢复后的 step 计数不对？）"
                for key in ("w", "d", "r", "lr", "o"):
                    assert s[key] == ref[i][key], f"{label}，第 {i} 步：{STATE_NAMES[key]}" + (
                        f"（期望 lr={ref[i]['lr'][0]:.6g}，实际 {s['lr'][0]:.6g}）" if key == "lr" else ""
                    )
            done = start + len(seg)
        # The next process resumes from the newest checkpoint completed before this one died: a
        # kill after step `done` comes before that step's save, a torn write or a kill before the
        # rename is that save itself, so either way the newest complete one is the save before.
        resume_at = (done - 1) // ARGS["save_every"] * ARGS["save_every"] if kill else resume_at
        prev = killed_event(events)
    assert len(runs.procs) == len(KILLS), "被杀之后的运行没有全部完成"
    final = runs.dir / "final_model.safetensors"
    assert final.is_file(), "被杀掉又恢复的运行跑完后没有写出 final_model.safetensors"
    want, got = load_file(runs.ref_dir / "final_model.safetensors"), load_file(final)
    assert want.keys() == got.keys(), f"最终权重的参数名不同：{sorted(set(want) ^ set(got))}"
    for k in want:
        assert want[k].dtype == got[k].dtype and bool((want[k] == got[k]).all()), (
            f"最终权重 {k} 与不中断的运行不是逐位相同 (bitwise)，"
            f"最大差 {(want[k].float() - got[k].float()).abs().max().item():.3g}"
        )


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def step_ranges(steps: list[int]) -> str:
    """[0, 2, 6, 8, 10] -> "0–2、6–10" (runs of consecutive logged steps)."""
    out, run = [], []
    for s in steps:
        if run and s != run[-1] + ARGS["log_every"]:
            out.append(run)
            run = []
        run.append(s)
    if run:
        out.append(run)
    return "、".join(f"{r[0]}" if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in out)


def test_resumed_log_has_every_step(runs):
    """The log the killed-and-resumed runs leave behind holds every logged step, each with the
    uninterrupted run's values (a step redone after a resume may appear twice, identically)."""
    require_reference(runs)
    assert len(runs.procs) == len(KILLS) and runs.procs[-1].returncode == 0, (
        "被杀掉又恢复的运行没有跑完（见 test_resume_after_kills_is_bitwise 的说明），无法检查它的日志"
    )
    want = {r["step"]: r for r in read_log(runs.ref_dir / "metrics.jsonl") if "step" in r}
    rows = read_log(runs.dir / "metrics.jsonl")
    got_steps = sorted({r.get("step") for r in rows if isinstance(r.get("step"), int)})
    missing = [s for s in range(0, ARGS["max_steps"], ARGS["log_every"]) if s not in got_steps]
    assert not missing, (
        f"恢复后日志丢了第 {step_ranges(missing)} 步：被杀掉又重启 {len(KILLS) - 1} 次之后，"
        f'metrics.jsonl 里只有第 {got_steps} 步。重启时要以追加模式 open(..., "a") 打开日志，'
        '"w" 会清空之前几次运行写下的行'
    )
    for r in rows:
        ref = want.get(r.get("step"))
        if ref is None:
            continue
        for key in ("loss", "lr", "grad_norm"):
            assert r.get(key) == ref.get(key), (
                f"恢复后日志第 {r['step']} 步的 {key}：不中断的运行是 {ref.get(key)!r}，这里是 {r.get(key)!r}"
                "（逐位恢复时，重做的步应写出完全相同的数）"
            )
