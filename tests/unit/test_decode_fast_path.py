"""generate()'s unpadded fast path (no mask handed to DIYModel) gives the same tokens as the masked path."""

import torch

from course_lib.config import ModelConfig
from course_lib.generate import generate
from course_lib.model import DIYModel


def test_no_mask_path_gives_the_same_tokens():
    torch.manual_seed(0)
    m = DIYModel(ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=64)).eval()
    ids = torch.randint(0, 256, (3, 7), generator=torch.Generator().manual_seed(1))
    ones = torch.ones_like(ids)
    for kw in ({}, {"eos_id": int(generate(m, ids, 3)[0, 1])}, {"temperature": 0.0, "cache": "static"}):
        fast = generate(m, ids, 12, **kw)
        masked = generate(m, ids, 12, attention_mask=ones, **kw)
        assert torch.equal(fast, masked), kw
