"""Self-check quizzes: answer, then see why.

``Quiz`` renders with ipywidgets when they are available (one radio group per question and a
"检查答案" button that reveals whether the choice is right and why) and *always* prints the
questions as plain text first, so a stored notebook, a terminal or a browser without widgets
still shows them. Without widgets, answer with ``quiz.answer(1, "B")``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence

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


@dataclass
class Quiz:
    title: str
    questions: List[Question] = field(default_factory=list)

    def as_text(self) -> str:
        lines = [f"自检 (self-check)：{self.title}"]
        for i, q in enumerate(self.questions, 1):
            lines.append(f"\n{i}. {q.prompt}")
            lines.extend(f"   {LETTERS[j]}. {opt}" for j, opt in enumerate(q.options))
        lines.append("\n作答：quiz.answer(题号, \"字母\")，例如 quiz.answer(1, \"B\")；"
                     "有 ipywidgets 时也可以直接在下方点选。")
        return "\n".join(lines)

    def answer(self, number: int, choice: str) -> bool:
        """Check one answer in plain text; prints right/wrong and the explanation."""
        if not 1 <= number <= len(self.questions):
            raise ValueError(f"题号应在 1..{len(self.questions)} 之间，收到 {number}")
        q = self.questions[number - 1]
        idx = LETTERS.find(str(choice).strip().upper()[:1])
        if idx < 0 or idx >= len(q.options):
            raise ValueError(f"选项应是 {LETTERS[:len(q.options)]} 之一，收到 {choice!r}")
        ok = idx == q.answer
        print(("✓ 正确。" if ok else f"✗ 不对，正确答案是 {LETTERS[q.answer]}。") + " " + q.explanation)
        return ok

    def _widget(self):
        import ipywidgets as w
        boxes = []
        for i, q in enumerate(self.questions, 1):
            radio = w.RadioButtons(options=[(f"{LETTERS[j]}. {o}", j) for j, o in enumerate(q.options)],
                                   value=None, layout=w.Layout(width="auto"))
            out = w.HTML()
            btn = w.Button(description="检查答案", button_style="info")

            def on_click(_, q=q, radio=radio, out=out):
                if radio.value is None:
                    out.value = "<i>先选一个答案。</i>"
                elif radio.value == q.answer:
                    out.value = f"<b style='color:green'>✓ 正确。</b> {q.explanation}"
                else:
                    out.value = (f"<b style='color:#b00'>✗ 不对，正确答案是 {LETTERS[q.answer]}。</b> "
                                 f"{q.explanation}")

            btn.on_click(on_click)
            boxes.append(w.VBox([w.HTML(f"<b>{i}. {q.prompt}</b>"), radio, btn, out]))
        return w.VBox(boxes)

    def show(self) -> "Quiz":
        print(self.as_text())
        try:
            from IPython import get_ipython
            from IPython.display import display
            if get_ipython() is not None:
                display(self._widget())
        except Exception:  # no IPython / no ipywidgets: the printed text is the quiz
            pass
        return self
