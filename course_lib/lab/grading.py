"""Self-check for exercises, from a notebook cell or a terminal.

    from course_lib.lab.grading import check, progress
    check("4.0.1")          # all exercises/ex401_*.py
    check("00")             # exercises/ex00_*.py
    check("ex00_rmsnorm")   # one exercise by file stem
    progress()              # every exercise: 全部通过 / 部分通过 / 未开始

    python -m course_lib.lab.grading [ids...]   # same, printed as text

The graders run in a fresh `python -m pytest` subprocess against `exercises/` (the learner's
files), so every call re-reads the learner's file: no kernel restart needed after an edit.
A grading run that goes on too long (an endless loop in the learner's code) is stopped after
``timeout`` seconds (default ``COURSE_GRADING_TIMEOUT`` or 120 per exercise) and reported as
such; with pytest-timeout installed each test also gets that limit, so the others still report.
"""
from __future__ import annotations

import html
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

STATUS_PASS = "通过"
STATUS_FAIL = "未通过"
STATUS_TODO = "未实现"
DEFAULT_TIMEOUT_S = 120.0
MAX_MESSAGE_LINES = 8
STARTUP_S = 30.0     # pytest + torch start-up, added once to the whole run's time limit


def timeout_message(seconds: float) -> str:
    return f"你的代码运行超过 {seconds:g} 秒，可能有死循环 (infinite loop)：检查循环的结束条件"


def grading_timeout() -> float:
    """Seconds one exercise's graders may run: $COURSE_GRADING_TIMEOUT, else 120."""
    raw = os.environ.get("COURSE_GRADING_TIMEOUT", "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise GradingError(f"COURSE_GRADING_TIMEOUT 应是秒数（如 120），收到 {raw!r}") from None
    if value <= 0:
        raise GradingError(f"COURSE_GRADING_TIMEOUT 应大于 0，收到 {raw!r}")
    return value


class GradingError(RuntimeError):
    """The exercise id matched nothing, or the repository could not be found."""


@dataclass
class TestRow:
    exercise: str
    test: str
    status: str          # 通过 / 未通过 / 未实现
    message: str = ""    # the failure message: what was expected and what came back

    @property
    def passed(self) -> bool:
        return self.status == STATUS_PASS


@dataclass
class CheckResult:
    exercise_id: str
    exercises: list[str]
    rows: list[TestRow] = field(default_factory=list)
    output: str = ""     # pytest's console output, for when something unexpected happens

    @property
    def n_total(self) -> int:
        return len(self.rows)

    @property
    def n_passed(self) -> int:
        return sum(r.passed for r in self.rows)

    @property
    def n_not_implemented(self) -> int:
        return sum(r.status == STATUS_TODO for r in self.rows)

    @property
    def n_failed(self) -> int:
        return self.n_total - self.n_passed - self.n_not_implemented

    @property
    def passed(self) -> bool:
        return self.n_total > 0 and self.n_passed == self.n_total

    def summary(self) -> str:
        return (f"{self.exercise_id}: {self.n_passed}/{self.n_total} 通过"
                + (f"，{self.n_not_implemented} 个未实现" if self.n_not_implemented else "")
                + (f"，{self.n_failed} 个未通过" if self.n_failed else ""))

    def to_text(self) -> str:
        lines = [self.summary()]
        for r in self.rows:
            msg = ("  " + r.message.replace("\n", "\n      ")) if r.message else ""
            lines.append(f"  [{r.status}] {r.exercise} :: {r.test}{msg}")
        if not self.rows:
            lines.append("  （没有收集到测试，pytest 输出如下）\n" + self.output[-2000:])
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        color = {STATUS_PASS: "#1a7f37", STATUS_FAIL: "#cf222e", STATUS_TODO: "#9a6700"}
        body = "".join(
            f"<tr><td style='text-align:left'>{html.escape(r.exercise)}</td>"
            f"<td style='text-align:left'><code>{html.escape(r.test)}</code></td>"
            f"<td style='color:{color[r.status]};font-weight:bold'>{r.status}</td>"
            f"<td style='text-align:left;white-space:pre-wrap'>{html.escape(r.message)}</td></tr>"
            for r in self.rows)
        if not self.rows:
            body = f"<tr><td colspan=4><pre>{html.escape(self.output[-2000:])}</pre></td></tr>"
        return (f"<p><b>{html.escape(self.summary())}</b></p><table>"
                "<tr><th>练习</th><th>测试</th><th>结果</th><th>说明</th></tr>"
                f"{body}</table>")

    def __repr__(self) -> str:
        return self.to_text()


# --------------------------------------------------------------------------- locating things
def find_root(start: Path | None = None) -> Path:
    """The repository root: the first directory (walking up from `start`, this module's file,
    then the current directory) that holds both `exercises/` and `tests/exercises/`."""
    env = os.environ.get("COURSE_ROOT")
    starts = [Path(env)] if env else []
    starts += [p for p in (start, Path(__file__).resolve().parent, Path.cwd()) if p is not None]
    for s in starts:
        for d in [s.resolve(), *s.resolve().parents]:
            if (d / "exercises").is_dir() and (d / "tests" / "exercises").is_dir():
                return d
    raise GradingError("找不到课程仓库根目录（需要同时包含 exercises/ 和 tests/exercises/）。"
                       "请在仓库目录里运行，或设置环境变量 COURSE_ROOT。")


def known_exercises(root: Path | None = None) -> list[str]:
    root = root or find_root()
    return sorted(p.stem for p in (root / "exercises").glob("ex*.py"))


def resolve(exercise_id: str, root: Path | None = None) -> list[str]:
    """"4.0.1" -> ["ex401_..."], "00" -> ["ex00_..."], "ex00_rmsnorm" -> ["ex00_rmsnorm"]."""
    root = root or find_root()
    known = known_exercises(root)
    ident = str(exercise_id).strip()
    if ident.endswith(".py"):
        ident = Path(ident).stem
    if ident in known:
        return [ident]
    if re.fullmatch(r"[\d.]+", ident):
        prefix = "ex" + ident.replace(".", "")
    elif re.fullmatch(r"ex\d+", ident):
        prefix = ident
    else:
        prefix = None
    matches = [k for k in known if prefix and k.split("_", 1)[0] == prefix]
    if not matches:
        raise GradingError(
            f"没有找到与 {exercise_id!r} 对应的练习。可用的练习: {', '.join(known) or '（无）'}。"
            "可以写课程编号如 \"4.0.1\"、\"00\"，或文件名如 \"ex00_rmsnorm\"。")
    return matches


# --------------------------------------------------------------------------- running graders
def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        line = line.strip()
        if line:
            return line[:200]
    return ""


def _failure_message(text: str | None) -> str:
    """The grader's own message, all of it (expected vs got), without pytest's introspection
    ("assert x == y", "+  where ...") or the traceback."""
    lines = []
    for line in (text or "").strip().splitlines():
        stripped = line.strip()
        if lines and stripped.startswith(("assert ", "+", "where ", "AssertionError")):
            break
        if not lines and not stripped:
            continue
        lines.append(line.rstrip())
    if not lines:
        return ""
    lines[0] = re.sub(r"^(AssertionError|assert|Failed)\s*:?\s*", "", lines[0].strip())
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) > MAX_MESSAGE_LINES:
        lines = lines[:MAX_MESSAGE_LINES] + ["…"]
    return "\n".join(lines)[:1500]


def _parse_junit(xml_path: Path, names: list[str], timeout_s: float | None = None) -> list[TestRow]:
    rows = []
    for tc in ET.parse(xml_path).getroot().iter("testcase"):
        classname = tc.get("classname") or ""
        module = classname.rsplit(".", 1)[-1]
        exercise = next((n for n in names if module == f"test_{n}" or f"test_{n}" in classname),
                        module)
        bad = tc.find("failure")
        if bad is None:
            bad = tc.find("error")
        skipped = tc.find("skipped")
        if bad is not None:
            detail = (bad.get("message") or "") + "\n" + (bad.text or "")
            if "NotImplementedError" in detail:
                rows.append(TestRow(exercise, tc.get("name"), STATUS_TODO, "NotImplementedError：还没有实现"))
            elif "Timeout >" in detail and timeout_s:
                rows.append(TestRow(exercise, tc.get("name"), STATUS_FAIL, timeout_message(timeout_s)))
            else:
                msg = _failure_message(bad.get("message") or bad.text)
                rows.append(TestRow(exercise, tc.get("name"), STATUS_FAIL, msg))
        elif skipped is not None:
            rows.append(TestRow(exercise, tc.get("name"), STATUS_FAIL,
                                "被跳过 (skipped): " + _first_line(skipped.get("message"))))
        else:
            rows.append(TestRow(exercise, tc.get("name"), STATUS_PASS))
    return rows


def _pytest_timeout_available() -> bool:
    return importlib.util.find_spec("pytest_timeout") is not None


def run_graders(names: list[str], root: Path | None = None, impl: str = "exercises",
                exercise_id: str | None = None, timeout: float | None = None) -> CheckResult:
    """Run the graders of `names` in a fresh pytest process. ``timeout`` (seconds per exercise,
    default ``grading_timeout()``) stops code that never returns, e.g. ``while True: pass``."""
    root = root or find_root()
    per_test = float(timeout) if timeout is not None else grading_timeout()
    files = [str(root / "tests" / "exercises" / f"test_{n}.py") for n in names]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise GradingError(f"缺少评分测试 (grader) 文件: {missing}")
    with tempfile.TemporaryDirectory(prefix="course-check-") as tmp:
        xml = Path(tmp) / "report.xml"
        env = dict(os.environ, COURSE_QUICK="1")
        env.pop("COURSE_IMPL", None)
        cmd = [sys.executable, "-m", "pytest", *files, "--impl", impl, "-q",
               "-p", "no:cacheprovider", f"--junitxml={xml}", "-o", "junit_family=xunit2"]
        if _pytest_timeout_available():
            cmd += [f"--timeout={per_test:g}", "--timeout-method=signal"]
        # the whole run: every exercise's share plus pytest's own start-up
        total = per_test * len(names) + STARTUP_S
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=total)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)    # pytest and anything the graders started
            out, err = proc.communicate()
            rows = [TestRow(n, "(全部测试)", STATUS_FAIL, timeout_message(per_test)) for n in names]
            return CheckResult(exercise_id or ",".join(names), names, rows, out + err)
        output = out + err
        rows = _parse_junit(xml, names, per_test) if xml.exists() else []
    return CheckResult(exercise_id or ",".join(names), names, rows, output)


def _display(obj) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(obj)
            return
    except ImportError:
        pass
    print(obj.to_text())


def check(exercise_id: str, show: bool = True) -> CheckResult:
    """Run the graders of one lesson / exercise against your file in `exercises/` and show
    a pass/fail table. Returns a CheckResult (`.passed`, `.n_passed`, `.rows`, ...)."""
    root = find_root()
    names = resolve(exercise_id, root)
    result = run_graders(names, root, exercise_id=str(exercise_id))
    if show:
        _display(result)
    return result


@dataclass
class Progress:
    rows: list[tuple]   # (exercise, 状态, passed, total, why) — why: first failing test and message

    @property
    def counts(self) -> dict:
        out: dict = {}
        for r in self.rows:
            out[r[1]] = out.get(r[1], 0) + 1
        return out

    def to_text(self) -> str:
        lines = ["练习进度 (progress):"]
        for ex, st, p, t, why in self.rows:
            lines.append(f"  {ex:<28} {st:<6} {p}/{t}" + (f"   原因: {why}" if why else ""))
        c = self.counts
        lines.append("合计: " + "，".join(f"{k} {v}" for k, v in c.items()))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><td style='text-align:left'>{html.escape(ex)}</td><td>{st}</td>"
                       f"<td>{p}/{t}</td><td style='text-align:left'>{html.escape(why)}</td></tr>"
                       for ex, st, p, t, why in self.rows)
        return f"<table><tr><th>练习</th><th>状态</th><th>通过</th><th>原因</th></tr>{body}</table>"

    def __repr__(self) -> str:
        return self.to_text()


def progress(show: bool = True, only: list[str] | None = None) -> Progress:
    """Run every exercise's graders once and summarise: 全部通过 / 部分通过 / 未通过 / 未开始,
    with the first failing test and its message. ``only`` limits it to some exercise stems."""
    root = find_root()
    names = known_exercises(root)
    if only is not None:
        names = [n for n in names if n in set(only)]
    result = run_graders(names, root, exercise_id="all") if names else CheckResult("all", [])
    rows = []
    for n in names:
        mine = [r for r in result.rows if r.exercise == n]
        p = sum(r.passed for r in mine)
        failing = [r for r in mine if not r.passed]
        if mine and p == len(mine):
            status, why = "全部通过", ""
        elif not mine or all(r.status == STATUS_TODO for r in mine):
            status, why = "未开始", ("" if mine else "没有收集到任何测试")
        else:
            status = "部分通过" if p else "未通过"
            first = next((r for r in failing if r.status != STATUS_TODO), failing[0])
            why = f"{first.test}: {_first_line(first.message)}"   # one line per exercise here
        rows.append((n, status, p, len(mine), why))
    out = Progress(rows)
    if show:
        _display(out)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m course_lib.lab.grading",
        description="检查练习 (exercises) 的完成情况。不带参数时显示全部练习的进度。")
    ap.add_argument("ids", nargs="*", help='课程编号或练习名，如 4.0.1、00、ex00_rmsnorm')
    args = ap.parse_args(argv)
    try:
        if not args.ids:
            print(progress(show=False).to_text())
            return 0
        ok = True
        for ident in args.ids:
            res = check(ident, show=False)
            print(res.to_text())
            ok &= res.passed
        return 0 if ok else 1
    except GradingError as e:
        print(f"错误: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
