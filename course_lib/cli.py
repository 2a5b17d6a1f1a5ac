"""Command-line helpers shared by ``python -m course_lib.train`` and ``python -m course_lib.generate``.

A leaf of the package (it imports only config): the entry points themselves are ``train.main()``
and ``generate.main()``, like ``serve.main()`` and ``export.main()``.

Flags are generated from the config dataclasses: every field of ``ModelConfig`` and
``TrainConfig`` becomes ``--field-name``, with the help text stored in the field's metadata
(config.py is the one place a setting is described). ``--config FILE`` reads
``{"model": {...}, "train": {...}}``; flags override it.

Every input error (config file, flag, data file) ends the same way: one line
``error: <field or file>: <problem>; <what to do>`` on stderr and exit code 2, no traceback.
A run that stops on NaN/Inf exits 3; any other failure while training exits 1 with one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import math
import os
import sys
from typing import NoReturn

from .config import (
    MAX_SEED,
    RESUME_MUST_MATCH,
    RESUME_RESULT,
    RESUME_SCHEDULE,
    ConfigError,
    ModelConfig,
    TrainConfig,
    check_keys,
    read_json_file,
)

EXIT_INPUT, EXIT_NONFINITE, EXIT_FAILED = 2, 3, 1  # bad input; NaN/Inf stop; any other failure


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one ``error: ...`` line (no usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ")
        self.exit(EXIT_INPUT, f"error: {message}; run with --help to see the accepted values\n")


def error_line(e: BaseException) -> str:
    """``error: <what>: <problem>; <what to do>`` for an exception (messages name their field/file)."""
    if isinstance(e, OSError) and e.filename:  # raised by the OS: name the file and what it said
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return (
                f"error: {e.filename}: disk full ({e.strerror}); make room on that disk, or point --out-dir "
                "at a disk with space, then run again"
            )
        return f"error: {e.filename}: {e.strerror or type(e).__name__}; check the path, its permissions and free disk space"
    return f"error: {' '.join(str(e).split())}"


def print_error(e: BaseException) -> None:
    """``error_line(e)`` on stderr, once: under torchrun every rank fails the same way, rank 0 says it."""
    if os.environ.get("RANK", "0") == "0":
        print(error_line(e), file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Flags generated from the config dataclasses
# ------------------------------------------------------------------------------------------
RESUME_NOTE = {  # what the field's resume metadata means, in --help
    RESUME_MUST_MATCH: "; must match the checkpoint to resume",
    RESUME_SCHEDULE: "; changing it on resume changes the lr schedule (warned)",
    RESUME_RESULT: "; changing it on resume is allowed, with a warning",
}


def add_config_args(parser, cls, defaults) -> None:
    """One ``--flag`` per dataclass field; type and help come from the field."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        note = RESUME_NOTE.get(f.metadata.get("resume"), "")
        h = f"{f.metadata['help']} (default: {default}{note})"
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=h)
        elif isinstance(default, tuple):
            parser.add_argument(flag, dest=f.name, type=float, nargs=len(default), default=None, help=h)
        else:
            parser.add_argument(flag, dest=f.name, type=type(default), default=None, help=h)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m course_lib.train",
        description="Train DIYModel on the default corpus or your own text. Also runs under "
        "`torchrun --nproc_per_node=N -m course_lib.train` (DDP: gloo on CPU, nccl on GPU); "
        "`python -m course_lib.launch` takes torchrun's arguments and makes --max-restarts reliable.",
    )
    p.add_argument("--config", help="JSON file with {'model': {...}, 'train': {...}}; flags override it")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    g = p.add_argument_group("model")
    g.add_argument(
        "--model-class",
        help="train your own model instead of DIYModel: 'package.module:Factory', a class "
        "or function returning a torch.nn.Module that follows course_lib/protocol.py (a Hugging Face "
        "*ForCausalLM is adapted); the DIYModel flags below are then ignored",
    )
    g.add_argument(
        "--model-kwargs",
        default="{}",
        help="JSON object of keyword arguments for --model-class (stored in the checkpoint; must match on resume)",
    )
    add_config_args(g, ModelConfig, ModelConfig.small())
    g = p.add_argument_group("training")
    add_config_args(g, TrainConfig, TrainConfig.default())
    g = p.add_argument_group("trackers (pip install -e '.[trackers]')")
    g.add_argument(
        "--tracker",
        action="append",
        choices=("swanlab", "wandb"),
        help="also log to wandb or swanlab "
        "(repeatable); a resumed run continues the same tracker run (id in out_dir/trackers.json)",
    )
    g.add_argument(
        "--tracker-mode",
        default="offline",
        help="wandb: offline | online | disabled; swanlab: offline "
        "| local | online | disabled (default: offline, no account or network needed)",
    )
    g.add_argument("--tracker-project", default="course-stage4", help="tracker project name (default: course-stage4)")
    return p


def _tuples(cls, kw: dict) -> dict:
    """JSON has no tuples: lists for tuple-typed fields become tuples."""
    for f in dataclasses.fields(cls):
        if "tuple" in str(f.type) and isinstance(kw.get(f.name), list):
            kw[f.name] = tuple(kw[f.name])
    return kw


def configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    """``--config`` file (if any), then the flags on top. Raises ``ConfigError`` naming the file/field."""
    model_kw, train_kw = {}, {}
    if args.config:
        data = read_json_file(args.config)
        if not isinstance(data, dict):
            raise ConfigError(
                f'{args.config}: expected a JSON object {{"model": {{...}}, "train": {{...}}}}, '
                f"got {type(data).__name__}; put the settings in an object"
            )
        unknown = sorted(set(data) - {"model", "train"})
        if unknown:
            raise ConfigError(f"{args.config}: unknown top-level key(s) {unknown}; use 'model' and 'train'")
        model_kw.update(check_keys(ModelConfig, data.get("model", {}), f"{args.config}: model"))
        train_kw.update(check_keys(TrainConfig, data.get("train", {}), f"{args.config}: train"))
    for f in dataclasses.fields(ModelConfig):
        if getattr(args, f.name, None) is not None:
            model_kw[f.name] = getattr(args, f.name)
    for f in dataclasses.fields(TrainConfig):
        if getattr(args, f.name, None) is not None:
            train_kw[f.name] = getattr(args, f.name)
    return (ModelConfig.small(**_tuples(ModelConfig, model_kw)), TrainConfig.default(**_tuples(TrainConfig, train_kw)))


def model_kwargs_arg(text: str) -> dict:
    """``--model-kwargs``: a JSON object, inline or ``@file.json``."""
    if text.startswith("@"):
        data = read_json_file(text[1:], "--model-kwargs file")
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"--model-kwargs: not valid JSON ({e.msg}); write an object, e.g. '{{\"n_layer\": 2}}'"
            ) from None
    if not isinstance(data, dict):
        raise ConfigError(f'--model-kwargs: expected a JSON object, got {type(data).__name__}; write {{"name": value}}')
    return data


# ------------------------------------------------------------------------------------------
# python -m course_lib.generate
# ------------------------------------------------------------------------------------------
def build_generate_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m course_lib.generate", description="Generate text from a trained run (latest checkpoint)."
    )
    p.add_argument(
        "--run", default="runs/default", help="run folder written by course_lib.train (default: runs/default)"
    )
    p.add_argument("--prompt", action="append", help="prompt text; repeat the flag for a batch of prompts")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="keep only the k most likely tokens")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: 0.95)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--no-cache", action="store_true", help="disable the KV cache (slow baseline)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="decode with the compiled static-cache step (torch.compile; pays seconds to minutes "
        "of compiling once, then faster steps; one prompt at a time)",
    )
    return p


def check_generate_args(args: argparse.Namespace) -> None:
    """Sampling flags in range, or a ``ConfigError`` naming the flag (``generate.main`` adds the
    check that ``--compile`` can work on this machine)."""
    checks = [
        ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1, "must be >= 1"),
        (
            "--temperature",
            args.temperature,
            math.isfinite(args.temperature) and args.temperature >= 0,
            "must be a finite number >= 0 (0 = greedy)",
        ),
        ("--top-k", args.top_k, args.top_k is None or args.top_k >= 1, "must be >= 1"),
        ("--top-p", args.top_p, 0 < args.top_p <= 1, "must be in (0, 1]"),
        ("--seed", args.seed, 0 <= args.seed <= MAX_SEED, f"must be in [0, {MAX_SEED}]"),
    ]
    for flag, value, ok, problem in checks:
        if not ok:
            raise ConfigError(f"{flag}: {problem} (got {value!r}); change the flag")
    if args.compile and args.no_cache:
        raise ConfigError("--compile: the compiled path decodes from its own static KV cache; drop --no-cache")
