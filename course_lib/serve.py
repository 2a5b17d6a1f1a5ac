"""A small OpenAI-compatible server over the continuous-batching engine.

    python -m course_lib.serve --model course_lib/assets/reference_model      # 127.0.0.1:8000
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
         -d '{"model": "reference_model", "prompt": "def ", "max_tokens": 20}'

Endpoints (the official ``openai`` client works with ``base_url="http://127.0.0.1:8000/v1"``):

* ``POST /v1/completions``: ``prompt`` (a string, a list of strings, a list of token ids or a list of
  token-id lists: one choice each, batched together in the engine), ``max_tokens``, ``temperature``
  (below 1e-5 is greedy, as in vLLM), ``top_p``, ``seed``, ``stop``, ``frequency_penalty``,
  ``presence_penalty``, ``logprobs`` (0..20: the sampled token's log-probability and the most likely
  alternatives, from the model's distribution before temperature/top_p/penalties), ``echo``,
  ``stream`` (server-sent events) with ``stream_options.include_usage``, ``n``/``best_of`` = 1, ``user``.
* ``POST /v1/chat/completions``: ``messages`` through the chat template (``course_lib/chat.py``),
  the same sampling fields, ``max_completion_tokens``, ``logprobs``/``top_logprobs``, streaming.
* ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``.

Every input is validated before any work; a bad one gets a 4xx in OpenAI's error shape
``{"error": {"message", "type", "param", "code"}}`` naming the field, and so does every other error
(unknown routes, wrong methods, a body over ``max_body_bytes``: 413, checked before the body is
read). Fields this server does not implement (``best_of`` > 1, ``n`` > 1, ``suffix``, ``logit_bias``,
``tools``...) and unknown keys are refused with a 400 naming them: vLLM logs unknown keys and ignores
them, but a typo such as ``max_token`` would then silently do nothing.

Shape: FastAPI + uvicorn handle HTTP on an asyncio loop; the ``Engine`` runs in ONE background
thread (a decode step is blocking tensor work and must not stall the loop). A request submits its
engine requests (one per prompt) and waits on one ``asyncio.Queue``; the engine thread's
``on_token`` / ``on_finish`` callbacks push into it with ``loop.call_soon_threadsafe`` (the only
thread-safe way into an asyncio loop). A client that goes away (streaming or not) aborts its
requests; an engine error fails that request only (HTTP 500 or an error event).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .chat import END_OF_TURN, render_chat, validate_messages
from .cli import OneLineParser  # a bad flag is one "error: ..." line, exit 2
from .engine import Engine, Request, RequestRefused
from .export import load_inference
from .pretrained import REFERENCE_DIR
from .speculative import NgramProposer, SpecConfig
from .util import first_line

log = logging.getLogger("course_lib.serve")

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than a 256-token context needs
MAX_LOGPROBS = 20  # vLLM's default max_logprobs
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1  # vLLM's seed range (torch.long)
GREEDY_BELOW = 1e-5  # vLLM: a temperature below this is greedy (logits / T would overflow)
MIN_TOP_P = 1e-6  # any top_p <= the top token's probability keeps that token alone;
# below float32's range it would round to 0 and drop every token


# --------------------------------------------------------------------------------------------
# The engine thread
# --------------------------------------------------------------------------------------------
class EngineThread:
    """Runs ``engine.step()`` in a background thread while there is work; sleeps otherwise."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, prompt_ids: Sequence[int], max_tokens: int, **kw) -> Request:
        req = self.engine.submit(prompt_ids, max_tokens, **kw)  # thread-safe queue inside
        self._wake.set()
        return req

    def _run(self) -> None:
        while not self._stop:
            self._wake.clear()  # clear *before* looking, so no submit is missed
            if not self.engine.has_work:
                self._wake.wait(timeout=0.5)
                continue
            try:
                self.engine.step()
            except Exception:  # noqa: BLE001  a scheduler bug: fail what is in flight, keep serving
                log.error("engine step failed:\n%s", traceback.format_exc())
                for req in list(self.engine.running):
                    self.engine._fail(req, RuntimeError("engine step failed"))

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._abort_all()

    def _abort_all(self) -> None:
        """Requests still queued or running when the server stops end as "abort" and free their blocks."""
        e = self.engine
        try:
            while not e.inbox.empty():
                e.waiting.append(e.inbox.get())
            for req in list(e.waiting) + list(e.running):
                req.abort()
            e.step()  # drops every aborted request, releases its blocks
        except Exception:  # noqa: BLE001  never let cleanup turn a shutdown into a traceback
            log.error("aborting open requests at shutdown failed:\n%s", traceback.format_exc())


# --------------------------------------------------------------------------------------------
# Errors: OpenAI's shape for every 4xx / 5xx
# --------------------------------------------------------------------------------------------
class APIError(Exception):
    """An answer other than 200: HTTP status, a message naming the field, and the field (``param``)."""

    def __init__(self, param: str | None, message: str, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.message, self.status, self.code = param, message, status, code


BadRequest = APIError  # the name the notebook and older tests use


class EngineError(Exception):
    pass


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    kind: str | None = None,
    code: str | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    kind = kind or ("server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse(
        status_code=status,
        headers=headers,
        content={"error": {"message": message, "type": kind, "param": param, "code": code}},
    )


def _show(x, limit: int = 40) -> str:
    """repr of a client's value, cut short (an error message must not echo a megabyte back)."""
    r = repr(x)
    return r if len(r) <= limit else r[:limit] + "..."


# --------------------------------------------------------------------------------------------
# Reading the body: size limit first, then UTF-8, then JSON
# --------------------------------------------------------------------------------------------
def _refuse_constant(name: str):
    raise APIError("body", f"request body contains {name}, which is not JSON; send a finite number")


async def read_json_body(request: HTTPRequest, limit: int) -> dict:
    """The request's JSON object, refusing (413) a body over ``limit`` bytes before reading it:
    the declared Content-Length first, then the bytes actually streamed (chunked uploads)."""
    too_big = f"request body is larger than this server's limit of {limit} bytes (--max-body-bytes)"
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError("body", f"Content-Length {_show(declared)} is not a number")
        if int(declared) > limit:
            raise APIError("body", too_big, 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError("body", too_big, 413)
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError("body", f"request body is not valid UTF-8 (byte {e.start}); send UTF-8 JSON") from None
    try:
        body = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise APIError("body", f"request body is not valid JSON ({e.msg} at char {e.pos})") from None
    except RecursionError:
        raise APIError("body", "request body is nested too deeply; send a flat JSON object") from None
    except ValueError as e:  # e.g. an integer with more than 4300 digits
        raise APIError("body", f"request body has a value Python refuses to read: {first_line(e)}") from None
    if not isinstance(body, dict):
        raise APIError("body", f"request body must be a JSON object, got {type(body).__name__}")
    return body


# --------------------------------------------------------------------------------------------
# Field validation: one clear 4xx naming the field
# --------------------------------------------------------------------------------------------
def _type_name(x) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
        type(None): "null",
    }.get(type(x), type(x).__name__)


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    x = body.get(name)
    if x is None:
        return default
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise APIError(name, f"{name} must be a number, got {_type_name(x)}")
    if not math.isfinite(x) or not (lo < x <= hi if lo_open else lo <= x <= hi):
        raise APIError(name, f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {_show(x)}")
    return float(x)


def _int(body: dict, name: str, default, lo: int | None = None, hi: int | None = None):
    x = body.get(name)
    if x is None:
        return default
    if isinstance(x, bool) or not isinstance(x, int):
        raise APIError(name, f"{name} must be an integer, got {_type_name(x)}")
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise APIError(name, f"{name} must be {rng}, got {_show(x)}")
    return x


def _bool(body: dict, name: str, default: bool = False) -> bool:
    x = body.get(name)
    if x is None:
        return default
    if not isinstance(x, bool):
        raise APIError(name, f"{name} must be true or false, got {_type_name(x)}")
    return x


def _utf8(s: str, where: str) -> str:
    """Refuse strings that cannot be encoded (a lone UTF-16 surrogate such as ``"\\ud800"`` in the JSON)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise APIError(
            where.split("[")[0], f"{where} contains a lone surrogate (char {e.start}); send valid Unicode text"
        ) from None
    return s


def _check_keys(body: dict, accepted: frozenset, refused: dict) -> None:
    """A field this server refuses gets its reason; an unknown field is named (no silent ignoring)."""
    for key in body:
        if key in refused and refused[key](body[key]):
            raise APIError(key, f"{key} is not supported by this server ({_show(body[key])})")
    unknown = [k for k in body if k not in accepted and k not in refused]
    if unknown:
        raise APIError(
            unknown[0],
            f"unknown field {unknown[0]!r}; this endpoint accepts: {', '.join(sorted(accepted | set(refused)))}",
        )


def _set(x) -> bool:
    """Refuse when set to something other than its 'off' value (null, empty)."""
    return x is not None and x != [] and x != {}


def _logit_bias(x) -> bool:
    if x is None or x == {}:
        return False
    if not isinstance(x, dict):
        raise APIError("logit_bias", f"logit_bias must be an object of token id -> bias, got {_type_name(x)}")
    return True


@dataclass
class Sampling:
    """The validated generation settings of one HTTP request (shared by all its prompts)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: int | None = None
    echo: bool = False
    stream: bool = False
    include_usage: bool = False

    def engine_kwargs(self) -> dict:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "logprobs": self.logprobs,
        }


def _n_is_one(body: dict) -> None:
    n = _int(body, "n", 1, lo=1)
    if n != 1:
        raise APIError("n", f"n must be 1 (one choice per prompt; send a list of prompts for several), got {n}")


def parse_sampling(body: dict, max_tokens: int, user_stops_max: int = 4) -> Sampling:
    """The fields both endpoints share; ``max_tokens`` is already read (the endpoints differ there)."""
    _n_is_one(body)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    if temperature < GREEDY_BELOW:
        temperature = 0.0
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    stream = _bool(body, "stream")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (
        isinstance(stop, list) and len(stop) <= user_stops_max and all(isinstance(s, str) for s in stop)
    ):
        raise APIError("stop", f"stop must be a string or a list of at most {user_stops_max} strings")
    for i, s in enumerate(stop or []):
        _utf8(s, f"stop[{i}]")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not stream:
            raise APIError("stream_options", "stream_options is only allowed with stream: true")
        if not isinstance(opts, dict):
            raise APIError("stream_options", f"stream_options must be an object, got {_type_name(opts)}")
        extra = [k for k in opts if k != "include_usage"]
        if extra:
            raise APIError("stream_options", f"stream_options.{extra[0]} is not supported; only include_usage")
        include_usage = _bool(opts, "include_usage")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise APIError("user", f"user must be a string, got {_type_name(user)}")
    return Sampling(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=max(top_p, MIN_TOP_P) if top_p < 1.0 else None,
        seed=_int(body, "seed", None, INT64_MIN, INT64_MAX),
        stop=stop or [],
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        stream=stream,
        include_usage=include_usage,
    )


# the request fields both endpoints read (sampling, streaming, logprobs), then each one's own
SHARED_FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "frequency_penalty",
        "presence_penalty",
        "logprobs",
        "n",
        "user",
    }
)
COMPLETION_FIELDS = SHARED_FIELDS | {"prompt", "echo", "best_of"}
COMPLETION_REFUSED = {"suffix": lambda x: x is not None, "logit_bias": _logit_bias}
CHAT_FIELDS = SHARED_FIELDS | {"messages", "max_completion_tokens", "top_logprobs"}
CHAT_REFUSED = {
    "logit_bias": _logit_bias,
    "tools": _set,
    "tool_choice": lambda x: x not in (None, "none"),
    "functions": _set,
    "function_call": lambda x: x not in (None, "none"),
    "parallel_tool_calls": lambda x: x is not None,
    "response_format": lambda x: x is not None and x != {"type": "text"},
}


def _prompts(body: dict, tokenizer, vocab_size: int) -> list[list[int]]:
    """``prompt`` in its four OpenAI forms -> one list of token ids per choice."""
    if "prompt" not in body:
        raise APIError("prompt", "prompt is required (a string, a list of strings or token ids)")
    p = body["prompt"]
    forms = "a string, a list of strings, a list of token ids or a list of token-id lists"
    if isinstance(p, str):
        p = [p]
    if not isinstance(p, list):
        raise APIError("prompt", f"prompt must be {forms}, got {_type_name(p)}")
    if not p:
        raise APIError("prompt", "prompt must not be an empty list")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in p):
        p = [p]  # one prompt given as token ids
    out = []
    for i, x in enumerate(p):
        where = f"prompt[{i}]" if len(p) > 1 or not isinstance(x, str) else "prompt"
        if isinstance(x, str):
            if not x:
                raise APIError("prompt", f"{where} must not be empty")
            out.append(tokenizer.encode(_utf8(x, where)))
        elif isinstance(x, list):
            if not x:
                raise APIError("prompt", f"{where} must not be an empty list of token ids")
            for j, t in enumerate(x):
                if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size:
                    raise APIError("prompt", f"{where}[{j}] must be a token id in [0, {vocab_size}), got {_show(t)}")
            out.append(list(x))
        else:
            raise APIError("prompt", f"prompt must be {forms}; {where} is {_type_name(x)}")
    return out


def _check_fits(engine: Engine, prompts: list[list[int]], max_tokens: int, param: str) -> None:
    for i, ids in enumerate(prompts):
        where = f"{param}[{i}]" if len(prompts) > 1 else param
        if len(ids) >= engine.max_len:
            raise APIError(param, f"{where} is {len(ids)} tokens; the model's context is {engine.max_len} tokens")
        try:
            engine.check(len(ids), max_tokens)
        except RequestRefused as e:
            raise APIError("max_tokens", f"{where}: {e}") from None


def _check_model(body: dict, model_name: str) -> None:
    if "model" not in body:
        raise APIError("model", f"model is required; this server serves {model_name!r}")
    if body["model"] != model_name:
        raise APIError(
            "model",
            f"model {_show(body['model'])} does not exist; this server serves {model_name!r}",
            404,
            "model_not_found",
        )


def parse_completion(body: dict, model_name: str, tokenizer, engine: Engine) -> tuple[list[list[int]], Sampling]:
    """A ``/v1/completions`` body -> (token ids per prompt, settings), or ``APIError`` naming the field."""
    _check_keys(body, COMPLETION_FIELDS, COMPLETION_REFUSED)
    _check_model(body, model_name)
    prompts = _prompts(body, tokenizer, engine.model.config.vocab_size)
    max_tokens = _int(body, "max_tokens", 16, lo=1)
    best_of = _int(body, "best_of", 1, lo=1)
    if best_of != 1:
        raise APIError("best_of", f"best_of must be 1 (this server returns the one sampled choice), got {best_of}")
    s = parse_sampling(body, max_tokens)
    s.logprobs = _int(body, "logprobs", None, 0, MAX_LOGPROBS)
    s.echo = _bool(body, "echo")
    if s.echo and s.logprobs is not None:
        raise APIError(
            "echo", "echo together with logprobs (the prompt's log-probabilities) is not supported; send one of them"
        )
    _check_fits(engine, prompts, max_tokens, "prompt")
    return prompts, s


def parse_chat(body: dict, model_name: str, tokenizer, engine: Engine) -> tuple[list[list[int]], Sampling]:
    """A ``/v1/chat/completions`` body -> ([token ids of the templated conversation], settings)."""
    _check_keys(body, CHAT_FIELDS, CHAT_REFUSED)
    _check_model(body, model_name)
    if "messages" not in body:
        raise APIError("messages", "messages is required (a list of {role, content} objects)")
    try:
        messages = validate_messages(body["messages"])
    except ValueError as e:
        raise APIError(str(e).split(":")[0], str(e)) from None
    for i, m in enumerate(messages):
        _utf8(m["content"], f"messages[{i}].content")
    ids = tokenizer.encode(render_chat(messages, add_generation_prompt=True))
    room = min(engine.max_len, engine.pool.num_blocks * engine.pool.block_size) - len(ids)
    if room < 1:
        raise APIError(
            "messages",
            f"the conversation is {len(ids)} tokens with the chat template; the model's "
            f"context is {engine.max_len} tokens: send fewer or shorter messages",
        )
    max_tokens = _int(body, "max_completion_tokens", None, lo=1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", room, lo=1)  # default: the rest of the context (vLLM)
    s = parse_sampling(body, max_tokens, user_stops_max=4)
    s.stop = s.stop + [END_OF_TURN]  # the end of the assistant's turn
    want = _bool(body, "logprobs")
    top = _int(body, "top_logprobs", None, 0, MAX_LOGPROBS)
    if top is not None and not want:
        raise APIError("top_logprobs", "top_logprobs needs logprobs: true")
    s.logprobs = (top or 0) if want else None
    _check_fits(engine, [ids], max_tokens, "messages")
    return [ids], s


# --------------------------------------------------------------------------------------------
# From tokens to text: incremental decoding, stop strings, log-probabilities
# --------------------------------------------------------------------------------------------
class StopMatcher:
    """Cuts generated text at the first stop string, holding back a tail that could start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buf = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """Returns (text safe to send now, whether a stop string was hit)."""
        self.buf += piece
        hits = [self.buf.find(s) for s in self.stops if s in self.buf]
        if hits:
            out, self.buf = self.buf[: min(hits)], ""
            return out, True
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.buf.endswith(s[:k])), default=0)
        out, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep :]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]]
    offset: int  # where this token's text starts in the generated text (chars)
    bytes: list[int]


@dataclass
class Delta:
    """What one choice adds: text, the log-probabilities of its tokens, and the finish reason at the end."""

    index: int
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


def token_text(tokenizer, tok: int) -> str:
    """A token as text for ``logprobs``; a byte that is not a whole character is ``bytes:\\xNN`` (OpenAI)."""
    s = tokenizer.decode([tok])
    if "\ufffd" in s and tok < 256 and getattr(tokenizer, "vocab_size", 0) == 258:
        return f"bytes:\\x{tok:02x}"
    return s


def _token_bytes(tokenizer, tok: int) -> list[int]:
    if tok < 256 and getattr(tokenizer, "vocab_size", 0) == 258:
        return [tok]
    return list(tokenizer.decode([tok]).encode("utf-8", errors="replace"))


class ChoiceText:
    """One choice's tokens -> text: decodes incrementally (a character may span tokens), cuts at the
    first stop string, and releases each token's log-probability together with its text."""

    def __init__(self, index: int, tokenizer, stops: Sequence[str]) -> None:
        self.index, self.tokenizer = index, tokenizer
        self.stop = StopMatcher(stops)
        self.ids: list[int] = []
        self.decoded = 0  # chars of the decoded text handed to the stop matcher
        self.released = 0  # chars sent to the client
        self.pending: list[TokenLogprob] = []
        self.n_tokens = 0  # generated tokens consumed (usage)
        self.finished = False

    def _release(self, text: str, hit: bool, final: bool) -> Delta:
        self.released += len(text)
        if final:
            out = [e for e in self.pending if not hit or e.offset < self.released]
            self.pending = []
        else:
            out = [e for e in self.pending if e.offset < self.released]
            self.pending = self.pending[len(out) :]
        return Delta(self.index, text, out)

    def push(self, tok: int, lp) -> Delta:
        self.n_tokens += 1
        if tok == self.tokenizer.eos_id:
            return Delta(self.index)
        self.ids.append(tok)
        text = self.tokenizer.decode(self.ids)
        stable = len(text.rstrip("\ufffd"))  # a trailing U+FFFD may be a character still incomplete
        new, offset = text[self.decoded : stable], self.decoded
        self.decoded = max(self.decoded, stable)
        if lp is not None:
            logprob, top = lp
            self.pending.append(
                TokenLogprob(
                    token_text(self.tokenizer, tok),
                    logprob,
                    [(token_text(self.tokenizer, t), v) for t, v in top],
                    offset,
                    _token_bytes(self.tokenizer, tok),
                )
            )
        out, hit = self.stop.push(new)
        d = self._release(out, hit, final=hit)
        if hit:
            self.finished, d.finish_reason = True, "stop"
        return d

    def finish(self, engine_reason: str | None) -> Delta:
        text = self.tokenizer.decode(self.ids)
        out, hit = self.stop.push(text[self.decoded :])
        if not hit:
            out += self.stop.flush()
        d = self._release(out, hit, final=True)
        self.finished = True
        d.finish_reason = "stop" if hit or engine_reason == "stop" else "length"
        return d


class Generation:
    """The engine requests of one HTTP request (one per prompt), all reporting to one queue.

    Everything is submitted at once (the engine batches the prompts together); ``deltas()`` yields
    what each choice adds as tokens arrive, and leaving it early (client gone, error) aborts the
    requests still running, so their rows and KV blocks are freed at the engine's next step.
    """

    def __init__(self, runner: EngineThread, tokenizer, prompts: list[list[int]], s: Sampling) -> None:
        self.loop = asyncio.get_running_loop()
        self.q: asyncio.Queue = asyncio.Queue()
        self.prompts = prompts
        self.choices = [ChoiceText(i, tokenizer, s.stop) for i in range(len(prompts))]
        self.reqs: list[Request] = []
        try:
            for i, ids in enumerate(prompts):
                self.reqs.append(
                    runner.submit(
                        ids,
                        s.max_tokens,
                        **s.engine_kwargs(),
                        on_token=partial(self._on_token, i),
                        on_finish=partial(self._on_finish, i),
                    )
                )
        except Exception:
            self.abort()
            raise

    def _on_token(self, i: int, req: Request, tok: int) -> None:  # engine thread
        lp = req.token_logprobs[-1] if req.logprobs is not None else None
        self.loop.call_soon_threadsafe(self.q.put_nowait, (i, tok, lp))

    def _on_finish(self, i: int, req: Request) -> None:  # engine thread
        self.loop.call_soon_threadsafe(self.q.put_nowait, (i, None, None))

    def abort(self) -> None:
        for req in self.reqs:
            if not req.done:
                req.abort()

    @property
    def usage(self) -> dict:
        n_in = sum(len(p) for p in self.prompts)
        n_out = sum(c.n_tokens for c in self.choices)
        return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}

    async def deltas(self) -> AsyncIterator[Delta]:
        open_ = len(self.reqs)
        try:
            while open_:
                i, tok, lp = await self.q.get()
                choice = self.choices[i]
                if choice.finished:
                    continue  # after its stop string: the abort is on its way
                if tok is None:
                    req = self.reqs[i]
                    if req.finish_reason == "error":
                        raise EngineError(req.error)
                    open_ -= 1
                    yield choice.finish(req.finish_reason)
                    continue
                d = choice.push(tok, lp)
                if d.finish_reason:
                    self.reqs[i].abort()  # stop string: free the row now
                    open_ -= 1
                if d.text or d.logprobs or d.finish_reason:
                    yield d
        finally:
            self.abort()

    async def collect(self, request: HTTPRequest) -> list[Delta]:
        """All deltas merged per choice, aborting everything if the client disconnects meanwhile."""
        merged = [Delta(i) for i in range(len(self.reqs))]

        async def consume() -> None:
            async for d in self.deltas():
                m = merged[d.index]
                m.text += d.text
                m.logprobs += d.logprobs
                m.finish_reason = d.finish_reason or m.finish_reason

        work = asyncio.ensure_future(consume())
        watch = asyncio.ensure_future(_until_disconnected(request))
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                raise ClientGone
            work.result()  # re-raises an EngineError
            return merged
        finally:
            watch.cancel()
            if not work.done():
                work.cancel()
            self.abort()


class ClientGone(Exception):
    pass


async def _until_disconnected(request: HTTPRequest, every: float = 0.1) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(every)


# --------------------------------------------------------------------------------------------
# Response bodies
# --------------------------------------------------------------------------------------------
def completion_logprobs(entries: list[TokenLogprob], offset0: int) -> dict:
    """OpenAI's completions format: parallel lists of tokens, their log-probabilities, alternatives, offsets."""
    top = []
    for e in entries:
        d = dict(e.top)
        d.setdefault(e.token, e.logprob)  # the sampled token is always listed (OpenAI: up to logprobs + 1)
        top.append(d)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": top,
        "text_offset": [offset0 + e.offset for e in entries],
    }


def chat_logprobs(entries: list[TokenLogprob], tokenizer) -> dict:
    def one(tok: str, lp: float) -> dict:
        b = (
            [int(h, 16) for h in tok[len("bytes:") :].split("\\x")[1:]]
            if tok.startswith("bytes:")
            else list(tok.encode("utf-8"))
        )
        return {"token": tok, "logprob": lp, "bytes": b}

    return {
        "content": [
            dict(one(e.token, e.logprob), bytes=e.bytes, top_logprobs=[one(t, v) for t, v in e.top]) for e in entries
        ]
    }


def envelope(
    rid: str, kind: str, created: int, model: str, choices: list[dict], usage: dict | None, with_usage: bool
) -> dict:
    """The fields around the choices of every OpenAI response body and stream chunk."""
    out = {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}
    if with_usage:
        out["usage"] = usage
    return out


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def sse_error(e: BaseException) -> str:
    # headers are gone already: an error event (the openai client raises on it)
    return sse({"error": {"message": f"generation failed: {e}", "type": "server_error", "param": None, "code": None}})


def sse_response(bodies: AsyncIterator[dict]) -> StreamingResponse:
    """A streamed generation as server-sent events: one event per body, an error event if the
    engine fails midway, then ``[DONE]``."""

    async def events():
        async with contextlib.aclosing(bodies):
            try:
                async for b in bodies:
                    yield sse(b)
            except EngineError as e:
                yield sse_error(e)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def collected(gen: Generation, request: HTTPRequest, body: Callable[[list[Delta]], dict]):
    """A non-streamed generation: ``body(merged deltas)``, or the error response when the engine
    fails (500) or the client goes away meanwhile (499)."""
    try:
        merged = await gen.collect(request)
    except EngineError as e:
        return error_response(500, f"generation failed: {e}")
    except ClientGone:
        return error_response(499, "client closed the request")
    return body(merged)


# --------------------------------------------------------------------------------------------
# The app: one object holding the engine, its thread and the limits; one method per route
# --------------------------------------------------------------------------------------------
class OpenAIServer:
    def __init__(self, engine: Engine, tokenizer, model_name: str, max_body_bytes: int) -> None:
        self.engine, self.tokenizer, self.model_name = engine, tokenizer, model_name
        self.max_body_bytes = max_body_bytes
        self.runner = EngineThread(engine)
        self.created = int(time.time())

    # ---- small routes ---------------------------------------------------------------------------
    async def health(self) -> dict:
        e = self.engine
        return {
            "status": "ok",
            "running": len(e.running),
            "waiting": len(e.waiting),
            "free_blocks": len(e.pool.free),
            "num_blocks": e.pool.num_blocks,
        }

    def _model_card(self) -> dict:
        return {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "course_lib",
            "max_model_len": self.engine.max_len,
        }

    async def models(self) -> dict:
        return {"object": "list", "data": [self._model_card()]}

    async def model(self, model_id: str) -> dict:
        if model_id != self.model_name:
            raise APIError(
                "model",
                f"model {_show(model_id)} does not exist; this server serves {self.model_name!r}",
                404,
                "model_not_found",
            )
        return self._model_card()

    # ---- /v1/completions ------------------------------------------------------------------------
    async def completions(self, request: HTTPRequest):
        body = await read_json_body(request, self.max_body_bytes)
        prompts, s = parse_completion(body, self.model_name, self.tokenizer, self.engine)
        gen = Generation(self.runner, self.tokenizer, prompts, s)
        cid, created = f"cmpl-{time.time_ns():x}", int(time.time())
        echoed = [self.tokenizer.decode(p) if s.echo else "" for p in prompts]

        def body_of(choices: list[dict], usage: dict | None = None) -> dict:
            with_usage = usage is not None or (s.stream and s.include_usage)
            return envelope(cid, "text_completion", created, self.model_name, choices, usage, with_usage)

        def choice(d: Delta, text: str, offset0: int = 0) -> dict:
            lp = completion_logprobs(d.logprobs, offset0) if s.logprobs is not None else None
            return {"text": text, "index": d.index, "logprobs": lp, "finish_reason": d.finish_reason}

        if s.stream:

            async def bodies():
                for i, e in enumerate(echoed):
                    if e:
                        yield body_of([choice(Delta(i), e)])
                async for d in gen.deltas():
                    yield body_of([choice(d, d.text, len(echoed[d.index]))])
                if s.include_usage:
                    yield body_of([], gen.usage)

            return sse_response(bodies())

        def merged_body(merged: list[Delta]) -> dict:
            return body_of([choice(d, echoed[d.index] + d.text, len(echoed[d.index])) for d in merged], gen.usage)

        return await collected(gen, request, merged_body)

    # ---- /v1/chat/completions -------------------------------------------------------------------
    async def chat_completions(self, request: HTTPRequest):
        body = await read_json_body(request, self.max_body_bytes)
        prompts, s = parse_chat(body, self.model_name, self.tokenizer, self.engine)
        gen = Generation(self.runner, self.tokenizer, prompts, s)
        cid, created = f"chatcmpl-{time.time_ns():x}", int(time.time())

        def logprobs(d: Delta) -> dict | None:
            return chat_logprobs(d.logprobs, self.tokenizer) if s.logprobs is not None else None

        if s.stream:

            def chunk(choices: list[dict], usage: dict | None = None) -> dict:
                return envelope(cid, "chat.completion.chunk", created, self.model_name, choices, usage, s.include_usage)

            def one(index: int, delta: dict, lp: dict | None, finish_reason: str | None) -> dict:
                return chunk([{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish_reason}])

            async def bodies():
                yield one(0, {"role": "assistant", "content": ""}, None, None)
                async for d in gen.deltas():
                    yield one(d.index, {"content": d.text} if d.text else {}, logprobs(d), d.finish_reason)
                if s.include_usage:
                    yield chunk([], gen.usage)

            return sse_response(bodies())

        def merged_body(merged: list[Delta]) -> dict:
            choices = [
                {
                    "index": d.index,
                    "message": {"role": "assistant", "content": d.text},
                    "logprobs": logprobs(d),
                    "finish_reason": d.finish_reason,
                }
                for d in merged
            ]
            return envelope(cid, "chat.completion", created, self.model_name, choices, gen.usage, True)

        return await collected(gen, request, merged_body)


class QuietCancel:
    """ASGI middleware for the end of a graceful shutdown: uvicorn cancels the requests still open
    after ``--shutdown-timeout``. Such a request gets a 503 if nothing was sent yet, or its response is
    ended where it is, instead of a traceback in the log (the engine side is aborted by ``Generation``)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                if not started:
                    await error_response(503, "the server is shutting down; retry on another server")(
                        scope, receive, send
                    )
                else:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})


ROUTES = "POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id}, GET /health"


async def _api_error(request: HTTPRequest, exc: APIError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.param, code=exc.code)


async def _http_error(request: HTTPRequest, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own answers (unknown route, wrong method) in OpenAI's shape instead of ``{"detail"}``."""
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        message = f"no route {where}; this server has {ROUTES}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}; this server has {ROUTES}"
    else:
        message = f"{where}: {exc.detail}"
    return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


async def _validation_error(request: HTTPRequest, exc: RequestValidationError) -> JSONResponse:
    return error_response(400, f"invalid request: {first_line(exc)}")


async def _internal_error(request: HTTPRequest, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s:\n%s", request.method, request.url.path, traceback.format_exc())
    return error_response(500, f"internal server error: {type(exc).__name__}: {first_line(exc)}")


def create_app(engine: Engine, tokenizer, model_name: str, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """FastAPI app serving ``engine``; the engine thread lives as long as the app (lifespan)."""
    srv = OpenAIServer(engine, tokenizer, model_name, max_body_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        srv.runner.start()
        try:
            yield
        finally:
            srv.runner.stop()

    app = FastAPI(
        title="course_lib OpenAI-compatible server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.runner, app.state.server = srv.runner, srv
    app.add_api_route("/health", srv.health, methods=["GET"])
    app.add_api_route("/v1/models", srv.models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id:path}", srv.model, methods=["GET"])
    app.add_api_route("/v1/completions", srv.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", srv.chat_completions, methods=["POST"])
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(QuietCancel)
    return app


class ServerThread:
    """uvicorn in a background thread on ``host``, port chosen by the OS unless given.

    For tests, benchmarks and notebooks: ``with ServerThread(app) as srv: ... srv.url ...``;
    leaving the block always stops the server (and the app's lifespan stops the engine thread).
    """

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        start_timeout: float = 60.0,
        shutdown_timeout: float | None = 10.0,
    ) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=shutdown_timeout)
        )
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.host, self.start_timeout = host, start_timeout

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"the server did not start within {self.start_timeout:.0f} s")
            time.sleep(0.02)
        self.port = bound_port(self.server)
        self.url = f"http://{self.host}:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def bound_port(server: uvicorn.Server) -> int:
    """The port a started uvicorn server listens on (the OS's choice when it was given port 0)."""
    return server.servers[0].sockets[0].getsockname()[1]


class _Server(uvicorn.Server):
    """uvicorn's server, except that after a graceful shutdown on SIGINT / SIGTERM it returns (so
    ``main`` prints its last line and exits 0) instead of re-raising the signal (exit 143 / KeyboardInterrupt),
    and that it calls ``on_listening(port)`` once its socket is bound: with ``--port 0`` the banner
    names the port the OS chose, and whoever started the process reads it there (no free-port race)."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[int], None]) -> None:
        super().__init__(config)
        self.on_listening = on_listening

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.on_listening(bound_port(self))

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            yield
            self._captured_signals.clear()


# --------------------------------------------------------------------------------------------
# python -m course_lib.serve
# --------------------------------------------------------------------------------------------
def _at_least(lo: int | float, kind=int):
    def parse(text: str):
        try:
            x = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not (x >= lo and math.isfinite(x)):
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {text}")
        return x

    return parse


def _port(text: str) -> int:
    x = _at_least(0)(text)
    if x > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in [0, 65535], got {text}")
    return x


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m course_lib.serve",
        description="Serve an exported inference artefact over an OpenAI-compatible HTTP API.",
    )
    p.add_argument(
        "--model",
        default=str(REFERENCE_DIR),
        help="folder with model.safetensors + config.json (default: the course's reference model)",
    )
    p.add_argument("--name", default=None, help="model name clients send (default: the folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default: 8000; 0 = any free port)")
    p.add_argument("--max-batch", type=_at_least(1), default=8, help="most sequences decoded together (default: 8)")
    p.add_argument(
        "--num-blocks",
        type=_at_least(1),
        default=None,
        help="KV blocks in the pool (default: enough for every row to reach the full context)",
    )
    p.add_argument("--block-size", type=_at_least(1), default=16, help="positions per KV block (default: 16)")
    p.add_argument(
        "--prefix-cache",
        action="store_true",
        help="reuse the KV blocks of prompt prefixes other requests already computed (lesson 4.2.6)",
    )
    p.add_argument(
        "--speculative",
        type=_at_least(1),
        default=None,
        metavar="K",
        help="speculative decoding: propose K tokens per step by prompt lookup (n-gram), verify them in one "
        "forward; same tokens as without (lesson 4.2.6; default: off)",
    )
    p.add_argument("--threads", type=_at_least(1), default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--max-body-bytes",
        type=_at_least(1),
        default=DEFAULT_MAX_BODY_BYTES,
        help=f"largest request body accepted, checked before reading it (default: {DEFAULT_MAX_BODY_BYTES})",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=_at_least(0, float),
        default=10.0,
        help="on Ctrl-C / SIGTERM, seconds to let open requests finish before cancelling them (default: 10)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model, tok, _ = load_inference(args.model)
    except Exception as e:  # noqa: BLE001  one clear line instead of a traceback
        print(f"error: cannot load --model {args.model}: {first_line(e)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine(
        model,
        eos_id=tok.eos_id,
        max_batch=args.max_batch,
        num_blocks=args.num_blocks,
        block_size=args.block_size,
        prefix_cache=args.prefix_cache,
        speculative=SpecConfig(NgramProposer(), k=args.speculative) if args.speculative else None,
    )
    if engine.pool.num_blocks * engine.pool.block_size < engine.max_len:
        print(
            f"[serve] note: --num-blocks {engine.pool.num_blocks} x --block-size {engine.pool.block_size} "
            f"holds {engine.pool.num_blocks * engine.pool.block_size} positions, less than the model's context "
            f"({engine.max_len}); longer requests get a 400",
            file=sys.stderr,
            flush=True,
        )
    name = args.name or Path(args.model).resolve().name
    app = create_app(engine, tok, name, max_body_bytes=args.max_body_bytes)

    def banner(port: int) -> None:
        print(
            f"[serve] model {name!r} from {args.model}; OpenAI base_url http://{args.host}:{port}/v1 (Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )

    server = _Server(
        uvicorn.Config(
            app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=args.shutdown_timeout
        ),
        on_listening=banner,
    )
    # Ctrl-C / SIGTERM: stop accepting, let open requests finish for --shutdown-timeout seconds, cancel
    # the rest (their engine requests are aborted), then the lifespan stops the engine thread.
    try:
        server.run()
    except SystemExit:  # uvicorn exits 1 when it cannot bind
        pass
    if not server.started:
        print(
            f"error: --host {args.host} --port {args.port}: could not listen there (in use, or not this "
            "machine's address); pick another --port",
            file=sys.stderr,
            flush=True,
        )
        return 2
    print("[serve] stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
