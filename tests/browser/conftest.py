"""Fixtures for the real-browser tests (see browser_support.py for the why)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser_support import SCREENSHOT_DIR, find_chromium


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        msg = "没有找到 Chromium：请先安装 (Debian/Ubuntu: apt-get install chromium)"
        if os.environ.get("COURSE_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail("playwright 未安装：运行 make install (它在 pyproject 的 test 依赖里)")
    return path


@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=chromium_path,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
            ],
        )
        yield b
        b.close()


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    return SCREENSHOT_DIR
