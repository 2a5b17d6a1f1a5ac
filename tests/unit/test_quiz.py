"""The self-check quizzes test understanding, not pattern matching (issue: quizzes).

- across the course no answer letter holds more than 35% of the fixed answers;
- the correct option is the longest in at most 40% of the questions;
- no question appears twice (in one lesson or across lessons);
- every lesson has a "predict the number" question, and its notebook passes that measurement;
- the answers are not in the notebook sources (the cell reads quiz("x.y.z", ...)).
"""
from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest

from course_lib.lab.quiz import LETTERS, Predict, Question, build_item, quiz
from course_lib.lab.quiz_data import QUIZZES

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {p.name.split("-")[0]: p for p in sorted((ROOT / "notebooks" / "src").glob("*.py"))}
ITEMS = [(lesson, build_item(d)) for lesson, qs in QUIZZES.items() for d in qs]


def test_answer_positions_are_spread():
    fixed = [q.answer for _, q in ITEMS if isinstance(q, Question)]
    counts = collections.Counter(fixed)
    worst, n = counts.most_common(1)[0]
    assert n <= 0.35 * len(fixed), (
        f"选项 {LETTERS[worst]} 是 {n}/{len(fixed)} 道题的正确答案（上限 35%）：把正确答案分散到各个位置")


def test_correct_option_is_rarely_the_longest():
    fixed = [q for _, q in ITEMS if isinstance(q, Question)]
    longest = [q.prompt for q in fixed
               if len(q.options[q.answer]) > max(len(o) for i, o in enumerate(q.options) if i != q.answer)]
    assert len(longest) <= 0.4 * len(fixed), (
        f"{len(longest)}/{len(fixed)} 道题的正确答案是最长的选项（上限 40%）：干扰项要和答案一样长、一样可信。"
        f"例如：{longest[:3]}")


def test_no_question_repeats():
    prompts = collections.Counter(q.prompt.strip() for _, q in ITEMS)
    dup = [p for p, n in prompts.items() if n > 1]
    assert not dup, f"这些题目重复出现：{dup}"
    for _, q in ITEMS:
        assert len(set(q.options)) == len(q.options), f"选项重复：{q.prompt}"


@pytest.mark.parametrize("lesson", sorted(QUIZZES))
def test_each_lesson_predicts_a_measured_number(lesson):
    keys = [q.key for q in map(build_item, QUIZZES[lesson]) if isinstance(q, Predict)]
    assert keys, f"{lesson} 没有「预测数值」题：至少要有一道题的答案由本课测得的数值判定"
    src = SOURCES.get(lesson)
    assert src is not None, f"{lesson} 没有对应的 notebook 源文件"
    text = src.read_text(encoding="utf-8")
    call = re.search(r"quiz\(\s*\"" + re.escape(lesson) + r"\"(.*?)\)\s*$", text, re.DOTALL | re.MULTILINE)
    assert call, f"{src.name}: 自检单元格应调用 quiz(\"{lesson}\", measured={{...}})"
    for k in keys:
        assert f'"{k}"' in call.group(1), f"{src.name}: quiz(\"{lesson}\") 没有传入 measured[\"{k}\"]"


@pytest.mark.parametrize("lesson", sorted(QUIZZES))
def test_answers_are_not_in_the_notebook(lesson):
    text = SOURCES[lesson].read_text(encoding="utf-8")
    assert "Question(" not in text and "Quiz(" not in text, (
        f"{SOURCES[lesson].name}: 题目和答案应放在 course_lib/lab/quiz_data.py，notebook 只调用 quiz(\"{lesson}\")")


def test_predict_grades_against_the_measurement(capsys):
    q = quiz("4.2.4", measured={"batch8_speedup": 5.1}, show=False)
    n = next(i for i, item in enumerate(q.questions, 1) if isinstance(item, Predict))
    assert q.answer(n, "C") is True
    assert q.answer(n, "A") is False
    assert "5.1" in capsys.readouterr().out
    q2 = quiz("4.2.4", measured={"batch8_speedup": 1.5}, show=False)
    assert q2.answer(n, "A") is True
    with pytest.raises(KeyError):
        quiz("4.2.4", measured={"wrong_key": 1.0}, show=False)


def test_text_rendering_once_and_without_answers(capsys):
    quiz("4.0.2", measured={"hf_lr_step1": 0.25})
    out = capsys.readouterr().out
    assert out.count("自检 (self-check)") == 1
    for d in QUIZZES["4.0.2"]:
        assert d["why"].split("{")[0][:20] not in out, "题目文本里不应出现解析 (explanation)"
