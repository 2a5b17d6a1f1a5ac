"""Batched generation: left padding + mask + positions == each prompt alone; EOS; streaming."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from course_lib.data import ByteTokenizer
from course_lib.generate import generate, left_pad, stream_generate
from course_lib.kv_cache import Cache


def _trained():
    from course_lib.pretrained import load_reference_model

    return load_reference_model()


PROMPTS = ["def ", "class Foo(object):\n    def __init__(self", "import", "    for i in range(len(x)):\n        "]


def test_batched_greedy_equals_each_prompt_alone():
    model, tok = _trained()
    ids, mask = left_pad([tok.encode(p) for p in PROMPTS], tok.pad_id)
    for cache in ("dynamic", "static", "paged"):
        batch = generate(model, ids, 30, attention_mask=mask, cache=cache, eos_id=tok.eos_id, pad_id=tok.pad_id)
        for i, p in enumerate(PROMPTS):
            alone = generate(model, torch.tensor([tok.encode(p)]), 30, eos_id=tok.eos_id, pad_id=tok.pad_id)
            n = alone.shape[1]
            assert batch[i, :n].tolist() == alone[0].tolist(), f"row {i} ({p!r}) differs with {cache} cache"


class _RowCache(Cache):
    """Records which original rows are still in the batch (generate must call reorder)."""

    def __init__(self, n, prompt_len):
        self.row, self.prompt_len = torch.arange(n), prompt_len

    def update(self, layer_idx, k, v):
        return k, v

    def get_seq_length(self, layer_idx=0):
        return 0

    def nbytes(self):
        return 0

    def reorder(self, index):
        self.row = self.row[index]


class _Scripted(nn.Module):
    """Row r emits token 1 until step r, then EOS (=9): rows finish at different steps."""

    config = SimpleNamespace(max_seq_len=64)

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.batch_sizes = []

    def forward(self, ids, attention_mask=None, past_key_values=None, use_cache=False):
        self.batch_sizes.append(ids.shape[0])
        L = attention_mask.shape[1]
        logits = torch.zeros(ids.shape[0], ids.shape[1], 10)
        for r in range(ids.shape[0]):
            row_id = int(past_key_values.row[r])
            step = L - past_key_values.prompt_len
            logits[r, -1, 9 if step >= row_id else 1] = 1
        return SimpleNamespace(logits=logits, past_key_values=past_key_values)


def test_finished_rows_get_padding_and_leave_the_batch():
    m = _Scripted()
    out = generate(m, torch.zeros(3, 2, dtype=torch.long), 6, cache=_RowCache(3, 2), eos_id=9, pad_id=0)
    assert out.tolist() == [[9, 0, 0], [1, 9, 0], [1, 1, 9]]
    assert m.batch_sizes == [3, 2, 1], f"finished rows should leave the batch, saw batch sizes {m.batch_sizes}"


def test_generate_refuses_an_object_that_is_not_a_cache():
    with pytest.raises(TypeError, match="Cache"):
        generate(_Scripted(), torch.zeros(1, 2, dtype=torch.long), 2, cache=object())


def test_generate_checks_the_length_once_before_decoding():
    m = _Scripted()
    with pytest.raises(ValueError, match="max_seq_len=64"):
        generate(m, torch.zeros(1, 60, dtype=torch.long), 10, cache=_RowCache(1, 60), eos_id=9)
    assert m.batch_sizes == [], "the length check must happen before any forward"
    # left padding does not count: 60 columns but only 50 real tokens leave room for 10 more
    mask = torch.cat([torch.zeros(1, 10, dtype=torch.long), torch.ones(1, 50, dtype=torch.long)], 1)
    generate(m, torch.zeros(1, 60, dtype=torch.long), 10, attention_mask=mask, cache=_RowCache(1, 60), eos_id=9)


def test_streaming_yields_pieces_that_join_to_the_generated_text():
    model, tok = _trained()
    prompt = "def main():\n    "
    pieces = list(stream_generate(model, tok, prompt, 40))
    assert len(pieces) > 1
    want = tok.decode(
        generate(model, torch.tensor([tok.encode(prompt)]), 40, eos_id=tok.eos_id, pad_id=tok.pad_id)[0].tolist()
    )
    assert "".join(pieces) == want


class _ByteScript(nn.Module):
    """Emits the bytes of ``text`` one token per step, then EOS (byte-level tokenizer ids)."""

    def __init__(self, text, eos_id):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.script = list(text.encode()) + [eos_id]
        self.calls = 0

    def forward(self, ids, attention_mask=None, past_key_values=None, use_cache=False):
        logits = torch.zeros(ids.shape[0], ids.shape[1], 258)
        logits[:, -1, self.script[min(self.calls, len(self.script) - 1)]] = 1
        self.calls += 1
        return SimpleNamespace(logits=logits, past_key_values=past_key_values)


def test_streaming_holds_back_incomplete_utf8():
    tok = ByteTokenizer()
    text = "中a文"  # 3 bytes, 1 byte, 3 bytes: the Chinese characters arrive as partial bytes
    pieces = list(stream_generate(_ByteScript(text, tok.eos_id), tok, "x", 20))
    assert pieces == ["中", "a", "文"], f"each piece must be a whole character, got {pieces}"
    assert "\ufffd" not in "".join(pieces)


class _HostSyncs(TorchDispatchMode):
    """Records the ops that make the host wait for the device (on a GPU): reading a value back
    (``.item()`` / ``int(t)`` / ``bool(t)``), ``nonzero`` and ``equal``. On the CPU they cost
    nothing, but they are the same calls, so the count holds for a GPU run too."""

    SYNC = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default, torch.ops.aten.equal.default}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.SYNC:
            self.calls.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("cache", ["dynamic", "static", "int8", "paged"])
def test_decode_loop_does_not_wait_on_the_device(cache):
    model, tok = _trained()
    ids, mask = left_pad([tok.encode(p) for p in PROMPTS[:2]], tok.pad_id)
    n = 8
    free = _HostSyncs()
    with free:
        generate(model, ids, n, attention_mask=mask, cache=cache)
    assert free.calls == [], f"without eos_id nothing may sync (e.g. int(position_ids.max()) per forward): {free.calls}"
    eos = _HostSyncs()
    with eos:
        out = generate(model, ids, n, attention_mask=mask, cache=cache, eos_id=tok.eos_id, pad_id=tok.pad_id)
    # with eos_id: one read per token (the stop check), plus a nonzero on a step where a row finished
    finished_steps = int((out == tok.eos_id).any(0).sum())
    assert eos.calls.count("_local_scalar_dense") == out.shape[1], eos.calls
    assert eos.calls.count("nonzero") <= finished_steps, eos.calls
