"""Self-check quizzes: answer, then see why.

The questions live in ``course_lib/lab/quiz_data.py`` (plain data, one list per lesson), so a notebook cell reads

    q = quiz("4.2.4", measured={"batch8_speedup": b8["vs_batch1"]})

and the answers are not in the notebook. Two kinds of question:

- ``Question``: a multiple-choice question with a fixed answer and an explanation;
- ``Predict``: "predict the number": the options are ranges of a quantity the notebook has just
  measured, and the right option is the range that holds the value passed in ``measured``.
  Answer before reading the measurement table, then compare.

``show()`` renders the quiz once: as an ipywidgets form (radio buttons and a "检查答案" button)
when a live kernel has ipywidgets, with the plain-text quiz as the same output's fallback, so a
stored notebook, a terminal or a viewer without widgets shows the text, never both. Without
widgets, answer with ``q.answer(1, "B")``.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from course_lib.lab.quiz_data import QUIZZES, TITLES

try:  # the notebook path; a terminal or test run works without them
    import ipywidgets as _widgets
    from IPython import get_ipython
    from IPython.display import display
except ImportError:  # pragma: no cover - ipywidgets is a course dependency
    _widgets = None
    get_ipython = None
    display = None

LETTERS = "ABCDEFGH"


@dataclass
class Question:
    prompt: str
    options: Sequence[str]
    answer: int                  # index into options
    explanation: str             # why the answer is right (and the others are not)

    def __post_init__(self) -> None:
        if not 0 <= self.answer < len(self.options):
            raise ValueError(f"answer index {self.answer} out of range for {len(self.options)} options")

    def correct(self, measured: Mapping[str, float]) -> int | None:
        return self.answer

    def explain(self, measured: Mapping[str, float]) -> str:
        return self.explanation


@dataclass
class Predict:
    """Predict a number the notebook measures. ``options[i]`` covers ``edges[i-1] <= x < edges[i]``."""

    prompt: str
    key: str                     # the name the notebook passes in ``measured``
    options: Sequence[str]
    edges: Sequence[float]       # ascending, len(options) - 1 boundaries
    explanation: str             # may use {value}: the measured number
    fmt: str = "{:.3g}"

    def __post_init__(self) -> None:
        if len(self.edges) != len(self.options) - 1 or list(self.edges) != sorted(self.edges):
            raise ValueError(f"Predict {self.key!r}: need {len(self.options) - 1} ascending edges")

    def correct(self, measured: Mapping[str, float]) -> int | None:
        if self.key not in measured:
            return None
        return bisect.bisect_right(list(self.edges), float(measured[self.key]))

    def explain(self, measured: Mapping[str, float]) -> str:
        if self.key not in measured:
            return f"（没有收到测量值 {self.key}：先运行上面的实验单元格，再用 measured= 传入。）"
        return f"本次运行测得 {self.key} = {self.fmt.format(float(measured[self.key]))}。" + \
            self.explanation.format(value=self.fmt.format(float(measured[self.key])))


Item = Question | Predict


def build_item(d: Mapping) -> Item:
    """One question from its plain-data form in quiz_data (``key`` present = a Predict)."""
    if "key" in d:
        return Predict(d["prompt"], d["key"], d["options"], d["edges"], d["why"], d.get("fmt", "{:.3g}"))
    return Question(d["prompt"], d["options"], d["answer"], d["why"])


@dataclass
class Quiz:
    title: str
    questions: list[Item] = field(default_factory=list)
    measured: dict[str, float] = field(default_factory=dict)

    def as_text(self) -> str:
        lines = [f"自检 (self-check)：{self.title}"]
        for i, q in enumerate(self.questions, 1):
            tag = "  〔预测数值：先猜，再看本课测得的结果〕" if isinstance(q, Predict) else ""
            lines.append(f"\n{i}. {q.prompt}{tag}")
            lines.extend(f"   {LETTERS[j]}. {opt}" for j, opt in enumerate(q.options))
        lines.append("\n作答：q.answer(题号, \"字母\")，例如 q.answer(1, \"B\")；"
                     "在运行中的 JupyterLab 里也可以直接点选。")
        return "\n".join(lines)

    def _verdict(self, q: Item, idx: int) -> tuple[bool | None, str]:
        right = q.correct(self.measured)
        if right is None:
            return None, q.explain(self.measured)
        ok = idx == right
        head = "✓ 正确。" if ok else f"✗ 不对，正确答案是 {LETTERS[right]}。"
        return ok, head + " " + q.explain(self.measured)

    def answer(self, number: int, choice: str) -> bool | None:
        """Check one answer in plain text; prints right/wrong and the explanation."""
        if not 1 <= number <= len(self.questions):
            raise ValueError(f"题号应在 1..{len(self.questions)} 之间，收到 {number}")
        q = self.questions[number - 1]
        idx = LETTERS.find(str(choice).strip().upper()[:1])
        if idx < 0 or idx >= len(q.options):
            raise ValueError(f"选项应是 {LETTERS[:len(q.options)]} 之一，收到 {choice!r}")
        ok, text = self._verdict(q, idx)
        print(text)
        return ok

    def _widget(self):
        w = _widgets
        boxes = []
        for i, q in enumerate(self.questions, 1):
            radio = w.RadioButtons(options=[(f"{LETTERS[j]}. {o}", j) for j, o in enumerate(q.options)],
                                   value=None, layout=w.Layout(width="auto"))
            out = w.HTML()
            btn = w.Button(description="检查答案", button_style="info")

            def on_click(_, q=q, radio=radio, out=out):
                if radio.value is None:
                    out.value = "<i>先选一个答案。</i>"
                    return
                ok, text = self._verdict(q, radio.value)
                color = "#666" if ok is None else ("green" if ok else "#b00")
                out.value = f"<span style='color:{color}'>{text}</span>"

            btn.on_click(on_click)
            tag = " <i>〔预测数值〕</i>" if isinstance(q, Predict) else ""
            boxes.append(w.VBox([w.HTML(f"<b>{i}. {q.prompt}</b>{tag}"), radio, btn, out]))
        return w.VBox(boxes)

    def show(self) -> Quiz:
        """Render once: a widget (with the text as its fallback) in a live kernel, else the text."""
        live = _widgets is not None and get_ipython is not None and get_ipython() is not None \
            and getattr(get_ipython(), "kernel", None) is not None
        if not live:
            print(self.as_text())
            return self
        widget = self._widget()
        bundle = widget._repr_mimebundle_()
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        data = dict(data or {})
        data["text/plain"] = self.as_text()
        # tools/build_notebooks.py keeps only the text of outputs marked like this when it stores
        # a notebook: a saved widget without its kernel would show nothing useful.
        display(data, raw=True, metadata={"course_static_text": True})
        return self

    def __repr__(self) -> str:
        return f"<Quiz {self.title!r}: {len(self.questions)} 题；q.answer(题号, \"字母\") 作答>"


def quiz(lesson: str, measured: Mapping[str, float] | None = None, show: bool = True) -> Quiz:
    """The self-check of one lesson (``"4.0.2"``), shown once; ``measured`` feeds its Predict questions."""
    if lesson not in QUIZZES:
        raise KeyError(f"没有课程 {lesson!r} 的自检题；已有：{', '.join(sorted(QUIZZES))}")
    q = Quiz(f"{lesson} {TITLES[lesson]}", [build_item(d) for d in QUIZZES[lesson]], dict(measured or {}))
    missing = [p.key for p in q.questions if isinstance(p, Predict) and p.key not in q.measured]
    if missing and measured is not None:
        raise KeyError(f"quiz({lesson!r}): measured 里缺少 {missing}；请传入本课测得的这些数值")
    return q.show() if show else q
