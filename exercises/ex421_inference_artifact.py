"""练习 ex421：保存与加载推理用文件（仅权重 + 配置）。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.2.1")` 检查你的实现；
卡住时 `from course_lib.lab.hints import hint; hint("ex421_inference_artifact")`，每调用一次多给一层提示。
"""

from course_lib.model import DIYModel


def save_artifact(model: DIYModel, out_dir) -> None:
    """把模型保存为推理产物 (inference artefact)：`out_dir/model.safetensors` + `out_dir/config.json`。

    约定 (contract)：
    - `config.json` 是一个 JSON 对象，至少含键 `"model"`，值为 `model.config.to_dict()`；
    - `model.safetensors` 是 safetensors 格式的权重，不用 pickle；共享权重 (tied weights) 只存一份：
      `lm_head.weight` 与 `embed_tokens.weight` 是同一个张量时，文件里只有 `embed_tokens.weight`；
    - 不保存优化器状态、RNG 等训练状态；`out_dir` 不存在时要创建它。

    例子：`save_artifact(model, "art")` → 写出 art/model.safetensors 和 art/config.json；
    `load_artifact("art")` 得到的模型对同一输入给出逐位相同的 logits。
    """
    raise NotImplementedError("请实现 save_artifact")


def load_artifact(out_dir) -> DIYModel:
    """从 `save_artifact` 写出的文件夹重建模型并返回。

    约定 (contract)：返回处于 eval 模式的 `DIYModel`，结构由 config.json 决定；`lm_head.weight` 必须仍与
    `embed_tokens.weight` 是同一个张量；权重的名字或形状与配置不符时抛出 `ValueError`，
    信息里写出不匹配的张量名。
    """
    raise NotImplementedError("请实现 load_artifact")
