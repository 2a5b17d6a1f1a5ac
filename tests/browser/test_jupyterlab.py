"""A learner's session in a real browser: JupyterLab serves a lesson, all cells run, a slider moves
the interactive plot. Screenshots go to runs/browser-screenshots/ (or $COURSE_SCREENSHOT_DIR).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from browser_support import LAB_TOKEN, ROOT, jupyterlab

# The lesson whose interactive schedule explorer (ipywidgets sliders) the test drives.
NOTEBOOK = os.environ.get("COURSE_BROWSER_NOTEBOOK", str(ROOT / "notebooks" / "4.0.2-lr-warmup.ipynb"))
TOKEN = LAB_TOKEN


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on loopback with a token, serving a *copy* of the notebook (autosave must never
    touch the stored lesson), kernels in quick mode."""
    src = Path(NOTEBOOK)
    assert src.exists(), f"要测试的 notebook 不存在：{src}"
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(src, root / src.name)
    # jupyterlab() renders every cell (JupyterLab 4 virtualizes long notebooks: off-screen cells have
    # no DOM, so their prompts could not be checked) and shows no news pop-up over the page.
    with jupyterlab(root, tmp_path) as port:
        yield {"port": port, "name": src.name, "log": tmp_path / "lab.log"}


def _executed_all(page) -> bool:
    prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
    return bool(prompts) and all(p.strip() not in ("[ ]:", "[*]:", "") for p in prompts)


def _interactive_image(page):
    """The <img> rendered by the ipywidgets `interact` output next to the sliders."""
    return page.locator(".widget-interact .jp-OutputArea-output img, .widget-output img").first


def test_lesson_runs_in_jupyterlab_and_slider_changes_plot(lab, browser, screenshot_dir):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    url = f"http://127.0.0.1:{lab['port']}/lab/tree/{lab['name']}?token={TOKEN}"
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    # A notebook without kernel metadata asks which kernel to use: take the default.
    try:
        page.locator(".jp-Dialog .jp-mod-accept").click(timeout=5_000)
    except Exception:  # noqa: BLE001 - no dialog: the notebook names its kernel
        pass
    # Kernel ready, then Run > Run All Cells, the way a learner does it.
    page.wait_for_selector(".jp-StatusBar-TextItem:has-text('Idle')", timeout=180_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    t0 = time.time()
    while not _executed_all(page):
        if time.time() - t0 > 420:
            page.screenshot(path=str(screenshot_dir / "lab-timeout.png"), full_page=True)
            pytest.fail("JupyterLab 里 Run All Cells 7 分钟内没有跑完")
        time.sleep(1)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    errors = page.locator(
        ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] .ansi-red-fg, "
        ".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']"
    ).count()
    page.screenshot(path=str(screenshot_dir / "lab-after-run-all.png"), full_page=False)
    assert errors == 0, f"notebook 在浏览器里运行时出现了 {errors} 个错误输出，截图见 {screenshot_dir}"

    # numbers formatted for reading: the peak-lr slider reads 3e-3, not 0.00316
    if 'readout_format=\\".0e\\"' in Path(NOTEBOOK).read_text(encoding="utf-8"):  # 4.0.2 once rebuilt
        readout = page.locator(".widget-slider .widget-readout").first.inner_text().strip()
        assert readout == "3e-3", f"学习率滑块应显示 3e-3 这样的读数，实际显示 {readout!r}"

    handle = page.locator(".widget-slider .noUi-handle").first
    handle.scroll_into_view_if_needed()
    img = _interactive_image(page)
    img.wait_for(state="visible")
    before = img.get_attribute("src")
    page.screenshot(path=str(screenshot_dir / "lab-slider-before.png"))
    handle.focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    t0 = time.time()
    after = before
    while after == before and time.time() - t0 < 60:
        time.sleep(0.5)
        after = _interactive_image(page).get_attribute("src")
    page.screenshot(path=str(screenshot_dir / "lab-slider-after.png"))
    assert after != before, "移动滑块 (slider) 之后图没有变化：交互式图应随滑块重新绘制"
    page.close()
