"""Helpers for the real-browser tests: server processes, headless Chromium.

Every server binds a port the OS chooses (``--port 0``) and names it in its log, read back with
``port_from_log``: no port is picked before the server binds it, so parallel test workers
cannot race for one.

The browser is the distribution's Chromium (`apt-get install chromium`), driven by Playwright
with `executable_path`; nothing is downloaded by the test tool. On a learner's machine without
Chromium these tests are skipped with the reason; CI sets COURSE_REQUIRE_BROWSER=1 (see
.ci/run), which turns a missing browser into a failure instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR = Path(os.environ.get("COURSE_SCREENSHOT_DIR", ROOT / "runs" / "browser-screenshots"))


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def wait_http(url: str, timeout: float = 90.0) -> None:
    t0 = time.time()
    last = None
    while time.time() - t0 < timeout:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except Exception as e:  # noqa: BLE001 - server not up yet
            last = e
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s ({last})")


def port_from_log(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 120.0) -> int | None:
    """The port in the first line of ``log`` that matches ``pattern`` (one group: the port), once the
    server has written it; ``None`` if ``proc`` exits first."""
    rx = re.compile(pattern)
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = rx.search(log.read_text(errors="replace")) if log.exists() else None
        if m:
            return int(m[1])
        if proc.poll() is not None:
            return None
        time.sleep(0.2)
    raise TimeoutError(f"no line matching {pattern!r} in {log} within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


LAB_TOKEN = "course-browser-test"


@contextlib.contextmanager
def jupyterlab(root: Path, tmp_path: Path):
    """JupyterLab on loopback with a token, serving ``root``, kernels in quick mode, every cell
    rendered (no windowing) and no news pop-up; yields the port (the OS's choice: ``--port=0``).
    jupyter_server itself probes port 0 and binds it again a moment later; in the rare case that
    another process takes it meanwhile the server exits, and it is started again."""
    settings = tmp_path / "settings"
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        '{"windowingMode": "none"}'
    )
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}'
    )
    env = dict(
        os.environ,
        COURSE_QUICK="1",
        JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
        JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
    )
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--port=0",
        "--ServerApp.port_retries=0",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={LAB_TOKEN}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.open_browser=False",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ] + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])
    log_path = tmp_path / "lab.log"
    for _attempt in range(3):
        log = open(log_path, "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        port = port_from_log(log_path, r"http://127\.0\.0\.1:(\d+)/lab", proc)
        if port is not None:
            break
        log.close()
    else:
        raise RuntimeError(f"JupyterLab did not start three times; see {log_path}")
    try:
        wait_http(f"http://127.0.0.1:{port}/api/status?token={LAB_TOKEN}", timeout=120)
        yield port
    finally:
        stop(proc)
        log.close()


def run_all_cells(page, timeout_s: float = 420) -> None:
    """Open-notebook page: wait for the kernel, Run > Run All Cells, wait until every prompt has a number."""
    try:
        page.locator(".jp-Dialog .jp-mod-accept").click(timeout=5_000)
    except Exception:  # noqa: BLE001 - no kernel dialog
        pass
    page.wait_for_selector(".jp-StatusBar-TextItem:has-text('Idle')", timeout=180_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    t0 = time.time()
    while True:
        prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
        if prompts and all(p.strip() not in ("[ ]:", "[*]:", "") for p in prompts):
            break
        if time.time() - t0 > timeout_s:
            raise TimeoutError(f"Run All Cells did not finish in {timeout_s:.0f} s")
        time.sleep(1)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
