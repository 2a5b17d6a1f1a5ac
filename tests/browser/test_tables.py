"""The grader's tables fit their labels on a laptop screen: in JupyterLab at 1280 px wide, every
status label of a check() table and a progress() table sits on one line (no "未/实/现" stacking
beside a long message). Screenshot: runs/browser-screenshots/tables-1280.png.
"""

from __future__ import annotations

import inspect

import nbformat
from browser_support import LAB_TOKEN, jupyterlab, run_all_cells

# The cell a learner runs, plus the table shapes check() and progress() produce: long failure
# messages and long test names squeeze the status column hardest.
CELLS = [
    'from course_lib.lab.grading import check\nresult = check("00")',
    """from course_lib.lab.grading import STATUS_FAIL, STATUS_PASS, STATUS_TODO, CheckResult, Progress, TestRow
long = ("期望 lr = 3.0e-04（第 12 步，warmup 之后按余弦衰减），实际得到 0.0e+00：第 0 步的 lr 应为 peak/warmup；"
        "检查 step 是从 0 还是从 1 开始数，以及衰减是否在 warmup 结束之后才开始。") * 2
rows = [TestRow("ex402_lr_schedule", "test_matches_the_closed_form_for_every_step_of_a_long_schedule[cosine-40-400]", s, long)
        for s in (STATUS_PASS, STATUS_FAIL, STATUS_TODO)]
CheckResult("4.0.2", ["ex402_lr_schedule"], rows)""",
    """Progress([("ex402_lr_schedule", s, 3, 6, long) for s in ("全部通过", "部分通过", "未通过", "未开始")])""",
]

LINES_PER_STATUS_CELL = """
() => {
  const out = [];
  for (const table of document.querySelectorAll('.jp-OutputArea-output table')) {
    const heads = [...table.querySelectorAll('th')].map(th => th.textContent.trim());
    const col = heads.findIndex(h => h === '结果' || h === '状态');
    if (col < 0) continue;
    for (const tr of table.querySelectorAll('tr')) {
      const td = tr.querySelectorAll('td')[col];
      if (!td) continue;
      const range = document.createRange();
      range.selectNodeContents(td);
      const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
      const lineHeight = parseFloat(getComputedStyle(td).lineHeight) || 20;
      out.push({label: td.textContent.trim(), lines: tops.size,
                height: range.getBoundingClientRect().height, lineHeight});
    }
  }
  return out;
}
"""


def test_status_labels_fit_on_one_line_at_1280px(browser, screenshot_dir, tmp_path):
    from course_lib.lab import grading

    assert "status_cell" in inspect.getsource(grading), "grading.py 的状态列应使用 status_cell (white-space:nowrap)"
    root = tmp_path / "lab"
    root.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "tables.ipynb")
    with jupyterlab(root, tmp_path) as port:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(f"http://127.0.0.1:{port}/lab/tree/tables.ipynb?token={LAB_TOKEN}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        run_all_cells(page)
        page.wait_for_selector(".jp-OutputArea-output table", timeout=60_000)
        cells = page.evaluate(LINES_PER_STATUS_CELL)
        page.screenshot(path=str(screenshot_dir / "tables-1280.png"), full_page=True)
        page.close()
    labels = {c["label"] for c in cells}
    assert {"通过", "未通过", "未实现", "全部通过", "部分通过", "未开始"} <= labels, f"表里缺少状态：{sorted(labels)}"
    # the label's own text box (not the cell, which is as tall as its row's message): one line high
    broken = [c for c in cells if c["lines"] > 1 or c["height"] > 1.6 * c["lineHeight"]]
    assert not broken, (
        f"1280 px 宽时这些状态标签被折成了多行（截图 {screenshot_dir / 'tables-1280.png'}）："
        f"{[(c['label'], c['lines'], round(c['height'])) for c in broken]}"
    )
