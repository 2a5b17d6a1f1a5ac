"""Grader for ex421: weights-only artefact round trip (oracle: the original model's logits)."""

import json

import pytest
import torch

from course_lib.config import ModelConfig
from course_lib.model import DIYModel

EX = "ex421_inference_artifact"


def _model(seed=0):
    torch.manual_seed(seed)
    return DIYModel(ModelConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=32)).eval()


def test_files_written(impl, tmp_path):
    impl(EX).save_artifact(_model(), tmp_path / "art")
    assert (tmp_path / "art" / "model.safetensors").exists(), "应写出 model.safetensors"
    meta = json.loads((tmp_path / "art" / "config.json").read_text())
    assert meta.get("model") == _model().config.to_dict(), (
        f"config.json 的 'model' 应为 model.config.to_dict()，实际 {meta.get('model')}"
    )
    from safetensors.torch import load_file

    names = set(load_file(str(tmp_path / "art" / "model.safetensors")))
    assert "embed_tokens.weight" in names, "缺少 embed_tokens.weight"
    assert "lm_head.weight" not in names, "共享权重 (tied weights) 只应保存一次：不要保存 lm_head.weight"


def test_round_trip_same_logits_and_tie(impl, tmp_path):
    m = _model(1)
    mod = impl(EX)
    mod.save_artifact(m, tmp_path)
    m2 = mod.load_artifact(tmp_path)
    assert isinstance(m2, DIYModel), f"load_artifact 应返回 DIYModel，实际 {type(m2).__name__}"
    assert not m2.training, "返回的模型应处于 eval 模式"
    assert m2.lm_head.weight is m2.embed_tokens.weight, "加载后 lm_head.weight 应仍与 embed_tokens.weight 共享"
    ids = torch.randint(0, 258, (2, 12))
    with torch.no_grad():
        diff = (m(ids).logits - m2(ids).logits).abs().max().item()
    # exact copy of fp32 tensors -> identical logits
    assert diff == 0.0, f"加载后 logits 应与原模型完全相同，最大差 {diff:.3g}"


def test_mismatch_raises(impl, tmp_path):
    mod = impl(EX)
    mod.save_artifact(_model(), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model"]["d_model"] = 64
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as e:
        mod.load_artifact(tmp_path)
    assert "embed_tokens.weight" in str(e.value), f"错误信息应写出不匹配的张量名，实际：{e.value}"
