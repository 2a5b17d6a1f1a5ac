"""Grader for ex424: left padding + mask + positions (oracle: course_lib left_pad/position_ids_from_mask,
and the model: a padded batch must give the same logits as each sequence alone)."""

import pytest
import torch

from course_lib.config import ModelConfig
from course_lib.generate import left_pad
from course_lib.model import DIYModel, position_ids_from_mask

EX = "ex424_left_pad"
SEQS = [[5, 6, 7], [1, 2, 3, 4, 5, 6], [9]]


def test_matches_reference(impl):
    ids, mask, pos = impl(EX).left_pad_batch(SEQS, 256)
    rids, rmask = left_pad(SEQS, 256)
    for name, got, want in (
        ("input_ids", ids, rids),
        ("attention_mask", mask, rmask),
        ("position_ids", pos, position_ids_from_mask(rmask, rmask.shape[1])),
    ):
        assert got.dtype == torch.long, f"{name} 的 dtype 应为 torch.long，实际 {got.dtype}"
        assert torch.equal(got, want), f"{name} 不对：\n期望 {want.tolist()}\n实际 {got.tolist()}"


def test_model_batch_equals_alone(impl):
    torch.manual_seed(0)
    m = DIYModel(ModelConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=32)).eval()
    ids, mask, pos = impl(EX).left_pad_batch(SEQS, 256)
    with torch.no_grad():
        batch = m(ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        for i, s in enumerate(SEQS):
            alone = m(torch.tensor([s])).logits[:, -1]
            err = (batch[i] - alone[0]).abs().max().item()
            # fp32, different padding -> different summation order only
            assert err < 1e-5, f"第 {i} 行批量结果与单独计算不一致：最大误差 {err:.3g}（检查左填充与位置编号）"


def test_empty_sequence_rejected(impl):
    with pytest.raises(ValueError):
        impl(EX).left_pad_batch([[1, 2], []], 0)
