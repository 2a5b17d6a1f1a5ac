"""TensorBoard, started the way a learner would, serves the scalar series a training run logged."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from browser_support import port_from_log, stop, wait_http

from course_lib.monitor import StepLogger


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read().decode())


def test_tensorboard_serves_logged_scalars(tmp_path, browser, screenshot_dir):
    run_dir = tmp_path / "run"
    log = StepLogger(run_dir, total_steps=30, interval=1, tensorboard=True, console=False)
    log.start(0)
    losses = [5.0 * math.exp(-s / 10) + 1.0 for s in range(1, 31)]
    for s, loss in enumerate(losses, 1):
        log.count_tokens(1000)
        log.log(s, {"loss": loss, "lr": 1e-3, "grad_norm": 1.0})
    log.close()

    out = open(tmp_path / "tb.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(run_dir),
            "--host",
            "127.0.0.1",
            "--port",
            "0",  # the OS chooses; TensorBoard names the port in its banner
            "--reload_interval",
            "1",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        port = port_from_log(tmp_path / "tb.log", r"TensorBoard \S+ at http://127\.0\.0\.1:(\d+)/", proc)
        assert port is not None, (tmp_path / "tb.log").read_text()
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/data/runs", timeout=120)
        t0, tags = time.time(), {}
        while time.time() - t0 < 60:
            tags = _get_json(base + "/data/plugin/scalars/tags")
            if any("train/loss" in t for t in tags.values()):
                break
            time.sleep(1)
        run = next((r for r, t in tags.items() if "train/loss" in t), None)
        assert run is not None, f"TensorBoard 没有提供 train/loss 标量 (scalar)；它看到的 tags: {tags}"
        q = urllib.parse.urlencode({"run": run, "tag": "train/loss"})
        series = _get_json(f"{base}/data/plugin/scalars/scalars?{q}")
        steps = [int(p[1]) for p in series]
        values = [float(p[2]) for p in series]
        assert steps == list(range(1, 31)), f"期望 30 个 step (1..30)，TensorBoard 返回 {steps}"
        assert all(abs(a - b) < 1e-5 for a, b in zip(values, losses, strict=True)), (
            "TensorBoard 返回的 loss 与写入的不一致"
        )

        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(base + "/#timeseries")
        page.wait_for_timeout(4000)
        page.screenshot(path=str(screenshot_dir / "tensorboard-scalars.png"))
        page.close()
    finally:
        stop(proc)
        out.close()
