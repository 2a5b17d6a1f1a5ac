"""The course map names real files: every notebook, exercise and test it lists exists, and every
exercise file in exercises/ appears in it."""

from pathlib import Path

from course_lib.lab.course_map import COURSE_MAP, exercise_prefix

ROOT = Path(__file__).resolve().parents[1]


def test_every_listed_file_exists():
    for e in COURSE_MAP:
        assert (ROOT / "notebooks" / e["notebook"]).exists(), f"课程地图里的 notebook 不存在：{e['notebook']}"
        for stem in e["exercises"]:
            assert stem.startswith(exercise_prefix(e["id"])), f"{stem} 不属于 {e['id']}"
            for d in ("exercises", "solutions"):
                assert (ROOT / d / f"{stem}.py").exists(), f"{d}/{stem}.py 不存在"
            assert (ROOT / "tests" / "exercises" / f"test_{stem}.py").exists(), f"缺少评分测试 test_{stem}.py"
        for t in e.get("tests", []):
            assert (ROOT / t).exists(), f"课程地图里的测试文件不存在：{t}"


def test_every_exercise_is_on_the_map():
    listed = {s for e in COURSE_MAP for s in e["exercises"]}
    on_disk = {p.stem for p in (ROOT / "exercises").glob("ex*.py")}
    assert on_disk == listed, (
        f"练习文件与课程地图不一致：多出 {sorted(on_disk - listed)}，缺少 {sorted(listed - on_disk)}"
    )
