"""The README opens with exactly the two commands, and its course map is course_map's."""

import re
from pathlib import Path

from course_lib.lab.course_map import markdown_table

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_readme_opens_with_the_two_commands():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert first_block, "README 里没有命令代码块"
    assert first_block.group(1).split("\n")[:-1] == ["make lab", "make test"], (
        f"README 的第一个代码块应当正好是 make lab 和 make test，实际是 {first_block.group(1)!r}"
    )
    assert README.index(first_block.group(0)) < README.index("\n## "), "两条命令应在第一个小节之前"


def test_readme_course_map_matches_course_map_module():
    assert markdown_table() in README, (
        "README 的课程地图与 course_lib/lab/course_map.py 不一致：请把 markdown_table() 的输出粘贴到 README"
    )


def test_readme_time_table_is_generated_from_the_build():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from build_notebooks import load_timings
    from lesson_times import render

    timings = load_timings()
    assert timings, "notebooks/timings.json 为空：用 make notebooks 构建一次就会记录每课的运行时间"
    assert render(README, timings) == README, (
        "README 的「每课运行时间」表与 notebooks/timings.json 不一致：运行 python tools/lesson_times.py"
    )


def test_every_stored_notebook_has_a_measured_time():
    from build_notebooks import load_timings

    root = Path(__file__).resolve().parents[1]
    missing = [p.stem for p in (root / "notebooks" / "src").glob("*.py") if p.stem not in load_timings()]
    assert not missing, f"这些 notebook 还没有测量过运行时间（make notebooks NB=...）：{missing}"
