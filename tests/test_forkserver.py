"""tests/exercises/forkserver.py: a forked run reports what a fresh ``python`` would (exit code,
-9 for a SIGKILL, 124 past its timeout, its own argv, cwd, environment and output files)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "exercises"))
import forkserver  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import os, signal, sys, time
print("argv", sys.argv[1:], "cwd", os.getcwd() == os.environ["WANT_CWD"], "torch" in sys.modules)
print("to stderr", file=sys.stderr)
what = sys.argv[1]
if what == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if what == "sleep":
    time.sleep(30)
if what == "raise":
    raise ValueError("boom")
sys.exit(int(what))
"""


@pytest.mark.skipif(not forkserver.available(), reason="the fork server runs on Linux only")
def test_forked_runs_report_like_fresh_processes(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    server = forkserver.ForkServer(ROOT, dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        env = dict(os.environ, WANT_CWD=str(tmp_path))
        out, err = tmp_path / "out", tmp_path / "err"
        for what, want in (("0", 0), ("3", 3), ("kill", -9), ("raise", 1)):
            assert server.run([str(script), what], tmp_path, env, out, err, timeout=60) == want, what
            assert out.read_text().startswith(f"argv ['{what}'] cwd True True"), out.read_text()
            assert "to stderr" in err.read_text()
        assert "ValueError: boom" in err.read_text()
        assert server.run([str(script), "sleep"], tmp_path, env, out, err, timeout=1) == 124
    finally:
        server.close()
    assert server.proc.returncode == 0
