"""Self-check quizzes: predict before you measure, answer after you read.

The questions live in ``course_lib/lab/quiz_data.py`` (plain data, one list per lesson), so the
answers are not in the notebooks. Two kinds of question, asked at two different places:

- ``Predict`` ("predict the number"): asked *before* the cell that measures it. The options are
  ranges of the quantity; the learner commits to a guess, runs the measurement, then reveals:

      p = predict("4.2.4", "batch8_speedup")      # the question; the widget records the guess
      ...                                         # the cell that measures it
      p.reveal(b8["vs_batch1"])                   # your guess, the measured value, the right range, why

  A stored notebook shows this statically as well: the predict cell's output is the question and
  its options (no value, no answer), the measuring cell's output comes next, and the reveal cell's
  output below it says which range the measured value fell in and why. tests/test_claims.py checks,
  for every stored notebook, that the measured value appears nowhere above its question.
- ``Question``: multiple choice with a fixed answer and an explanation, in the self-check at the
  end of the lesson (``quiz("4.0.2")``); some are *transfer* questions ("if the batch doubles, which
  line moves and why") that apply the lesson to a setting it did not show.

``show()`` renders once: as an ipywidgets form when a live kernel has ipywidgets, with the plain
text as the same output's fallback, so a stored notebook, a terminal or a viewer without widgets
shows the text, never both. Without widgets, answer with ``q.answer(1, "B")`` / ``p.guess("B")``.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .quiz_data import QUIZZES, TITLES

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
    answer: int  # index into options
    explanation: str  # why the answer is right (and the others are not)
    transfer: bool = False  # applies the lesson to a setting it did not show

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
    key: str  # the name the notebook passes in ``measured``
    options: Sequence[str]
    edges: Sequence[float]  # ascending, len(options) - 1 boundaries
    explanation: str  # may use {value}: the measured number
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
        return f"本次运行测得 {self.key} = {self.fmt.format(float(measured[self.key]))}。" + self.explanation.format(
            value=self.fmt.format(float(measured[self.key]))
        )


Item = Question | Predict


def build_item(d: Mapping) -> Item:
    """One question from its plain-data form in quiz_data (``key`` present = a Predict)."""
    if "key" in d:
        return Predict(d["prompt"], d["key"], d["options"], d["edges"], d["why"], d.get("fmt", "{:.3g}"))
    return Question(d["prompt"], d["options"], d["answer"], d["why"], bool(d.get("transfer", False)))


def _live() -> bool:
    """A running kernel with ipywidgets (JupyterLab), not a terminal, a test or a notebook build."""
    return (
        _widgets is not None
        and get_ipython is not None
        and get_ipython() is not None
        and getattr(get_ipython(), "kernel", None) is not None
    )


def _display_once(widget, text: str) -> None:
    bundle = widget._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    data = dict(data or {})
    data["text/plain"] = text
    # tools/build_notebooks.py keeps only the text of outputs marked like this when it stores
    # a notebook: a saved widget without its kernel would show nothing useful.
    display(data, raw=True, metadata={"course_static_text": True})


class _Shown:
    """``show()`` for an object with ``as_text()`` and ``_widget()``."""

    def show(self):
        """Render once: a widget (with the text as its fallback) in a live kernel, else the text.
        Returns the object itself."""
        if not _live():
            print(self.as_text())
            return self
        _display_once(self._widget(), self.as_text())
        return self


PREDICT_TAG = "〔先预测，再测量〕"
REVEAL_HEAD = "〔揭晓〕"


@dataclass
class Quiz(_Shown):
    title: str
    questions: list[Item] = field(default_factory=list)
    measured: dict[str, float] = field(default_factory=dict)

    def as_text(self) -> str:
        lines = [f"自检 (self-check)：{self.title}"]
        for i, q in enumerate(self.questions, 1):
            tag = "  〔预测数值：先猜，再看本课测得的结果〕" if isinstance(q, Predict) else ""
            if isinstance(q, Question) and q.transfer:
                tag = "  〔迁移：换一个本课没演示的设置〕"
            lines.append(f"\n{i}. {q.prompt}{tag}")
            lines.extend(f"   {LETTERS[j]}. {opt}" for j, opt in enumerate(q.options))
        lines.append('\n作答：q.answer(题号, "字母")，例如 q.answer(1, "B")；在运行中的 JupyterLab 里也可以直接点选。')
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
        idx = _letter_index(choice, len(q.options))
        ok, text = self._verdict(q, idx)
        print(text)
        return ok

    def _widget(self):
        w = _widgets
        boxes = []
        for i, q in enumerate(self.questions, 1):
            radio = w.RadioButtons(
                options=[(f"{LETTERS[j]}. {o}", j) for j, o in enumerate(q.options)],
                value=None,
                layout=w.Layout(width="auto"),
            )
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
            if isinstance(q, Question) and q.transfer:
                tag = " <i>〔迁移〕</i>"
            boxes.append(w.VBox([w.HTML(f"<b>{i}. {q.prompt}</b>{tag}"), radio, btn, out]))
        return w.VBox(boxes)

    def __repr__(self) -> str:
        return f'<Quiz {self.title!r}: {len(self.questions)} 题；q.answer(题号, "字母") 作答>'


def _letter_index(choice: str, n: int) -> int:
    idx = LETTERS.find(str(choice).strip().upper()[:1])
    if idx < 0 or idx >= n:
        raise ValueError(f"选项应是 {LETTERS[:n]} 之一，收到 {choice!r}")
    return idx


# The guesses made in this kernel, by (lesson, key): a re-run predict cell shows the guess it holds.
_GUESSES: dict[tuple[str, str], int] = {}


@dataclass
class Prediction(_Shown):
    """One "predict the number" question, asked before the cell that measures it."""

    lesson: str
    item: Predict
    measured: float | None = None

    @property
    def guessed(self) -> int | None:
        return _GUESSES.get((self.lesson, self.item.key))

    def guess(self, choice: str) -> None:
        """Record a guess without widgets: ``p.guess("B")``. Change it freely until you reveal."""
        idx = _letter_index(choice, len(self.item.options))
        _GUESSES[(self.lesson, self.item.key)] = idx
        print(f"已记下你的预测：{LETTERS[idx]}。运行下面的测量单元格，再运行 p.reveal(...) 揭晓。")

    def as_text(self) -> str:
        lines = [f"{PREDICT_TAG} {self.lesson} · {self.item.prompt}"]
        lines.extend(f"   {LETTERS[j]}. {opt}" for j, opt in enumerate(self.item.options))
        lines.append(
            '先选一个：p.guess("字母")，或在运行中的 JupyterLab 里点选并按「记下预测」；'
            "下面的单元格测出它，再下面的 p.reveal(...) 揭晓答案和测得的数值。"
        )
        return "\n".join(lines)

    def _widget(self):
        w = _widgets
        radio = w.RadioButtons(
            options=[(f"{LETTERS[j]}. {o}", j) for j, o in enumerate(self.item.options)],
            value=self.guessed,
            layout=w.Layout(width="auto"),
        )
        btn = w.Button(description="记下预测", button_style="info")
        out = w.HTML()

        def on_click(_):
            if radio.value is None:
                out.value = "<i>先选一个答案。</i>"
                return
            _GUESSES[(self.lesson, self.item.key)] = radio.value
            out.value = f"已记下：<b>{LETTERS[radio.value]}</b>。运行下面的测量单元格，再运行揭晓单元格 (p.reveal)。"

        btn.on_click(on_click)
        return w.VBox([w.HTML(f"<b>{PREDICT_TAG} {self.item.prompt}</b>"), radio, btn, out])

    def reveal_text(self, value: float) -> str:
        m = {self.item.key: float(value)}
        right = self.item.correct(m)
        g = self.guessed
        if g is None:
            head = "你没有先记下预测（下次先选一个，再运行测量单元格）。"
        elif g == right:
            head = f"你的预测 {LETTERS[g]}：✓ 猜对了。"
        else:
            head = f"你的预测 {LETTERS[g]}：✗ 没猜中。"
        return (
            f"{REVEAL_HEAD} {head}\n正确答案是 {LETTERS[right]}（{self.item.options[right]}）。{self.item.explain(m)}"
        )

    def reveal(self, value: float) -> bool | None:
        """After the measuring cell: the guess, the measured value, the right range and why."""
        self.measured = float(value)
        print(self.reveal_text(value))
        g = self.guessed
        return None if g is None else g == self.item.correct({self.item.key: float(value)})

    def __repr__(self) -> str:
        return f'<Prediction {self.lesson} {self.item.key}: p.guess("字母") 预测，测量后 p.reveal(数值)>'


def predict(lesson: str, key: str, show: bool = True) -> Prediction:
    """The "predict the number" question ``key`` of ``lesson``, to ask before the cell that measures it."""
    if lesson not in QUIZZES:
        raise KeyError(f"没有课程 {lesson!r} 的自检题；已有：{', '.join(sorted(QUIZZES))}")
    items = [build_item(d) for d in QUIZZES[lesson]]
    found = [q for q in items if isinstance(q, Predict) and q.key == key]
    if not found:
        keys = [q.key for q in items if isinstance(q, Predict)]
        raise KeyError(f"课程 {lesson} 没有预测题 {key!r}；已有：{keys}")
    p = Prediction(lesson, found[0])
    return p.show() if show else p


def quiz(lesson: str, measured: Mapping[str, float] | None = None, show: bool = True) -> Quiz:
    """The end-of-lesson self-check of ``"4.0.2"``, shown once.

    Its "predict the number" questions are asked before their measurement with ``predict()``, so
    the quiz leaves them out unless ``measured`` passes their value (the older form, in which the
    number is already on the page: tests/test_claims.py flags it).
    """
    if lesson not in QUIZZES:
        raise KeyError(f"没有课程 {lesson!r} 的自检题；已有：{', '.join(sorted(QUIZZES))}")
    measured = dict(measured or {})
    items = [build_item(d) for d in QUIZZES[lesson]]
    keys = {q.key for q in items if isinstance(q, Predict)}
    unknown = sorted(set(measured) - keys)
    if unknown:
        raise KeyError(f"quiz({lesson!r}): measured 里的 {unknown} 不是本课的预测题；本课的预测题：{sorted(keys)}")
    items = [q for q in items if not isinstance(q, Predict) or q.key in measured]
    q = Quiz(f"{lesson} {TITLES[lesson]}", items, measured)
    return q.show() if show else q
