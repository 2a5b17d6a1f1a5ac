"""Loopback soak of ``python -m course_lib.serve``: many concurrent clients for a bounded time.

    python tools/soak_server.py                      # 64 clients, 300 s, loopback only
    python tools/soak_server.py --clients 8 --seconds 20

Starts the server as a subprocess on 127.0.0.1 (a free port, the reference model, a KV pool small
enough that preemption happens) and runs ``--clients`` asyncio clients until ``--seconds`` have
passed. Each client loops over a random mix: completions (plain, streamed), list prompts, chat
(plain, streamed), clients that disconnect (mid-stream, or before a non-streaming answer), and bad
requests. Every valid answer must equal the same prompt generated alone (greedy, ``generate()``);
every bad request must get a 4xx in OpenAI's error shape. At the end: no request left running, the
KV pool's free count back to its total, the server's RSS within 10% of its value after warm-up, and
SIGTERM -> exit 0. Prints one JSON summary; exit 1 if any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from course_lib.chat import END_OF_TURN, render_chat  # noqa: E402
from course_lib.generate import generate  # noqa: E402
from course_lib.pretrained import load_reference_model  # noqa: E402

NAME = "reference_model"
PROMPTS = ["def ", "import", "class ", "x = ", "for i in ", "return ", "if ", "print(", "    self.", "# "]
LENGTHS = [4, 8, 16, 32]
CHATS = [
    [{"role": "user", "content": "def add"}],
    [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "import os"}],
]
BAD = [  # (path, raw body) -> must be a 4xx in OpenAI's shape
    ("/v1/completions", {"model": NAME, "prompt": "x", "seed": 2**64}),
    ("/v1/completions", {"model": NAME, "prompt": "x", "max_token": 3}),
    ("/v1/completions", {"model": NAME, "prompt": "x", "n": True}),
    ("/v1/completions", {"model": NAME, "prompt": [300]}),
    ("/v1/completions", b'{"model": "reference_model", "prompt": "\\ud800"}'),
    ("/v1/completions", b'{"model": "reference_model", "prompt": ' + b"[" * 20000 + b"]" * 20000 + b"}"),
    ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": "x"}], "tools": [{}]}),
    ("/v1/nope", {"x": 1}),
]


def greedy_alone(model, tok, ids, n):
    out = generate(model, torch.tensor([ids]), n, eos_id=tok.eos_id, pad_id=tok.pad_id)
    return tok.decode([t for t in out[0].tolist() if t < 256])


class Soak:
    def __init__(self, url: str, want: dict, chat_want: dict, seconds: float, seed: int) -> None:
        self.url, self.want, self.chat_want = url, want, chat_want
        self.deadline = time.monotonic() + seconds
        self.counts: Counter = Counter()
        self.examples: list = []
        self.rng = random.Random(seed)
        self.oai = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
        self.http = httpx.AsyncClient(timeout=600)

    def fail(self, kind: str, detail) -> None:
        self.counts[kind] += 1
        if len(self.examples) < 10:
            self.examples.append((kind, str(detail)[:200]))

    def check(self, got: str, want: str, what) -> None:
        if got == want:
            self.counts["ok"] += 1
        else:
            self.fail("corrupted", (what, got, want))

    async def completion(self, stream: bool) -> None:
        p, n = self.rng.choice(PROMPTS), self.rng.choice(LENGTHS)
        r = await self.oai.completions.create(model=NAME, prompt=p, max_tokens=n, temperature=0, stream=stream)
        got = "".join([c.choices[0].text async for c in r]) if stream else r.choices[0].text
        self.check(got, self.want[(p, n)], (p, n, stream))

    async def list_prompt(self, stream: bool) -> None:
        ps, n = self.rng.sample(PROMPTS, self.rng.randint(2, 4)), self.rng.choice(LENGTHS)
        r = await self.oai.completions.create(model=NAME, prompt=ps, max_tokens=n, temperature=0, stream=stream)
        got = [""] * len(ps)
        if stream:
            async for c in r:
                for ch in c.choices:
                    got[ch.index] += ch.text
        else:
            got = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
        for p, g in zip(ps, got, strict=True):
            self.check(g, self.want[(p, n)], (p, n, stream, "list"))

    async def chat(self, stream: bool) -> None:
        i = self.rng.randrange(len(CHATS))
        r = await self.oai.chat.completions.create(
            model=NAME, messages=CHATS[i], max_tokens=24, temperature=0, stream=stream
        )
        if stream:
            got = "".join([c.choices[0].delta.content or "" async for c in r if c.choices])
        else:
            got = r.choices[0].message.content
        self.check(got, self.chat_want[i], ("chat", i, stream))

    async def disconnect(self) -> None:
        body = {"model": NAME, "prompt": self.rng.choice(PROMPTS), "max_tokens": 200, "temperature": 0}
        if self.rng.random() < 0.5:
            async with self.http.stream("POST", self.url + "/v1/completions", json={**body, "stream": True}) as r:
                k = 0
                async for _ in r.aiter_lines():
                    k += 1
                    if k >= self.rng.randint(1, 5):
                        break
        else:
            try:
                await self.http.post(self.url + "/v1/completions", json=body, timeout=httpx.Timeout(60, read=0.3))
            except httpx.ReadTimeout:
                pass
        self.counts["disconnects"] += 1

    async def bad(self) -> None:
        path, body = self.rng.choice(BAD)
        kw = (
            {"content": body, "headers": {"Content-Type": "application/json"}}
            if isinstance(body, bytes)
            else {"json": body}
        )
        r = await self.http.post(self.url + path, **kw)
        try:
            err = r.json()["error"]
            ok = 400 <= r.status_code < 500 and set(err) == {"message", "type", "param", "code"}
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            self.counts["bad_refused"] += 1
        else:
            self.fail("bad_answered_wrongly", (path, r.status_code, r.text[:100]))

    async def client(self) -> None:
        kinds = [
            (self.completion, (False,), 20),
            (self.completion, (True,), 20),
            (self.list_prompt, (False,), 8),
            (self.list_prompt, (True,), 7),
            (self.chat, (False,), 5),
            (self.chat, (True,), 5),
            (self.disconnect, (), 15),
            (self.bad, (), 20),
        ]
        fns = [(f, a) for f, a, w in kinds for _ in range(w)]
        while time.monotonic() < self.deadline:
            f, a = self.rng.choice(fns)
            try:
                await f(*a)
            except Exception as e:  # noqa: BLE001  a valid request that failed is a lost response
                self.fail("lost", f"{f.__name__}{a}: {type(e).__name__}: {e}")

    async def run(self, n_clients: int) -> None:
        await asyncio.gather(*(self.client() for _ in range(n_clients)))
        await self.http.aclose()
        await self.oai.close()


def health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=30).json()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--num-blocks", type=int, default=48, help="server KV pool (small: forces preemption)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (1 <= args.clients <= 256 and 1 <= args.seconds <= 1800):
        ap.error("--clients must be in [1, 256] and --seconds in [1, 1800]")
    torch.set_num_threads(1)
    model, tok = load_reference_model()
    want = {(p, n): greedy_alone(model, tok, tok.encode(p), n) for p in PROMPTS for n in LENGTHS}
    chat_want = [greedy_alone(model, tok, tok.encode(render_chat(m)), 24).split(END_OF_TURN)[0] for m in CHATS]
    del model

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "course_lib.serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",  # the OS chooses; the server names the port in its banner (no free-port race)
            "--num-blocks",
            str(args.num_blocks),
            "--shutdown-timeout",
            "5",
        ],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    err_lines: list[str] = []
    port = None
    for line in proc.stderr:  # up to the banner, which comes once the socket is bound
        err_lines.append(line)
        m = re.search(r"base_url http://127\.0\.0\.1:(\d+)/v1", line)
        if m:
            port = int(m[1])
            break
    if port is None:
        print("".join(err_lines), file=sys.stderr)
        proc.wait()
        return 1
    drain = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)  # keep the pipe drained
    drain.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                h0 = health(url)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    print("".join(err_lines), file=sys.stderr)
                    return 1
                time.sleep(0.2)
        ps = psutil.Process(proc.pid)
        warm = Soak(url, want, dict(enumerate(chat_want)), 15, args.seed + 1)  # warm-up: every kind once or more
        asyncio.run(warm.run(min(8, args.clients)))
        rss0 = ps.memory_info().rss
        t0 = time.monotonic()
        soak = Soak(url, want, dict(enumerate(chat_want)), args.seconds, args.seed)
        asyncio.run(soak.run(args.clients))
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 60
        while (h := health(url))["running"] or h["waiting"]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        rss1 = ps.memory_info().rss
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        drain.join(timeout=10)  # the process is gone: its stderr ends
        err = "".join(err_lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    c = soak.counts
    summary = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "ok": c["ok"],
        "lost": c["lost"],
        "corrupted": c["corrupted"],
        "disconnects": c["disconnects"],
        "bad_refused": c["bad_refused"],
        "bad_answered_wrongly": c["bad_answered_wrongly"],
        "warmup_ok": warm.counts["ok"],
        "leaked_blocks": h0["free_blocks"] - h["free_blocks"],
        "num_blocks": h["num_blocks"],
        "left_running": h["running"] + h["waiting"],
        "rss_start_mb": round(rss0 / 2**20, 1),
        "rss_end_mb": round(rss1 / 2**20, 1),
        "rss_change_pct": round(100 * (rss1 - rss0) / rss0, 1),
        "sigterm_rc": rc,
        "last_line": err.strip().splitlines()[-1] if err.strip() else "",
        "examples": soak.examples + warm.examples,
    }
    print(json.dumps(summary, indent=1))
    ok = (
        not c["lost"]
        and not c["corrupted"]
        and not c["bad_answered_wrongly"]
        and not warm.counts["lost"]
        and not warm.counts["corrupted"]
        and summary["leaked_blocks"] == 0
        and summary["left_running"] == 0
        and abs(summary["rss_change_pct"]) <= 10
        and rc == 0
        and summary["last_line"] == "[serve] stopped"
    )
    print("soak:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
