"""A small OpenAI-compatible completion server over the continuous-batching engine.

    python -m course_lib.serve --model course_lib/assets/reference_model      # 127.0.0.1:8000
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
         -d '{"model": "reference_model", "prompt": "def ", "max_tokens": 20}'

Endpoints: ``POST /v1/completions`` (``prompt``, ``max_tokens``, ``temperature``, ``top_p``, ``stream``
as server-sent events, ``stop``, ``seed``), ``GET /v1/models``, ``GET /health``. So the official
``openai`` client works with ``base_url="http://127.0.0.1:8000/v1"``.

Shape: FastAPI + uvicorn handle HTTP on an asyncio loop; the ``Engine`` runs in ONE background
thread (a decode step is blocking tensor work and must not stall the loop). A request handler
submits to the engine and waits on its own ``asyncio.Queue``; the engine thread's ``on_token`` /
``on_finish`` callbacks push into that queue with ``loop.call_soon_threadsafe`` (the only
thread-safe way into an asyncio loop). Bad requests get a 4xx JSON error naming the field
(OpenAI's error shape); an engine error fails that request only (HTTP 500 or an error event).
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, StreamingResponse

from .engine import Engine, Request, RequestRefused
from .export import load_inference
from .pretrained import REFERENCE_DIR

log = logging.getLogger("course_lib.serve")


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
        req = self.engine.submit(prompt_ids, max_tokens, **kw)   # thread-safe queue inside
        self._wake.set()
        return req

    def _run(self) -> None:
        while not self._stop:
            self._wake.clear()                        # clear *before* looking, so no submit is missed
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


# --------------------------------------------------------------------------------------------
# Request validation: one clear 4xx naming the field
# --------------------------------------------------------------------------------------------
class BadRequest(Exception):
    def __init__(self, param: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.param, self.message, self.status = param, message, status


def error_response(status: int, message: str, param: str | None, kind: str = "invalid_request_error"):
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": None}})


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    x = body.get(name, default)
    if x is None:
        return default
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise BadRequest(name, f"{name} must be a number, got {type(x).__name__}")
    if not (lo < x <= hi if lo_open else lo <= x <= hi):
        raise BadRequest(name, f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {x}")
    return float(x)


def parse_completion(raw: bytes, model_name: str, tokenizer, engine: Engine) -> dict:
    """Body bytes -> validated parameters, or ``BadRequest`` naming the offending field."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest("body", f"request body is not valid UTF-8 (byte {e.start}); send UTF-8 JSON") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRequest("body", f"request body is not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(body, dict):
        raise BadRequest("body", "request body must be a JSON object")
    if "model" not in body:
        raise BadRequest("model", f"model is required; this server serves {model_name!r}")
    if body["model"] != model_name:
        raise BadRequest("model", f"model {body['model']!r} does not exist; this server serves {model_name!r}", 404)
    if "prompt" not in body:
        raise BadRequest("prompt", "prompt is required (a string)")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]                      # the openai client may send a one-element list
    if not isinstance(prompt, str):
        raise BadRequest("prompt", f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt:
        raise BadRequest("prompt", "prompt must not be empty")
    max_tokens = body.get("max_tokens", 16)
    if max_tokens is None:
        max_tokens = 16
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise BadRequest("max_tokens", f"max_tokens must be an integer, got {type(max_tokens).__name__}")
    if max_tokens < 1:
        raise BadRequest("max_tokens", f"max_tokens must be >= 1, got {max_tokens}")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream", f"stream must be true or false, got {type(stream).__name__}")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop)):
        raise BadRequest("stop", "stop must be a string or a list of at most 4 strings")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("seed", f"seed must be an integer, got {type(seed).__name__}")
    n = body.get("n", 1)
    if n != 1:
        raise BadRequest("n", "only n = 1 is supported")
    ids = tokenizer.encode(prompt)
    if len(ids) >= engine.max_len:
        raise BadRequest("prompt", f"prompt is {len(ids)} tokens; the model's context is {engine.max_len} tokens")
    try:
        engine.check(len(ids), max_tokens)
    except RequestRefused as e:
        raise BadRequest("max_tokens", str(e)) from None
    return {"prompt_ids": ids, "max_tokens": max_tokens, "temperature": temperature,
            "top_p": top_p if top_p < 1.0 else None, "seed": seed, "stream": stream, "stop": stop or []}


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
            out, self.buf = self.buf[:min(hits)], ""
            return out, True
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.buf.endswith(s[:k])), default=0)
        out, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


class EngineError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------
def create_app(engine: Engine, tokenizer, model_name: str) -> FastAPI:
    """FastAPI app serving ``engine``; the engine thread lives as long as the app (lifespan)."""
    runner = EngineThread(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runner.start()
        try:
            yield
        finally:
            runner.stop()

    app = FastAPI(title="course_lib completion server", lifespan=lifespan)
    app.state.runner = runner
    created = int(time.time())

    async def pieces(params: dict, seen: dict) -> AsyncIterator[tuple[str, str | None]]:
        """Yield (text, None) pieces as tokens arrive, then ("", finish_reason); counts tokens in ``seen``."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def on_token(req: Request, tok: int) -> None:       # engine thread
            loop.call_soon_threadsafe(q.put_nowait, tok)

        def on_finish(req: Request) -> None:                # engine thread
            loop.call_soon_threadsafe(q.put_nowait, None)

        req = runner.submit(params["prompt_ids"], params["max_tokens"], temperature=params["temperature"],
                            top_p=params["top_p"], seed=params["seed"], on_token=on_token, on_finish=on_finish)
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
        stop = StopMatcher(params["stop"])
        try:
            while True:
                tok = await q.get()
                if tok is None:
                    break
                if tok == tokenizer.eos_id or tok >= 256:   # byte tokenizer: ids >= 256 are special
                    continue
                seen["tokens"] = seen.get("tokens", 0) + 1
                text, hit = stop.push(dec.decode(bytes([tok])))
                if text:
                    yield text, None
                if hit:
                    req.abort()
                    yield "", "stop"
                    return
            if req.finish_reason == "error":
                raise EngineError(req.error)
            tail = stop.push(dec.decode(b"", final=True))[0] + stop.flush()
            if tail:
                yield tail, None
            yield "", "stop" if req.finish_reason == "stop" else "length"
        finally:
            if not req.done:
                req.abort()               # client went away (or stop hit): free the row and its blocks

    def usage(params: dict, n_out: int) -> dict:
        n_in = len(params["prompt_ids"])
        return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}

    @app.exception_handler(BadRequest)
    async def bad_request(request: HTTPRequest, exc: BadRequest):
        return error_response(exc.status, exc.message, exc.param)

    @app.get("/health")
    async def health():
        return {"status": "ok", "running": len(engine.running), "waiting": len(engine.waiting)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "course_lib"}]}

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        params = parse_completion(await request.body(), model_name, tokenizer, engine)
        cid = f"cmpl-{time.time_ns():x}"

        def chunk(text: str, finish: str | None) -> dict:
            return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model_name,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

        if params["stream"]:
            async def sse():
                try:
                    async for text, finish in pieces(params, {}):
                        yield f"data: {json.dumps(chunk(text, finish))}\n\n"
                except EngineError as e:
                    # headers are gone already: an error event (the openai client raises on it)
                    yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(sse(), media_type="text/event-stream")

        parts: list[str] = []
        finish, seen = None, {}
        try:
            async for text, finish in pieces(params, seen):
                parts.append(text)
        except EngineError as e:
            return error_response(500, f"generation failed: {e}", None, "server_error")
        body = chunk("".join(parts), finish)
        body["usage"] = usage(params, seen.get("tokens", 0))
        return body

    return app


class ServerThread:
    """uvicorn in a background thread on ``host``, port chosen by the OS unless given.

    For tests, benchmarks and notebooks: ``with ServerThread(app) as srv: ... srv.url ...``;
    leaving the block always stops the server (and the app's lifespan stops the engine thread).
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 60.0) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
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
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


# --------------------------------------------------------------------------------------------
# python -m course_lib.serve
# --------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.serve",
                                description="Serve an exported inference artefact over an OpenAI-compatible HTTP API.")
    p.add_argument("--model", default=str(REFERENCE_DIR),
                   help="folder with model.safetensors + config.json (default: the course's reference model)")
    p.add_argument("--name", default=None, help="model name clients send (default: the folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0 = any free port)")
    p.add_argument("--max-batch", type=int, default=8, help="most sequences decoded together (default: 8)")
    p.add_argument("--num-blocks", type=int, default=None,
                   help="KV blocks in the pool (default: enough for every row to reach the full context)")
    p.add_argument("--block-size", type=int, default=16, help="positions per KV block (default: 16)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    try:
        model, tok, _ = load_inference(args.model)
    except Exception as e:  # noqa: BLE001  one clear line instead of a traceback
        print(f"error: cannot load --model {args.model}: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine(model, eos_id=tok.eos_id, max_batch=args.max_batch, num_blocks=args.num_blocks,
                    block_size=args.block_size)
    name = args.name or Path(args.model).resolve().name
    app = create_app(engine, tok, name)
    print(f"[serve] model {name!r} from {args.model}; OpenAI base_url http://{args.host}:{args.port}/v1 "
          "(Ctrl-C to stop)", file=sys.stderr, flush=True)
    # uvicorn turns Ctrl-C / SIGTERM into a graceful shutdown: the lifespan stops the engine thread.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    print("[serve] stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
