"""Helpers for the real-browser tests: free ports, server processes, headless Chromium.

The browser is the distribution's Chromium (`apt-get install chromium`), driven by Playwright
with `executable_path`; nothing is downloaded by the test tool. On a learner's machine without
Chromium these tests are skipped with the reason; CI sets COURSE_REQUIRE_BROWSER=1 (see
.ci/run), which turns a missing browser into a failure instead.
"""
from __future__ import annotations

import os
import shutil
import subprocess
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
