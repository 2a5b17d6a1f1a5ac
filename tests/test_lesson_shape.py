"""Every lesson has the same shape: it opens with its goal, prerequisites and a CPU time estimate,
and closes with a summary, its exercises, the self-check quiz and what to try next."""

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "notebooks" / "src"
LESSONS = sorted(p for p in SRC.glob("*.py") if re.match(r"\d", p.name) and not p.name.startswith("00-"))

OPENING = ["学习目标", "前置知识", "预计时间"]
CLOSING = ["小结", "练习", "自检", "下一步"]


@pytest.mark.parametrize("src", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_opens_and_closes_the_same_way(src):
    text = src.read_text(encoding="utf-8")
    head = text[: len(text) // 3]
    for word in OPENING:
        assert word in head, f"{src.name}: 开头应写明「{word}」"
    assert re.search(r"预计时间\*\*：运行\{\{run_time\}\}", head), (
        f"{src.name}: 「预计时间」的运行时间应写成 {{{{run_time}}}}，由构建测得的 notebooks/timings.json 填写，不要手写"
    )
    positions = []
    for word in CLOSING:
        m = re.search(rf"^# #+ .*{word}", text, re.MULTILINE)
        assert m, f"{src.name}: 结尾应有「{word}」小节 (markdown 标题)"
        positions.append(m.start())
    assert positions == sorted(positions), f"{src.name}: 结尾小节的顺序应为 {CLOSING}"
    lesson = src.name.split("-")[0]
    assert f'quiz("{lesson}"' in text, (
        f'{src.name}: 自检小节应调用 course_lib.lab.quiz.quiz("{lesson}", measured={{...}})'
    )
    if "99-capstone" not in src.name:
        assert re.search(r"check\(\"\d\.\d\.\d\"\)", text), f'{src.name}: 练习小节应有 check("x.y.z") 单元'


def test_there_are_lessons():
    assert len(LESSONS) >= 1
