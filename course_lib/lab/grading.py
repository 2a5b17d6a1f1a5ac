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

import contextlib
import hashlib
import html
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from ..fsio import atomic_write_text

STATUS_PASS = "通过"
STATUS_FAIL = "未通过"
STATUS_TODO = "未实现"
STATUS_SKIP = "跳过"  # the test could not run here (a missing optional package): neither pass nor fail
DEFAULT_TIMEOUT_S = 120.0
MAX_MESSAGE_LINES = 8
STARTUP_S = 30.0  # pytest + torch start-up, added once to the whole run's time limit


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


# A status label is a few CJK characters, which the browser may break between any two of them:
# next to a long message column, an unstyled status column shrinks to one character per line
# ("未/实/现"). nowrap keeps every label on one line; the message column takes the rest.
STATUS_CELL_STYLE = "white-space:nowrap"


def status_cell(label: str, color: str | None = None, bold: bool = True) -> str:
    """The ``<td>`` of a status label (通过 / 未通过 / 未实现 / 跳过 / 未开始 ...), never broken over lines."""
    style = STATUS_CELL_STYLE + (f";color:{color}" if color else "") + (";font-weight:bold" if bold else "")
    return f"<td style='{style}'>{html.escape(label)}</td>"


@dataclass
class TestRow:
    exercise: str
    test: str
    status: str  # 通过 / 未通过 / 未实现 / 跳过
    message: str = ""  # the failure message: what was expected and what came back

    @property
    def passed(self) -> bool:
        return self.status == STATUS_PASS


@dataclass
class CheckResult:
    exercise_id: str
    exercises: list[str]
    rows: list[TestRow] = field(default_factory=list)
    output: str = ""  # pytest's console output, for when something unexpected happens

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
    def n_skipped(self) -> int:
        return sum(r.status == STATUS_SKIP for r in self.rows)

    @property
    def n_failed(self) -> int:
        return self.n_total - self.n_passed - self.n_not_implemented - self.n_skipped

    @property
    def passed(self) -> bool:
        """Every test that could run here passed (a skipped one is reported apart, not failed)."""
        return self.n_passed > 0 and self.n_passed + self.n_skipped == self.n_total

    def summary(self) -> str:
        ran = self.n_total - self.n_skipped
        return (
            f"{self.exercise_id}: {self.n_passed}/{ran} 通过"
            + (f"，{self.n_not_implemented} 个未实现" if self.n_not_implemented else "")
            + (f"，{self.n_failed} 个未通过" if self.n_failed else "")
            + (f"，{self.n_skipped} 个跳过 (skipped，没有运行，见说明)" if self.n_skipped else "")
        )

    def to_text(self) -> str:
        lines = [self.summary()]
        for r in self.rows:
            msg = ("  " + r.message.replace("\n", "\n      ")) if r.message else ""
            lines.append(f"  [{r.status}] {r.exercise} :: {r.test}{msg}")
        if not self.rows:
            lines.append("  （没有收集到测试，pytest 输出如下）\n" + self.output[-2000:])
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        color = {STATUS_PASS: "#1a7f37", STATUS_FAIL: "#cf222e", STATUS_TODO: "#9a6700", STATUS_SKIP: "#57606a"}
        body = "".join(
            f"<tr><td style='text-align:left'>{html.escape(r.exercise)}</td>"
            f"<td style='text-align:left'><code>{html.escape(r.test)}</code></td>"
            f"{status_cell(r.status, color[r.status])}"
            f"<td style='text-align:left;white-space:pre-wrap'>{html.escape(r.message)}</td></tr>"
            for r in self.rows
        )
        if not self.rows:
            body = f"<tr><td colspan=4><pre>{html.escape(self.output[-2000:])}</pre></td></tr>"
        return (
            f"<p><b>{html.escape(self.summary())}</b></p><table>"
            "<tr><th>练习</th><th>测试</th><th>结果</th><th>说明</th></tr>"
            f"{body}</table>"
        )

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
    raise GradingError(
        "找不到课程仓库根目录（需要同时包含 exercises/ 和 tests/exercises/）。"
        "请在仓库目录里运行，或设置环境变量 COURSE_ROOT。"
    )


def known_exercises(root: Path | None = None) -> list[str]:
    root = root or find_root()
    return sorted(p.stem for p in (root / "exercises").glob("ex*.py"))


def resolve(exercise_id: str, root: Path | None = None) -> list[str]:
    """ "4.0.1" -> ["ex401_..."], "00" -> ["ex00_..."], "ex00_rmsnorm" -> ["ex00_rmsnorm"]."""
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
            '可以写课程编号如 "4.0.1"、"00"，或文件名如 "ex00_rmsnorm"。'
        )
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


# Packages that come with the [test] extra (`make install-test`), by the name a skip reason uses.
TEST_EXTRA_MODULES = {
    "transformers": "transformers",
    "playwright": "playwright",
    "pytest_timeout": "pytest-timeout",
    "ruff": "ruff",
}


def skip_message(reason: str | None) -> str:
    """A skipped test's row: why it did not run and the command that installs what is missing."""
    reason = _first_line(reason)
    reason = re.sub(r"^Skipped:\s*", "", reason)
    msg = f"没有运行 (skipped)：{reason}" if reason else "没有运行 (skipped)"
    m = re.search(r"(?:could not import|No module named) '([\w.]+)'", reason)
    if m:
        module = m.group(1).split(".")[0]
        if module in TEST_EXTRA_MODULES:
            msg += f"。缺少的 {TEST_EXTRA_MODULES[module]} 属于测试依赖，在仓库目录运行 `make install-test` 安装"
        else:
            msg += f"。缺少 {module}：运行 `.venv/bin/python -m pip install {module}` 安装"
    return msg + "。这不算未通过"


def _parse_junit(xml_path: Path, names: list[str], timeout_s: float | None = None) -> list[TestRow]:
    rows = []
    for tc in ET.parse(xml_path).getroot().iter("testcase"):
        classname = tc.get("classname") or ""
        module = classname.rsplit(".", 1)[-1]
        exercise = next((n for n in names if module == f"test_{n}" or f"test_{n}" in classname), module)
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
            rows.append(
                TestRow(exercise, tc.get("name"), STATUS_SKIP, skip_message(skipped.get("message") or skipped.text))
            )
        else:
            rows.append(TestRow(exercise, tc.get("name"), STATUS_PASS))
    return rows


def _pytest_timeout_available() -> bool:
    return importlib.util.find_spec("pytest_timeout") is not None


# --------------------------------------------------------------------------- shared results (tests only)
# While the course's own test suite runs, $COURSE_ORACLE_CACHE names a folder for results that
# several tests need (tests/oracles.py). Grading results are stored there per exercise, keyed by
# the content of every file they depend on, so the lessons' check() cells, progress() and the
# integrity tests grade each distinct set of files once per test run. A learner's check() never
# has the variable set: it always runs the graders.
ORACLE_CACHE_ENV = "COURSE_ORACLE_CACHE"


def _tree_digest(h, base: Path, pattern: str, skip: tuple[str, ...] = ()) -> None:
    for p in sorted(base.rglob(pattern)) if base.is_dir() else []:
        rel = p.relative_to(base).as_posix()
        if p.is_file() and "__pycache__" not in rel and not rel.startswith(skip):
            h.update(rel.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())


def _oracle_key(root: Path, impl: str, per_test: float, name: str) -> str | None:
    """The key of one exercise's grading result: every grader file (and the harnesses they share),
    this exercise's implementation file only (a grader loads nothing but its own exercise), the
    library, the interpreter and the time limit."""
    cache = os.environ.get(ORACLE_CACHE_ENV, "")
    if not cache or not Path(cache).is_dir():
        return None
    h = hashlib.sha256(f"{sys.executable}\0{per_test:g}\0{_pytest_timeout_available()}\0{name}".encode())
    lib = root / "course_lib" if (root / "course_lib").is_dir() else Path(__file__).resolve().parents[1]
    for tag, base, pattern, skip in (
        ("graders", root / "tests" / "exercises", "*", ("wrong/",)),
        ("impl", root / impl, f"{name}.py", ()),
        ("lib", lib, "*.py", ()),
    ):
        h.update(tag.encode())
        _tree_digest(h, base, pattern, skip)
    for f in ("conftest.py", "pytest.ini"):
        h.update(f.encode() + ((root / f).read_bytes() if (root / f).is_file() else b""))
    return h.hexdigest()[:24]


def _cached_rows(key: str | None, name: str) -> list[TestRow] | None:
    if key is None:
        return None
    path = Path(os.environ[ORACLE_CACHE_ENV]) / f"grading-{key}-{name}.json"
    try:
        return [TestRow(**r) for r in json.loads(path.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        return None


def _store_rows(key: str | None, name: str, rows: list[TestRow]) -> None:
    if key is None or not rows:
        return
    path = Path(os.environ[ORACLE_CACHE_ENV]) / f"grading-{key}-{name}.json"
    atomic_write_text(path, json.dumps([r.__dict__ for r in rows], ensure_ascii=False))


@contextlib.contextmanager
def _computing(keys: dict[str, str | None], todo: list[str]):
    """While the test suite's shared cache is on: an exclusive lock per set of grading keys, so two
    test processes that need the same results compute them once. Otherwise (a learner's check())
    nothing."""
    if any(keys[n] is None for n in todo):
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows: no lock, at worst the same grading runs twice
        yield
        return
    digest = hashlib.sha256("\0".join(sorted(keys[n] for n in todo)).encode()).hexdigest()[:24]
    with open(Path(os.environ[ORACLE_CACHE_ENV]) / f"grading-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_graders(
    names: list[str],
    root: Path | None = None,
    impl: str = "exercises",
    exercise_id: str | None = None,
    timeout: float | None = None,
) -> CheckResult:
    """Run the graders of `names` in a fresh pytest process. ``timeout`` (seconds per exercise,
    default ``grading_timeout()``) stops code that never returns, e.g. ``while True: pass``."""
    root = root or find_root()
    per_test = float(timeout) if timeout is not None else grading_timeout()
    files = [str(root / "tests" / "exercises" / f"test_{n}.py") for n in names]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise GradingError(f"缺少评分测试 (grader) 文件: {missing}")
    keys = {n: _oracle_key(root, impl, per_test, n) for n in names}
    known = {n: rows for n in names if (rows := _cached_rows(keys[n], n)) is not None}
    todo = [n for n in names if n not in known]
    output = ""
    if todo:
        with _computing(keys, todo):  # another test process grading the same files: wait, then reuse
            known.update({n: rows for n in todo if (rows := _cached_rows(keys[n], n)) is not None})
            todo = [n for n in names if n not in known]
            fresh, output, complete = _run_pytest(todo, root, impl, per_test) if todo else ([], "", False)
            for n in todo:
                known[n] = [r for r in fresh if r.exercise == n]
                if complete:
                    _store_rows(keys[n], n, known[n])
    rows = [r for n in names for r in known[n]]
    return CheckResult(exercise_id or ",".join(names), names, rows, output)


def _run_pytest(names: list[str], root: Path, impl: str, per_test: float) -> tuple[list[TestRow], str, bool]:
    """(rows, pytest's output, whether the run finished and wrote its report)."""
    files = [str(root / "tests" / "exercises" / f"test_{n}.py") for n in names]
    with tempfile.TemporaryDirectory(prefix="course-check-") as tmp:
        xml = Path(tmp) / "report.xml"
        env = dict(os.environ, COURSE_QUICK="1")
        env.pop("COURSE_IMPL", None)
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            *files,
            "--impl",
            impl,
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:nbval",  # graders run no notebooks; the plugin's imports cost ~3 s per run
            f"--junitxml={xml}",
            "-o",
            "junit_family=xunit2",
        ]
        if _pytest_timeout_available():
            cmd += [f"--timeout={per_test:g}", "--timeout-method=signal"]
        # the whole run: every exercise's share plus pytest's own start-up
        total = per_test * len(names) + STARTUP_S
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            out, err = proc.communicate(timeout=total)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # pytest and anything the graders started
            out, err = proc.communicate()
            rows = [TestRow(n, "(全部测试)", STATUS_FAIL, timeout_message(per_test)) for n in names]
            return rows, out + err, False
        if not xml.exists():
            return [], out + err, False
        return _parse_junit(xml, names, per_test), out + err, True


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
    rows: list[tuple]  # (exercise, 状态, passed, total, why) — why: first failing test and message;
    #                    total counts the tests that ran, a skipped test is counted apart:
    skipped: dict = field(default_factory=dict)  # exercise -> [(test, why it did not run)]

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

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
        lines.append(
            "合计: "
            + "，".join(f"{k} {v}" for k, v in c.items())
            + (f"；另有 {self.n_skipped} 个测试跳过 (skipped，不算未通过)" if self.n_skipped else "")
        )
        for ex, skipped in self.skipped.items():
            for test, why in skipped:
                lines.append(f"  [跳过] {ex} :: {test}  {why}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><td style='text-align:left'>{html.escape(ex)}</td>{status_cell(st, bold=False)}"
            f"<td>{p}/{t}</td><td style='text-align:left'>{html.escape(why)}</td></tr>"
            for ex, st, p, t, why in self.rows
        )
        body += "".join(
            f"<tr><td style='text-align:left'>{html.escape(ex)}</td>{status_cell('跳过', bold=False)}<td></td>"
            f"<td style='text-align:left'>{html.escape(test)}: {html.escape(why)}</td></tr>"
            for ex, skipped in self.skipped.items()
            for test, why in skipped
        )
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
    out = summarize(names, result)
    if show:
        _display(out)
    return out


def summarize(names: list[str], result: CheckResult) -> Progress:
    """One progress row per exercise from a grading run; skipped tests are counted apart."""
    rows, skipped = [], {}
    for n in names:
        mine = [r for r in result.rows if r.exercise == n and r.status != STATUS_SKIP]
        skips = [(r.test, r.message) for r in result.rows if r.exercise == n and r.status == STATUS_SKIP]
        if skips:
            skipped[n] = skips
        p = sum(r.passed for r in mine)
        failing = [r for r in mine if not r.passed]
        if mine and p == len(mine):
            status, why = "全部通过", ""
        elif not mine or all(r.status == STATUS_TODO for r in mine):
            status, why = "未开始", ("" if mine or skips else "没有收集到任何测试")
        else:
            status = "部分通过" if p else "未通过"
            first = next((r for r in failing if r.status != STATUS_TODO), failing[0])
            why = f"{first.test}: {_first_line(first.message)}"  # one line per exercise here
        if skips and not why:
            why = f"另有 {len(skips)} 个测试{_first_line(skips[0][1])}"
        rows.append((n, status, p, len(mine), why))
    return Progress(rows, skipped)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m course_lib.lab.grading",
        description="检查练习 (exercises) 的完成情况。不带参数时显示全部练习的进度。",
    )
    ap.add_argument("ids", nargs="*", help="课程编号或练习名，如 4.0.1、00、ex00_rmsnorm")
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
