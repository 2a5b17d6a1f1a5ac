"""The server's answer to every input, table-driven (issue #20 defects 4-9, issue #23 item 3).

Requests the official ``openai`` client can send go through it; the rest (bad JSON, lone
surrogates, a 50 MB Content-Length, unknown routes, wrong methods) go out as raw HTTP with httpx or
a socket. One server per module on the small reference model, plus a second one whose model is
slowed down (sleep per forward) for the disconnect and shutdown tests.
"""

import json
import socket
import time

import httpx
import openai
import pytest
import torch

from course_lib.chat import END_OF_TURN, render_chat
from course_lib.engine import Engine
from course_lib.generate import generate
from course_lib.pretrained import load_reference_model
from course_lib.serve import ServerThread, create_app, main

NAME = "reference_model"


class Slow(torch.nn.Module):
    """The reference model, 10 ms slower per forward: a 250-token answer takes > 2.5 s."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, ids, **kw):
        time.sleep(0.01)
        return self.inner(ids, **kw)


@pytest.fixture(scope="module")
def model_tok():
    return load_reference_model()


@pytest.fixture(scope="module")
def server(model_tok):
    model, tok = model_tok
    with ServerThread(create_app(Engine(model, eos_id=tok.eos_id, max_batch=8), tok, NAME)) as srv:
        yield srv


@pytest.fixture(scope="module")
def slow_server(model_tok):
    model, tok = model_tok
    with ServerThread(create_app(Engine(Slow(model), eos_id=tok.eos_id, max_batch=8), tok, NAME)) as srv:
        yield srv


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=120)


def greedy_alone(model, tok, prompt, max_tokens):
    ids = prompt if isinstance(prompt, list) else tok.encode(prompt)
    out = generate(model, torch.tensor([ids]), max_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id)
    return tok.decode([t for t in out[0].tolist() if t < 256])


def post(server, body, path="/v1/completions", **kw):
    if isinstance(body, bytes):
        return httpx.post(
            server.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=60, **kw
        )
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


def assert_openai_error(r, status, param=None):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body  # never FastAPI's {"detail": ...}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    if param is not None:
        assert err["param"] == param, err
        assert param.split("[")[0] in err["message"], err  # the message names the field too
    return err


# --------------------------------------------------------------------------------------------
# 1. Every bad input: 4xx in OpenAI's shape naming the field, before any work
# --------------------------------------------------------------------------------------------
C = {"model": NAME, "prompt": "x = ", "max_tokens": 3}
M = [{"role": "user", "content": "hi"}]
CH = {"model": NAME, "messages": M, "max_tokens": 3}
DEEP = b'{"model": "reference_model", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

BAD = [  # (id, path, body (dict or raw bytes), status, param)
    ("seed-2^64", "/v1/completions", {**C, "seed": 2**64}, 400, "seed"),
    ("seed-2^64-stream", "/v1/completions", {**C, "seed": 2**64, "stream": True}, 400, "seed"),
    ("seed-below-int64", "/v1/completions", {**C, "seed": -(2**63) - 1}, 400, "seed"),
    ("seed-float", "/v1/completions", {**C, "seed": 1.5}, 400, "seed"),
    ("lone-surrogate", "/v1/completions", b'{"model": "reference_model", "prompt": "a\\ud800b"}', 400, "prompt"),
    (
        "lone-surrogate-stop",
        "/v1/completions",
        b'{"model": "reference_model", "prompt": "a", "stop": "\\udfff"}',
        400,
        "stop",
    ),
    ("nested-100000", "/v1/completions", DEEP, 400, "body"),
    (
        "int-5000-digits",
        "/v1/completions",
        b'{"model": "reference_model", "prompt": "x", "max_tokens": 1' + b"0" * 5000 + b"}",
        400,
        "body",
    ),
    ("nan", "/v1/completions", b'{"model": "reference_model", "prompt": "x", "temperature": NaN}', 400, "body"),
    ("n-true", "/v1/completions", {**C, "n": True}, 400, "n"),
    ("n-float", "/v1/completions", {**C, "n": 1.0}, 400, "n"),
    ("n-2", "/v1/completions", {**C, "n": 2}, 400, "n"),
    ("best_of-2", "/v1/completions", {**C, "best_of": 2}, 400, "best_of"),
    ("best_of-true", "/v1/completions", {**C, "best_of": True}, 400, "best_of"),
    ("suffix", "/v1/completions", {**C, "suffix": "x"}, 400, "suffix"),
    ("logit_bias-abc", "/v1/completions", {**C, "logit_bias": "abc"}, 400, "logit_bias"),
    ("logit_bias-set", "/v1/completions", {**C, "logit_bias": {"65": 5}}, 400, "logit_bias"),
    ("unknown-key", "/v1/completions", {**C, "max_token": 5}, 400, "max_token"),
    ("logprobs-21", "/v1/completions", {**C, "logprobs": 21}, 400, "logprobs"),
    ("logprobs-true", "/v1/completions", {**C, "logprobs": True}, 400, "logprobs"),
    ("logprobs-neg", "/v1/completions", {**C, "logprobs": -1}, 400, "logprobs"),
    ("echo-str", "/v1/completions", {**C, "echo": "yes"}, 400, "echo"),
    ("echo+logprobs", "/v1/completions", {**C, "echo": True, "logprobs": 1}, 400, "echo"),
    (
        "stream_options-no-stream",
        "/v1/completions",
        {**C, "stream_options": {"include_usage": True}},
        400,
        "stream_options",
    ),
    (
        "stream_options-unknown",
        "/v1/completions",
        {**C, "stream": True, "stream_options": {"x": 1}},
        400,
        "stream_options",
    ),
    (
        "include_usage-str",
        "/v1/completions",
        {**C, "stream": True, "stream_options": {"include_usage": "y"}},
        400,
        "include_usage",
    ),
    ("frequency_penalty-3", "/v1/completions", {**C, "frequency_penalty": 3}, 400, "frequency_penalty"),
    ("presence_penalty-str", "/v1/completions", {**C, "presence_penalty": "a"}, 400, "presence_penalty"),
    ("temperature-2.5", "/v1/completions", {**C, "temperature": 2.5}, 400, "temperature"),
    ("top_p-0", "/v1/completions", {**C, "top_p": 0}, 400, "top_p"),
    ("max_tokens-0", "/v1/completions", {**C, "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens-huge", "/v1/completions", {**C, "max_tokens": 10**30}, 400, "max_tokens"),
    ("user-int", "/v1/completions", {**C, "user": 5}, 400, "user"),
    ("prompt-empty-list", "/v1/completions", {**C, "prompt": []}, 400, "prompt"),
    ("prompt-empty-ids", "/v1/completions", {**C, "prompt": [[]]}, 400, "prompt"),
    ("prompt-mixed", "/v1/completions", {**C, "prompt": [1, "a"]}, 400, "prompt"),
    ("prompt-id-out-of-vocab", "/v1/completions", {**C, "prompt": [300]}, 400, "prompt"),
    ("prompt-id-bool", "/v1/completions", {**C, "prompt": [True]}, 400, "prompt"),
    ("prompt-nested-str", "/v1/completions", {**C, "prompt": [["a"]]}, 400, "prompt"),
    ("prompt-list-one-empty", "/v1/completions", {**C, "prompt": ["a", ""]}, 400, "prompt"),
    ("prompt-list-one-too-long", "/v1/completions", {**C, "prompt": ["a", "x" * 300]}, 400, "prompt"),
    (
        "prompt-list-one-over-context",
        "/v1/completions",
        {**C, "prompt": ["a", "x" * 200], "max_tokens": 100},
        400,
        "max_tokens",
    ),
    ("model-unknown", "/v1/completions", {**C, "model": "gpt-4"}, 404, "model"),
    ("chat-n-2", "/v1/chat/completions", {**CH, "n": 2}, 400, "n"),
    (
        "chat-tools",
        "/v1/chat/completions",
        {**CH, "tools": [{"type": "function", "function": {"name": "f"}}]},
        400,
        "tools",
    ),
    ("chat-tool_choice", "/v1/chat/completions", {**CH, "tool_choice": "required"}, 400, "tool_choice"),
    (
        "chat-response_format",
        "/v1/chat/completions",
        {**CH, "response_format": {"type": "json_object"}},
        400,
        "response_format",
    ),
    ("chat-logit_bias", "/v1/chat/completions", {**CH, "logit_bias": {"1": 2}}, 400, "logit_bias"),
    ("chat-top_logprobs-alone", "/v1/chat/completions", {**CH, "top_logprobs": 2}, 400, "top_logprobs"),
    ("chat-logprobs-int", "/v1/chat/completions", {**CH, "logprobs": 3}, 400, "logprobs"),
    ("chat-unknown-key", "/v1/chat/completions", {**CH, "prompt": "x"}, 400, "prompt"),
    ("chat-no-messages", "/v1/chat/completions", {"model": NAME}, 400, "messages"),
    (
        "chat-bad-role",
        "/v1/chat/completions",
        {**CH, "messages": M + [{"role": "robot", "content": "x"}]},
        400,
        "messages[1].role",
    ),
    (
        "chat-content-int",
        "/v1/chat/completions",
        {**CH, "messages": [{"role": "user", "content": 5}]},
        400,
        "messages[0].content",
    ),
    (
        "chat-surrogate",
        "/v1/chat/completions",
        b'{"model": "reference_model", "messages": [{"role": "user", "content": "\\ud800"}]}',
        400,
        "messages",
    ),
    (
        "chat-too-long",
        "/v1/chat/completions",
        {**CH, "messages": [{"role": "user", "content": "x" * 300}]},
        400,
        "messages",
    ),
    ("chat-stop-5", "/v1/chat/completions", {**CH, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("chat-seed-2^64", "/v1/chat/completions", {**CH, "seed": 2**64, "stream": True}, 400, "seed"),
    ("chat-model-unknown", "/v1/chat/completions", {**CH, "model": "gpt-4"}, 404, "model"),
]


@pytest.mark.parametrize("path,body,status,param", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gets_openai_error_naming_the_field(server, path, body, status, param):
    engine = server.server.config.app.state.runner.engine
    steps0 = engine.steps
    assert_openai_error(post(server, body, path), status, param)
    assert engine.steps == steps0, "a refused request must not reach the engine"


ROUTES = [
    ("GET", "/nope", 404),
    ("POST", "/v1/nope", 404),
    ("GET", "/v1/completions", 405),
    ("GET", "/v1/chat/completions", 405),
    ("POST", "/v1/models", 405),
    ("DELETE", "/health", 405),
    ("GET", "/docs", 404),
]


@pytest.mark.parametrize("method,path,status", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_unknown_routes_and_methods_answer_in_openai_shape(server, method, path, status):
    err = assert_openai_error(httpx.request(method, server.url + path, timeout=30), status)
    assert path in err["message"] and "/v1/completions" in err["message"]


def test_models_retrieve(client):
    assert client.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert e.value.body["param"] == "model"


def _read_response(sock) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split()[1]), body


def test_body_over_the_limit_is_refused_before_it_is_sent(server):
    """Content-Length 50 MB and not one body byte sent: the 413 comes back at once (nothing read)."""
    with socket.create_connection((server.host, server.port), timeout=30) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n"
        )
        status, body = _read_response(s)
    assert status == 413 and json.loads(body)["error"]["param"] == "body", body


def test_chunked_body_over_the_limit_is_refused_while_streaming(server):
    """No Content-Length (chunked upload): the server counts the bytes and stops at the limit."""
    with socket.create_connection((server.host, server.port), timeout=30) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        piece = b" " * 65536
        try:
            for _ in range(24):  # 1.5 MiB > the 1 MiB default
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        except OSError:
            pass  # the server answered and closed: fine
        status, body = _read_response(s)
    assert status == 413 and json.loads(body)["error"]["param"] == "body", body


# --------------------------------------------------------------------------------------------
# 2. Inputs that must work (and equal the prompt generated alone, greedy)
# --------------------------------------------------------------------------------------------
def test_tiny_temperature_and_top_p_are_greedy_not_500(client, model_tok):
    model, tok = model_tok
    want = greedy_alone(model, tok, "def ", 10)
    for kw in ({"temperature": 1e-38}, {"temperature": 9e-6, "seed": 3}, {"temperature": 1.0, "top_p": 1e-300}):
        assert client.completions.create(model=NAME, prompt="def ", max_tokens=10, **kw).choices[0].text == want, kw


@pytest.mark.parametrize("seed", [-(2**63), -1, 0, 2**63 - 1])
def test_seed_range_of_vllm_is_accepted(client, seed):
    r = client.completions.create(model=NAME, prompt="def ", max_tokens=3, temperature=0.8, seed=seed)
    assert r.choices[0].finish_reason in ("length", "stop")


def test_accepted_no_op_fields(client, model_tok):
    model, tok = model_tok
    r = client.completions.create(
        model=NAME,
        prompt="def ",
        max_tokens=5,
        temperature=0,
        n=1,
        best_of=1,
        user="someone",
        echo=False,
        logit_bias={},
        frequency_penalty=0,
        presence_penalty=0,
    )
    assert r.choices[0].text == greedy_alone(model, tok, "def ", 5)


LIST_PROMPTS = [
    ("strings", ["def ", "import", "class "]),
    ("ids", [100, 101, 102, 32]),
    ("id-lists", [[100, 101, 102, 32], [105, 109]]),
    ("one-string-list", ["x = "]),
]


@pytest.mark.parametrize("prompt", [p for _, p in LIST_PROMPTS], ids=[i for i, _ in LIST_PROMPTS])
def test_list_prompts_one_choice_each_equal_to_alone(client, model_tok, prompt):
    model, tok = model_tok
    prompts = [prompt] if isinstance(prompt[0], int) else prompt
    want = [greedy_alone(model, tok, p, 8) for p in prompts]
    r = client.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0)
    assert [c.index for c in r.choices] == list(range(len(prompts)))
    assert [c.text for c in r.choices] == want
    n_in = sum(len(p) if isinstance(p, list) else len(tok.encode(p)) for p in prompts)
    assert r.usage.prompt_tokens == n_in and r.usage.completion_tokens <= 8 * len(prompts)
    got = [""] * len(prompts)
    for c in client.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0, stream=True):
        for ch in c.choices:
            got[ch.index] += ch.text
    assert got == want


def test_logprobs_are_the_models_and_line_up_with_the_text(client, model_tok):
    model, tok = model_tok
    r = client.completions.create(model=NAME, prompt="def ", max_tokens=10, temperature=0, logprobs=3)
    c = r.choices[0]
    lp = c.logprobs
    assert "".join(lp.tokens) == c.text and len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    for t, v, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 1 <= len(top) <= 4 and top[t] == v <= 0
        assert v == max(top.values()), "greedy: the sampled token is the most likely one"
    with torch.no_grad():
        want = model(torch.tensor([tok.encode("def ")])).logits[0, -1].float().log_softmax(-1)
    assert abs(lp.token_logprobs[0] - float(want.max())) < 1e-4
    # logprobs=0: only the sampled token; and recording logprobs does not change what is sampled
    kw = {"model": NAME, "prompt": "import", "max_tokens": 10, "temperature": 0.9, "seed": 7}
    a = client.completions.create(**kw, logprobs=0).choices[0]
    b = client.completions.create(**kw).choices[0]
    assert a.text == b.text and all(len(top) == 1 for top in a.logprobs.top_logprobs)
    assert b.logprobs is None


def test_logprobs_streamed_and_cut_at_a_stop_string(client, model_tok):
    model, tok = model_tok
    full = greedy_alone(model, tok, "class Foo(object):\n    def __init__(self", 30)
    stop = full[5:7]
    want = full[: full.index(stop)]
    kw = {
        "model": NAME,
        "prompt": "class Foo(object):\n    def __init__(self",
        "max_tokens": 30,
        "temperature": 0,
        "stop": stop,
        "logprobs": 2,
    }
    r = client.completions.create(**kw).choices[0]
    assert r.text == want and "".join(r.logprobs.tokens) == want and r.finish_reason == "stop"
    chunks = list(client.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == want
    assert sum((c.choices[0].logprobs.tokens for c in chunks if c.choices[0].logprobs), []) == r.logprobs.tokens


def test_echo_prepends_the_prompt(client, model_tok):
    model, tok = model_tok
    want = greedy_alone(model, tok, "import", 6)
    r = client.completions.create(model=NAME, prompt=["import", "def "], max_tokens=6, temperature=0, echo=True)
    assert r.choices[0].text == "import" + want and r.choices[1].text.startswith("def ")
    chunks = list(
        client.completions.create(model=NAME, prompt="import", max_tokens=6, temperature=0, echo=True, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks) == "import" + want


def test_stream_include_usage_is_the_last_chunk(client):
    plain = client.completions.create(model=NAME, prompt=["def ", "x = "], max_tokens=5, temperature=0)
    chunks = list(
        client.completions.create(
            model=NAME,
            prompt=["def ", "x = "],
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == plain.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    without = list(client.completions.create(model=NAME, prompt="def ", max_tokens=5, temperature=0, stream=True))
    assert all(c.choices for c in without)


def greedy_penalized(model, tok, prompt, n, fp, pp):
    """Oracle: a full forward per token, OpenAI's penalty formula on the generated tokens' counts."""
    ids, out = tok.encode(prompt), []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids + out])).logits[0, -1].float()
            counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.numel()).float()
            t = int((logits - fp * counts - pp * (counts > 0).float()).argmax())
            out.append(t)
            if t == tok.eos_id:
                break
    return tok.decode([t for t in out if t < 256])


@pytest.mark.parametrize("fp,pp", [(2.0, 0.0), (0.0, 2.0), (0.7, -0.5)])
def test_frequency_and_presence_penalties_follow_openais_formula(client, model_tok, fp, pp):
    model, tok = model_tok
    prompt = "        self."
    got = (
        client.completions.create(
            model=NAME, prompt=prompt, max_tokens=16, temperature=0, frequency_penalty=fp, presence_penalty=pp
        )
        .choices[0]
        .text
    )
    assert got == greedy_penalized(model, tok, prompt, 16, fp, pp)
    if fp == 2.0:
        assert got != greedy_alone(model, tok, prompt, 16), "a strong penalty should change the answer"


# --------------------------------------------------------------------------------------------
# 3. /v1/chat/completions through the official client
# --------------------------------------------------------------------------------------------
def chat_alone(model, tok, messages, max_tokens):
    text = greedy_alone(model, tok, render_chat(messages), max_tokens)
    return text.split(END_OF_TURN)[0]


def test_chat_completion_plain_and_streamed(client, model_tok):
    model, tok = model_tok
    msgs = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "def add"}]
    want = chat_alone(model, tok, msgs, 20)
    r = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=20, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(tok.encode(render_chat(msgs)))
    chunks = list(
        client.chat.completions.create(
            model=NAME, messages=msgs, max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].usage.model_dump() == r.usage.model_dump()
    # max_completion_tokens, a user stop string, logprobs
    stop = want[3:5]
    r2 = client.chat.completions.create(
        model=NAME, messages=msgs, max_completion_tokens=20, temperature=0, stop=[stop], logprobs=True, top_logprobs=2
    )
    assert r2.choices[0].message.content == want[: want.index(stop)]
    content = r2.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r2.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_chat_default_max_tokens_is_the_rest_of_the_context(client, model_tok):
    _, tok = model_tok
    msgs = [{"role": "user", "content": "x" * 150}]
    r = client.chat.completions.create(model=NAME, messages=msgs, temperature=0)
    n_in = len(tok.encode(render_chat(msgs)))
    assert r.usage.prompt_tokens == n_in and r.usage.completion_tokens <= 256 - n_in


# --------------------------------------------------------------------------------------------
# 4. A client that goes away; shutdown; flags
# --------------------------------------------------------------------------------------------
def _record_requests(srv, monkeypatch) -> list:
    runner, seen = srv.server.config.app.state.runner, []
    submit = runner.submit

    def recording(*a, **kw):
        seen.append(submit(*a, **kw))
        return seen[-1]

    monkeypatch.setattr(runner, "submit", recording)
    return seen


def _wait_done(reqs, timeout=30):
    deadline = time.monotonic() + timeout
    while not all(r.done for r in reqs):
        assert time.monotonic() < deadline, "the abandoned requests are still running"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "path,body",
    [("/v1/completions", {"prompt": ["def ", "import"]}), ("/v1/chat/completions", {"messages": M})],
    ids=["completions", "chat"],
)
def test_non_streaming_client_that_disconnects_aborts_its_requests(slow_server, monkeypatch, path, body):
    seen = _record_requests(slow_server, monkeypatch)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            slow_server.url + path,
            json={"model": NAME, "max_tokens": 200, "temperature": 0, **body},
            timeout=httpx.Timeout(60, read=0.5),
        )
    _wait_done(seen)
    assert seen and all(r.finish_reason == "abort" and len(r.output) < 150 for r in seen), [
        (r.finish_reason, len(r.output)) for r in seen
    ]
    engine = slow_server.server.config.app.state.runner.engine
    deadline = time.monotonic() + 10
    while len(engine.pool.free) != engine.pool.num_blocks:
        assert time.monotonic() < deadline, "KV blocks leaked"
        time.sleep(0.05)


def test_streaming_chat_client_that_disconnects_aborts(slow_server, monkeypatch):
    seen = _record_requests(slow_server, monkeypatch)
    body = {"model": NAME, "messages": M, "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", slow_server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert next(r.iter_lines()).startswith("data: ")
    _wait_done(seen)
    assert seen[0].finish_reason == "abort" and len(seen[0].output) < 150


def test_shutdown_is_bounded_and_aborts_open_requests(model_tok, monkeypatch):
    model, tok = model_tok
    app = create_app(Engine(Slow(model), eos_id=tok.eos_id), tok, NAME)
    srv = ServerThread(app, shutdown_timeout=0.5)
    with srv:
        seen = _record_requests(srv, monkeypatch)
        with httpx.stream(
            "POST",
            srv.url + "/v1/completions",
            timeout=60,
            json={"model": NAME, "prompt": "def ", "max_tokens": 240, "stream": True},
        ) as r:
            lines = r.iter_lines()
            next(lines)
            t0 = time.monotonic()
            srv.server.should_exit = True
            rest = list(lines)  # the server ends the stream where it is
            srv.thread.join(timeout=30)
            took = time.monotonic() - t0
    assert not srv.thread.is_alive() and took < 2.0, f"shutdown took {took:.1f} s with a 0.5 s limit"
    assert "data: [DONE]" not in rest
    assert seen[0].finish_reason == "abort" and len(seen[0].output) < 200
    engine = app.state.runner.engine
    assert len(engine.pool.free) == engine.pool.num_blocks, "KV blocks leaked at shutdown"


BAD_FLAGS = [
    (["--max-batch", "0"], "--max-batch"),
    (["--block-size", "0"], "--block-size"),
    (["--num-blocks", "-3"], "--num-blocks"),
    (["--num-blocks", "0"], "--num-blocks"),
    (["--port", "99999"], "--port"),
    (["--port", "x"], "--port"),
    (["--threads", "0"], "--threads"),
    (["--max-body-bytes", "0"], "--max-body-bytes"),
    (["--shutdown-timeout", "-1"], "--shutdown-timeout"),
    (["--shutdown-timeout", "nan"], "--shutdown-timeout"),
]


@pytest.mark.parametrize("argv,flag", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_naming_it(capsys, argv, flag):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and flag in err, err
