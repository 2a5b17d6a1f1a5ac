"""Unit tests for the set-up tooling: tools/install_torch.py decisions and grading id lookup."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_notebooks  # noqa: E402, F401  (the stored-output tests import from it)
import install_torch  # noqa: E402
import lab  # noqa: E402

from course_lib.lab import grading  # noqa: E402


@pytest.fixture
def machine(monkeypatch):
    """Pretend-machine: set what install_torch sees."""
    state = {"torch": None, "gpu": False, "dns": False}
    monkeypatch.setattr(install_torch, "torch_version", lambda: state["torch"])
    monkeypatch.setattr(install_torch, "has_nvidia_gpu", lambda: state["gpu"])
    monkeypatch.setattr(install_torch, "resolves", lambda host, timeout=3.0: state["dns"])
    monkeypatch.setattr(install_torch.sys, "platform", "linux")
    monkeypatch.delenv("TORCH_SPEC", raising=False)
    return state


def test_torch_present_means_nothing_to_do(machine):
    machine["torch"] = "2.5.1+cu121"
    assert install_torch.plan() is None


def test_gpu_gets_the_usual_cuda_build(machine):
    machine["gpu"] = True
    assert install_torch.plan() == ["install", "torch"]


def test_cpu_with_pytorch_index_uses_cpu_index(machine):
    machine["dns"] = True
    assert install_torch.plan() == [
        "install",
        f"torch=={install_torch.CPU_VERSION}",
        "--index-url",
        install_torch.CPU_INDEX,
    ]


def test_cpu_offline_pins_version_without_extra_index(machine):
    args = install_torch.plan()
    assert args == ["install", f"torch=={install_torch.CPU_VERSION}"]
    assert not any("index" in a for a in args), "不可达的索引 (index) 会让 pip 反复重试"


def test_torch_spec_overrides(machine, monkeypatch):
    monkeypatch.setenv("TORCH_SPEC", "torch==2.4.1")
    assert install_torch.plan() == ["install", "torch==2.4.1"]


def test_dns_lookup_times_out_quickly():
    import time

    t0 = time.perf_counter()
    install_torch.resolves("nonexistent.invalid", timeout=0.5)
    assert time.perf_counter() - t0 < 3.0


def test_find_root_and_resolve_ids():
    root = grading.find_root()
    assert (root / "exercises").is_dir() and root == ROOT
    assert grading.resolve("00", root) == ["ex00_rmsnorm"]
    assert grading.resolve("ex00_rmsnorm", root) == ["ex00_rmsnorm"]
    assert grading.resolve("exercises/ex00_rmsnorm.py", root) == ["ex00_rmsnorm"]


def test_unknown_id_lists_known_exercises():
    with pytest.raises(grading.GradingError, match="ex00_rmsnorm"):
        grading.resolve("9.9.9")


# --- torch thread count (course_lib.lab.threads) and the CJK font check (course_lib.lab.envcheck) ---


def test_threads_follow_free_cores():
    from course_lib.lab.threads import MAX_THREADS, choose_threads

    assert choose_threads(cores=2, load=0.1, env="").threads == 2  # idle: every core
    assert choose_threads(cores=2, load=1.9, env="").threads == 1  # busy: degrade to 1
    assert choose_threads(cores=2, load=7.0, env="").threads == 1  # never below 1
    assert choose_threads(cores=64, load=0.0, env="").threads == MAX_THREADS
    assert choose_threads(cores=4, load=None, env="").threads == 4
    assert choose_threads(cores=2, load=1.9, env="3").threads == 3  # COURSE_THREADS wins
    with pytest.raises(ValueError, match="COURSE_THREADS"):
        choose_threads(cores=2, load=0.0, env="many")


def test_setup_threads_applies_and_says_so(capsys, monkeypatch):
    import torch

    from course_lib.lab.threads import setup_threads

    before = torch.get_num_threads()
    monkeypatch.setenv("COURSE_THREADS", "1")
    try:
        assert setup_threads().threads == 1
        assert torch.get_num_threads() == 1
        assert "线程数" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)


def test_cjk_font_check_warns_with_install_commands():
    from course_lib.lab.envcheck import check_cjk_font

    assert check_cjk_font("linux", lambda: "Noto Sans CJK SC,Noto Sans CJK SC Regular\n").status == "OK"
    missing = check_cjk_font("linux", lambda: "")
    assert missing.status == "WARN" and "apt-get install fonts-noto-cjk" in missing.detail
    assert check_cjk_font("linux", lambda: None).status == "WARN"
    assert check_cjk_font("darwin").status == "OK"


# --- the learner's working copies (tools/lab.py) and the Makefile's install split ---


def test_lab_copies_keep_the_learners_edits(tmp_path):

    stored = tmp_path / "notebooks"
    stored.mkdir()
    (stored / "00-setup.ipynb").write_text('{"v": 1}')
    (stored / "4.0.1-x.ipynb").write_text('{"v": 1}')
    done = lab.prepare(tmp_path, quiet=True)
    copies = tmp_path / lab.LAB_DIR_NAME
    assert sorted(done["added"]) == ["00-setup.ipynb", "4.0.1-x.ipynb"]
    assert not os.access(stored / "00-setup.ipynb", os.W_OK) or os.geteuid() == 0, "存储的 notebook 应是只读的"

    (copies / "00-setup.ipynb").write_text('{"v": "my edits"}')  # the learner's work
    (stored / "00-setup.ipynb").chmod(0o644)
    (stored / "00-setup.ipynb").write_text('{"v": 2}')  # the course changed it
    (stored / "4.2.1-new.ipynb").write_text('{"v": 1}')  # and added a lesson
    done = lab.prepare(tmp_path, quiet=True)  # make lab: only adds
    assert done["added"] == ["4.2.1-new.ipynb"]
    assert (copies / "00-setup.ipynb").read_text() == '{"v": "my edits"}'

    done = lab.prepare(tmp_path, refresh=True, quiet=True)  # make refresh-notebooks
    assert (copies / "00-setup.ipynb").read_text() == '{"v": 2}'
    assert (copies / "00-setup.bak.ipynb").read_text() == '{"v": "my edits"}'
    assert (copies / "4.0.1-x.ipynb").read_text() == '{"v": 1}' and len(done["replaced"]) == 1
    assert lab.start_path() == f"/lab/tree/{lab.LAB_DIR_NAME}/00-setup.ipynb"


def test_makefile_learner_install_and_lab_url():
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    stamp_recipe = text.split("$(STAMP): ")[1].split("\n\n")[0]
    assert "-e ." in stamp_recipe and "[test]" not in stamp_recipe and "[dev]" not in stamp_recipe, (
        "make install 只应安装课程需要的包；测试用的包属于 .[test]，由 make test 安装"
    )
    assert "\ntest: install-test" in text, "make test 应先安装 .[test]"
    assert "--LabApp.default_url" in text and "tools/lab.py prepare" in text, (
        "make lab 应先准备 my-notebooks/ 副本，并让 JupyterLab 打印的网址直接打开 00-setup"
    )
    assert "my-notebooks/" in (ROOT / ".gitignore").read_text(encoding="utf-8")


# --- progress bars (course_lib.lab.progress_bars) and the static outputs of stored notebooks ---

FAKE_TRAIN = (
    "import json, pathlib, sys, time\n"
    "d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True)\n"
    "for s in range(1, 6):\n"
    "    with open(d / 'metrics.jsonl', 'a') as f: f.write(json.dumps({'step': s, 'loss': 1.0}) + '\\n')\n"
    "    time.sleep(0.05)\n"
    "print('done')\n"
)


def test_progress_bars_finish_on_stdout(tmp_path, capsys):
    import subprocess

    from course_lib.lab.progress_bars import text_bar, watch_steps

    for _ in text_bar(range(5), desc="fake"):
        pass
    with watch_steps(tmp_path / "b", 5, "watched", poll_s=0.01):
        subprocess.run([sys.executable, "-c", FAKE_TRAIN, str(tmp_path / "b")], check=True, capture_output=True)
    out = capsys.readouterr()
    assert "fake: 100%" in out.out and "5/5" in out.out and "watched: 100%" in out.out
    assert out.err == "", "进度条不应写到 stderr"


def test_stored_outputs_are_static():
    import nbformat
    from build_notebooks import static_outputs

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="\rrun:   0%|  | 0/4\rrun:  50%|"),
        nbformat.v4.new_output("stream", name="stdout", text="#  | 2/4\rrun: 100%|##| 4/4\nafter\n"),
        nbformat.v4.new_output(
            "display_data",
            data={"text/plain": "quiz text", "application/vnd.jupyter.widget-view+json": {"model_id": "x"}},
            metadata={"course_static_text": True},
        ),
    ]
    nb.cells.append(cell)
    static_outputs(nb)
    assert [o.output_type for o in cell.outputs] == ["stream", "display_data"]
    assert cell.outputs[0].text == "run: 100%|##| 4/4\nafter\n"
    assert dict(cell.outputs[1].data) == {"text/plain": "quiz text"}


def test_lesson_header_time_comes_from_the_recorded_build(tmp_path):
    import nbformat
    from build_notebooks import RUN_TIME, fill_run_time, load_timings, record_timing

    path = tmp_path / "timings.json"
    timings = record_timing("4.9.9-demo", 151.0, path, load_before=0.1)
    assert load_timings(path)["4.9.9-demo"]["seconds"] == 151.0
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(f"**预计时间**：运行{RUN_TIME}，阅读约 30 分钟。"))
    fill_run_time(nb, "4.9.9-demo", timings)
    assert "约 2.5 分钟" in nb.cells[0].source and RUN_TIME not in nb.cells[0].source
    other = nbformat.v4.new_notebook()
    other.cells.append(nbformat.v4.new_markdown_cell(f"运行{RUN_TIME}"))
    fill_run_time(other, "unmeasured", timings)
    assert "尚未测量" in other.cells[0].source


def test_graders_run_without_the_test_extras():
    """A learner who ran only `make lab` has no pytest-xdist: the root conftest's xdist hook must be
    optional, or every check() in the lessons ends in pytest's INTERNALERROR (unknown hook)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-q", "-p", "no:cacheprovider",
         "tests/exercises/test_ex00_rmsnorm.py", "--impl", "solutions"],
        cwd=root, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode == 0, f"评分测试在没有 pytest-xdist 的环境里无法运行：\n{(r.stdout + r.stderr)[-2000:]}"
