"""练习 ex421：保存与加载推理用文件（仅权重 + 配置）。

在 notebook 里运行 `from course_lib.grading import check; check("4.2.1")` 检查你的实现。
"""


from course_lib.model import DIYModel


def save_artifact(model: DIYModel, out_dir) -> None:
    """把模型保存为推理产物 (inference artefact)：`out_dir/model.safetensors` + `out_dir/config.json`。

    约定 (contract)：
    - `config.json` 是一个 JSON 对象，至少含键 `"model"`，值为 `model.config.to_dict()`。
    - `model.safetensors` 用 `safetensors.torch.save_file` 写入 `model.state_dict()` 的张量；
      注意权重共享 (tied weights)：`lm_head.weight` 与 `embed_tokens.weight` 是同一个张量，
      safetensors 拒绝保存共享内存的张量，所以只保存一次（去掉 `lm_head.weight`），
      加载时由按配置构建的模型重新绑定。
    - 不保存优化器状态、RNG 等训练状态；不使用 pickle（不要用 torch.save）。
    - `out_dir` 不存在时要创建它。
    """
    raise NotImplementedError("请实现 save_artifact")


def load_artifact(out_dir) -> DIYModel:
    """从 `save_artifact` 写出的文件夹加载模型：先读 `config.json` 用 `ModelConfig.from_dict`
    构建 `DIYModel`，再用 `safetensors.torch.load_file` 读权重并载入。

    约定：返回处于 eval 模式的模型；`lm_head.weight` 必须仍与 `embed_tokens.weight` 是同一个张量；
    权重的名字或形状与配置不符时抛出 `ValueError`，信息里写出不匹配的张量名。
    """
    raise NotImplementedError("请实现 load_artifact")
