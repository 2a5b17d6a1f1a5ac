"""练习 ex421：保存与加载推理用文件（仅权重 + 配置）——参考答案。"""

import json
from pathlib import Path

from course_lib.config import ModelConfig
from course_lib.model import DIYModel


def save_artifact(model: DIYModel, out_dir) -> None:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    tensors = {
        k: v.detach().cpu().contiguous().clone()
        for k, v in sd.items()
        if not (k == "lm_head.weight" and model.config.tie_embeddings)
    }
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"model": model.config.to_dict()}, indent=2))


def load_artifact(out_dir) -> DIYModel:
    from safetensors.torch import load_file

    out = Path(out_dir)
    meta = json.loads((out / "config.json").read_text())
    model = DIYModel(ModelConfig.from_dict(meta["model"]))
    tensors = load_file(str(out / "model.safetensors"))
    expected = {
        k: v.shape for k, v in model.state_dict().items() if not (k == "lm_head.weight" and model.config.tie_embeddings)
    }
    bad = [k for k in expected if k not in tensors or tensors[k].shape != expected[k]]
    bad += [k for k in tensors if k not in expected]
    if bad:
        raise ValueError(f"weights do not match the config: {bad}")
    model.load_state_dict(tensors, strict=False)
    return model.eval()
