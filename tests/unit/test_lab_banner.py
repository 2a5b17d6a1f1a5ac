"""`make lab` prints the port JupyterLab is asked for in LAB_ARGS (issue: the banner said 8888 whatever --port was)."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("lab_tool", Path(__file__).resolve().parents[2] / "tools" / "lab.py")
lab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lab)


@pytest.mark.parametrize(
    "args, port",
    [
        ([], 8888),
        (["--no-browser"], 8888),
        (["--no-browser", "--port", "8890"], 8890),
        (["--port=8891"], 8891),
        (["--ServerApp.port=9000", "--no-browser"], 9000),
        (["--port", "abc"], 8888),
    ],
)
def test_lab_port_is_read_from_lab_args(args, port):
    assert lab.lab_port(args) == port


def test_banner_names_the_port_and_the_start_page(capsys):
    assert lab.main(["banner", "--no-browser", "--port", "8890"]) == 0
    out = capsys.readouterr().out
    assert "http://localhost:8890/lab/tree/my-notebooks/00-setup.ipynb" in out and "8888" not in out


def test_the_makefile_prints_the_banner_with_lab_args():
    text = (Path(__file__).resolve().parents[2] / "Makefile").read_text(encoding="utf-8")
    assert "tools/lab.py banner $(LAB_ARGS)" in text
