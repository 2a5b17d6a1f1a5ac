"""Batched generation: left padding + mask + positions == each prompt alone; EOS; streaming."""
import torch

from course_lib.generate import generate, left_pad, stream_generate


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


def test_finished_rows_get_padding_and_leave_the_batch():
    import torch.nn as nn

    class Scripted(nn.Module):
        """Row r emits token 1 until step r, then EOS (=9): rows finish at different steps."""
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))
            self.batch_sizes = []

        def forward(self, ids, attention_mask=None, past_key_values=None, use_cache=False):
            from types import SimpleNamespace
            self.batch_sizes.append(ids.shape[0])
            L = attention_mask.shape[1]
            logits = torch.zeros(ids.shape[0], ids.shape[1], 10)
            for r in range(ids.shape[0]):
                row_id = int(past_key_values.row[r])
                step = L - past_key_values.prompt_len
                logits[r, -1, 9 if step >= row_id else 1] = 1
            return SimpleNamespace(logits=logits, past_key_values=past_key_values)

    class RowCache:
        def __init__(self, n, prompt_len):
            self.row, self.prompt_len = torch.arange(n), prompt_len

        def reorder(self, index):
            self.row = self.row[index]

    m = Scripted()
    out = generate(m, torch.zeros(3, 2, dtype=torch.long), 6, cache=RowCache(3, 2), eos_id=9, pad_id=0)
    assert out.tolist() == [[9, 0, 0], [1, 9, 0], [1, 1, 9]]
    assert m.batch_sizes == [3, 2, 1], f"finished rows should leave the batch, saw batch sizes {m.batch_sizes}"


def test_streaming_yields_pieces_that_join_to_the_generated_text():
    model, tok = _trained()
    prompt = "def main():\n    "
    pieces = list(stream_generate(model, tok, prompt, 40))
    assert len(pieces) > 1
    want = tok.decode(generate(model, torch.tensor([tok.encode(prompt)]), 40, eos_id=tok.eos_id, pad_id=tok.pad_id)[0]
                      .tolist())
    assert "".join(pieces) == want


def test_streaming_holds_back_incomplete_utf8():
    import codecs
    dec = codecs.getincrementaldecoder("utf-8")()
    b = "中".encode()
    assert [dec.decode(bytes([x])) for x in b] == ["", "", "中"]
