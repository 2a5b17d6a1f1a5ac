"""The chat template: messages -> text (and tokens with an assistant-only loss mask).

ChatML-style, the format Qwen and many others use::

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    Write a function that adds two numbers.<|im_end|>
    <|im_start|>assistant
    def add(a, b):
        return a + b<|im_end|>

* ``render_chat(messages, add_generation_prompt=True)`` -> the text; with the generation prompt the
  text ends with ``<|im_start|>assistant\\n`` so the model writes the assistant's turn next.
* ``END_OF_TURN`` (``<|im_end|>``) is the stop string: a server or ``generate()`` stops there.
* ``validate_messages(obj)`` checks a request / a JSONL line and raises ``ValueError`` whose message
  starts with the field path (``messages[1].role: ...``).
* ``encode_chat(messages, tokenizer)`` -> ``(ids, assistant_mask)``: the same text as token ids, and
  for each token whether it belongs to an assistant's answer (its content and the ``<|im_end|>`` that
  closes it: the model must learn to stop). SFT trains on those tokens only (labels -100 elsewhere).

With the byte tokenizer the markers are plain bytes (``<|im_start|>`` is 12 tokens); a BPE tokenizer
trained by ``course_lib.tokenizers`` has them as single special tokens. Either way ``encode_chat``
encodes each piece separately and concatenates, so the mask boundaries are exact; the ids equal
``tokenizer.encode(render_chat(...))`` for both tokenizers (the BPE pre-tokenizer isolates ``\n``, so
no merge crosses a template boundary; tested), so a server may encode either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TURN = IM_END
SPECIAL_TOKENS = (IM_START, IM_END)
ROLES = ("system", "user", "assistant")
# The same template in Jinja, for ``tokenizer_config.json`` (HF ``apply_chat_template``); tested equal.
CHAT_TEMPLATE_JINJA = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def validate_messages(obj: Any) -> list[dict]:
    """Return ``obj`` as a list of ``{"role", "content"}`` dicts, or raise ``ValueError``.

    The message starts with the field path: ``messages: ...``, ``messages[1].role: ...``,
    ``messages[0].content: ...``. Extra keys in a message (``name``...) are dropped.
    """
    if not isinstance(obj, list):
        raise ValueError(f"messages: expected a list of {{role, content}} objects, got {type(obj).__name__}")
    if not obj:
        raise ValueError("messages: empty list; give at least one message")
    out = []
    for i, m in enumerate(obj):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ValueError(f"{where}: expected an object with role and content, got {type(m).__name__}")
        if "role" not in m:
            raise ValueError(f"{where}.role: missing; one of {', '.join(ROLES)}")
        role = m["role"]
        if role not in ROLES:
            raise ValueError(f"{where}.role: {role!r} is not supported; one of {', '.join(ROLES)}")
        if "content" not in m:
            raise ValueError(f"{where}.content: missing; give the message text as a string")
        content = m["content"]
        if not isinstance(content, str):
            raise ValueError(f"{where}.content: expected a string, got {type(content).__name__}")
        for tok in SPECIAL_TOKENS:
            if tok in content:
                raise ValueError(f"{where}.content: contains the template marker {tok}; remove it")
        out.append({"role": role, "content": content})
    return out


def messages_from_record(rec: Any, where: str = "record") -> list[dict]:
    """A JSONL record -> messages: ``{"messages": [...]}`` or ``{"prompt": ..., "response": ...}``
    (optionally ``"system"``). Errors name ``where`` (e.g. ``data.jsonl:12``) and the field."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object with 'messages' or 'prompt'/'response'")
    if "messages" in rec:
        try:
            msgs = validate_messages(rec["messages"])
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    elif "prompt" in rec and "response" in rec:
        for key in ("prompt", "response", "system"):
            if key in rec and not isinstance(rec[key], str):
                raise ValueError(f"{where}: {key}: expected a string, got {type(rec[key]).__name__}")
        msgs = ([{"role": "system", "content": rec["system"]}] if rec.get("system") else []) + [
            {"role": "user", "content": rec["prompt"]},
            {"role": "assistant", "content": rec["response"]},
        ]
        try:
            msgs = validate_messages(msgs)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    else:
        raise ValueError(f"{where}: needs 'messages' (a list of {{role, content}}) or 'prompt' and 'response'")
    if not any(m["role"] == "assistant" for m in msgs):
        raise ValueError(f"{where}: messages: no assistant message, so nothing to train on; add one")
    return msgs


def _pieces(messages: Sequence[dict], add_generation_prompt: bool) -> list[tuple[str, bool]]:
    """The rendered text as (piece, trained) pairs; ``trained`` marks assistant content + IM_END."""
    pieces: list[tuple[str, bool]] = []
    for m in messages:
        trained = m["role"] == "assistant"
        pieces.append((f"{IM_START}{m['role']}\n", False))
        if m["content"]:
            pieces.append((m["content"], trained))
        pieces.append((IM_END, trained))
        pieces.append(("\n", False))
    if add_generation_prompt:
        pieces.append((f"{IM_START}assistant\n", False))
    return pieces


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """Messages -> the ChatML text (``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message), ending
    with ``<|im_start|>assistant\\n`` when ``add_generation_prompt`` (for generation; not for training)."""
    return "".join(p for p, _ in _pieces(messages, add_generation_prompt))


def encode_chat(
    messages: Sequence[dict], tokenizer, add_generation_prompt: bool = False
) -> tuple[list[int], list[bool]]:
    """Messages -> ``(ids, assistant_mask)`` with ``len(ids) == len(assistant_mask)``.

    ``assistant_mask[i]`` is True for the tokens of an assistant's content and its closing ``<|im_end|>``.
    Each piece is encoded on its own (a BPE merge never crosses a role boundary), so the mask is exact.
    """
    ids: list[int] = []
    mask: list[bool] = []
    for text, trained in _pieces(messages, add_generation_prompt):
        t = tokenizer.encode(text)
        ids.extend(t)
        mask.extend([trained] * len(t))
    return ids, mask


def end_of_turn_id(tokenizer) -> int | None:
    """The token id of ``<|im_end|>`` when the tokenizer has it as one token (a BPE from
    ``course_lib.tokenizer``: stop generation on this id), else None (bytes: stop on the string
    ``END_OF_TURN``; the course's SFT data also ends every conversation with ``<eos>``)."""
    ids = tokenizer.encode(IM_END)
    return ids[0] if len(ids) == 1 else None
