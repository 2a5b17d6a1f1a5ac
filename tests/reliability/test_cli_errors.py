"""Every input error of the command line (config file, flag, data file) is one line
``error: <field or file>: <problem>; <what to do>`` and exit code 2: no traceback, and the line
names what to fix. One row per case found by the bad-input campaign (issue 9, defect 4).

The table runs ``course_lib.train.main`` in this process (fast); two cases also run the real
``python -m course_lib.train`` / ``python -m course_lib.generate`` to prove no traceback escapes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from course_lib.distributed import subprocess_env
from course_lib.generate import main as generate_main
from course_lib.train import main as train_main

TINY = [
    "--d-model",
    "32",
    "--n-layers",
    "1",
    "--n-heads",
    "2",
    "--n-kv-heads",
    "1",
    "--ffn-hidden",
    "64",
    "--max-seq-len",
    "64",
    "--seq-len",
    "32",
    "--batch-size",
    "4",
    "--max-steps",
    "2",
    "--warmup-steps",
    "1",
    "--no-tensorboard",
]


def cfg(tmp, obj, raw=None):
    p = tmp / "cfg.json"
    p.write_text(raw if raw is not None else json.dumps(obj), encoding="utf-8")
    return ["--config", str(p)]


def data(tmp, name, content: bytes):
    p = tmp / name
    p.write_bytes(content)
    return ["--data", str(p)]


# (case id, argv builder, text the one line must contain)
CASES = [
    ("config-not-json", lambda t: cfg(t, None, raw="{'model': }"), "cfg.json: config file is not valid JSON"),
    ("config-missing", lambda t: ["--config", str(t / "nope.json")], "nope.json: config file does not exist"),
    ("config-is-a-folder", lambda t: ["--config", str(t)], "is a folder"),
    ("config-top-level-list", lambda t: cfg(t, [1, 2]), "expected a JSON object"),
    ("config-unknown-top-key", lambda t: cfg(t, {"modle": {}}), "unknown top-level key(s) ['modle']"),
    (
        "config-unknown-train-key",
        lambda t: cfg(t, {"train": {"learning_rate": 1e-3}}),
        "train: unknown key(s) ['learning_rate']",
    ),
    ("config-unknown-model-key", lambda t: cfg(t, {"model": {"layers": 2}}), "model: unknown key(s) ['layers']"),
    ("config-model-not-object", lambda t: cfg(t, {"model": "big"}), "model: expected a JSON object"),
    ("string-for-float", lambda t: cfg(t, {"train": {"lr": "1e-3"}}), "TrainConfig.lr: must be a number, not str"),
    ("data-not-string", lambda t: cfg(t, {"train": {"data": 123}}), "TrainConfig.data: must be a string"),
    ("device-not-string", lambda t: cfg(t, {"train": {"device": 5}}), "TrainConfig.device: must be a string"),
    (
        "bool-as-string-tie",
        lambda t: cfg(t, {"model": {"tie_embeddings": "false"}}),
        "ModelConfig.tie_embeddings: must be true or false",
    ),
    (
        "bool-as-string-resume",
        lambda t: cfg(t, {"train": {"resume": "false"}}),
        "TrainConfig.resume: must be true or false",
    ),
    (
        "bool-as-string-nonfinite",
        lambda t: cfg(t, {"train": {"stop_on_nonfinite": "false"}}),
        "TrainConfig.stop_on_nonfinite: must be true or false",
    ),
    ("rope-theta-inf", lambda t: ["--rope-theta", "inf"], "ModelConfig.rope_theta: must be a finite number"),
    ("lr-nan", lambda t: ["--lr", "nan"], "TrainConfig.lr: must be a finite number"),
    ("seed-expression", lambda t: ["--seed", "10**30"], "--seed: invalid int value"),
    ("seed-too-big", lambda t: ["--seed", str(10**30)], "TrainConfig.seed: must be at most"),
    ("flag-not-a-number", lambda t: ["--lr", "fast"], "--lr: invalid float value"),
    ("flag-unknown", lambda t: ["--learning-rate", "1"], "unrecognized arguments"),
    ("bad-choice", lambda t: ["--schedule", "exp"], "TrainConfig.schedule: must be one of"),
    ("data-missing", lambda t: ["--data", str(t / "missing.txt")], "missing.txt: data path does not exist"),
    ("data-empty", lambda t: data(t, "empty.txt", b""), "empty.txt: no text found"),
    ("data-not-utf8", lambda t: data(t, "gbk.txt", "中文".encode("gbk")), "gbk.txt: not valid UTF-8"),
    ("data-bad-jsonl", lambda t: data(t, "d.jsonl", b'{"text": "ok"}\n{oops\n'), "d.jsonl:2: not valid JSON"),
    (
        "data-jsonl-no-text",
        lambda t: data(t, "n.jsonl", b'{"txt": "ok"}\n'),
        'n.jsonl:1: expected an object with a string field "text"',
    ),
    ("data-too-short", lambda t: data(t, "short.txt", b"hello world " * 5), "short.txt: not enough text for one batch"),
    ("data-wrong-type", lambda t: data(t, "x.csv", b"a,b"), "x.csv: unsupported file type"),
    ("seq-len-over-max", lambda t: ["--seq-len", "128"], "TrainConfig.seq_len: 128 exceeds ModelConfig.max_seq_len"),
]
if not torch.cuda.is_available():
    CASES.append(("cuda-without-gpu", lambda t: ["--device", "cuda"], "TrainConfig.device: 'cuda' asked for"))


@pytest.mark.parametrize("case, build, expected", CASES, ids=[c[0] for c in CASES])
def test_cli_input_error_is_one_line_exit_2(tmp_path, capsys, case, build, expected):
    argv = [*TINY, "--out-dir", str(tmp_path / "run"), *build(tmp_path)]
    try:
        rc = train_main(argv)
    except SystemExit as e:  # argparse's own errors (bad flag) exit from inside parse_args
        rc = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, f"{case}: 退出码应为 2 (exit code 2)，实际 {rc}；输出：{err}"
    assert len(lines) == 1, f"{case}: 应只有一行错误信息 (one line)，实际：\n{err}"
    line = lines[0]
    assert line.startswith("error: ") and "; " in line, (
        f"{case}: 格式应为 'error: <字段或文件>: <问题>; <怎么做>'：{line}"
    )
    assert expected in line, f"{case}: 错误信息应包含 {expected!r}：{line}"
    assert "Traceback" not in err


def _run(cmd, tmp_path):
    return subprocess.run(
        cmd,
        cwd=tmp_path,
        env=subprocess_env({"OMP_NUM_THREADS": "1"}),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_real_train_process_prints_one_line_and_exits_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"train": {"resume": "false"}}')
    r = _run([sys.executable, "-m", "course_lib.train", "--config", str(bad)], tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: TrainConfig.resume:"), r.stderr
    r = _run(
        [
            sys.executable,
            "-m",
            "course_lib.train",
            *TINY,
            "--data",
            str(tmp_path / "none.txt"),
            "--out-dir",
            str(tmp_path / "run"),
        ],
        tmp_path,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [
        ln for ln in r.stderr.splitlines() if ln.startswith("error: ")
    ]


def test_real_generate_process_prints_one_line_and_exits_2(tmp_path):
    r = _run([sys.executable, "-m", "course_lib.generate", "--run", str(tmp_path / "no-run")], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0, r.stderr
    assert "no complete checkpoint" in r.stderr and "no-run" in r.stderr and "; " in r.stderr, r.stderr


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--max-new-tokens", "0"], "--max-new-tokens: must be >= 1"),
        (["--temperature", "-1"], "--temperature: must be a finite number >= 0"),
        (["--temperature", "nan"], "--temperature: must be a finite number >= 0"),
        (["--top-k", "0"], "--top-k: must be >= 1"),
        (["--top-p", "1.5"], "--top-p: must be in (0, 1]"),
        (["--seed", "-3"], "--seed: must be in"),
        (["--max-new-tokens", "many"], "--max-new-tokens: invalid int value"),
        (["--compile", "--no-cache"], "--compile: the compiled path decodes from its own static KV cache"),
    ],
)
def test_generate_flag_errors_are_one_line_exit_2(tmp_path, capsys, argv, expected):
    try:
        rc = generate_main(["--run", str(tmp_path), *argv])
    except SystemExit as e:
        rc = e.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and "; " in err[0], err
    assert expected in err[0], err


def test_generate_compile_without_a_compiler_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("course_lib.generate.compile_available", lambda: (False, "no C++ compiler found"))
    rc = generate_main(["--run", str(tmp_path), "--compile"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --compile: no C++ compiler found"), err
    assert "run without --compile" in err[0], err
