"""Start the graded script's processes from an interpreter that has already imported torch.

The ex411 grader runs the learner's training script six times (once uninterrupted, five times
killed at chosen instants). Each fresh ``python`` spends about 2.5 s of its ~4 s importing torch,
safetensors and the course's modules before the script's first line. Here one server process
imports them once and forks a child per run: the child is a real process (its own pid, its own
memory, really SIGKILLed by the harness), it starts with the imports done, and it runs
``python ARGV...`` the way the interpreter would (``runpy`` as ``__main__``, its own argv, cwd,
environment and stdout/stderr files).

What a fork shares with its siblings that fresh processes would not: the server's hash seed
(``PYTHONHASHSEED``) and the state of Python's ``random`` module before the script seeds it. The
uninterrupted run and the killed runs all start the same way, so the bitwise comparison is
unchanged.

Linux only (``os.fork`` after importing torch is not safe on macOS); ``available()`` says whether
it is used, and the grader starts plain subprocesses otherwise. Protocol: one JSON request per
line on the server's stdin ``{"argv", "cwd", "env", "stdout", "stderr", "timeout"}``, one JSON
reply per line on its stdout ``{"returncode"}`` (``-N`` for signal N, 124 on timeout).

    python tests/exercises/forkserver.py   # a server; the grader starts it (ForkServer)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def available() -> bool:
    return sys.platform.startswith("linux") and os.environ.get("COURSE_NO_FORKSERVER", "") != "1"


class ForkServer:
    """The grader's side: start the server once, then ``run(...)`` like ``subprocess.run``."""

    def __init__(self, cwd: Path, env: dict[str, str]):
        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the fork server did not start")

    def run(self, argv: list[str], cwd: Path, env: dict[str, str], out: Path, err: Path, timeout: float) -> int:
        req = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err), "timeout": timeout}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fork server exited")
        return int(json.loads(line)["returncode"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _child(req: dict) -> None:
    """In the forked child: become ``python ARGV...`` and never return."""
    code = 1
    try:
        os.setpgid(0, 0)
        for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        import runpy

        sys.stdin = open(0, closefd=False)  # noqa: SIM115 (fd 0 is /dev/null now)
        sys.argv = list(req["argv"])
        sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
        runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001  (report it as the interpreter would, then exit 1)
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110
                pass
        os._exit(code)


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return 124
        time.sleep(0.005)


def serve() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import safetensors.torch  # noqa: F401  (the imports every run needs, done once)
    import torch  # noqa: F401
    import torch.optim  # noqa: F401

    import course_lib.checkpoint  # noqa: F401
    import course_lib.data  # noqa: F401
    import course_lib.model  # noqa: F401
    import course_lib.schedule  # noqa: F401

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(req)
        rc = _wait(pid, float(req["timeout"]))
        sys.stdout.write(json.dumps({"returncode": rc}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    serve()
