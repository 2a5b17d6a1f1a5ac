"""Helpers for the real-browser tests: free ports, server processes, headless Chromium.

The browser is the distribution's Chromium (`apt-get install chromium`), driven by Playwright
with `executable_path`; nothing is downloaded by the test tool. On a learner's machine without
Chromium these tests are skipped with the reason; CI sets COURSE_REQUIRE_BROWSER=1 (see
.ci/run), which turns a missing browser into a failure instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from course_lib.distributed import free_port  # noqa: F401  (re-exported for the tests)

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
    rendered (no windowing) and no news pop-up; yields the port."""
    port = free_port()
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
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            f"--port={port}",
            "--ip=127.0.0.1",
            f"--IdentityProvider.token={LAB_TOKEN}",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.open_browser=False",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
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
