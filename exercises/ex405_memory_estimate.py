"""练习 ex405：估算训练时的「静态」显存/内存 (static memory)：参数、梯度、优化器状态。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.0.5")` 检查你的实现；
卡住时 `from course_lib.lab.hints import hint; hint("ex405_memory_estimate")`，每调用一次多给一层提示。
"""

import torch


def static_training_bytes(model: torch.nn.Module, optimizer: str = "adamw") -> dict:
    """返回训练 `model` 时参数、梯度和优化器状态各占多少字节 (bytes)。

    约定 (contract)：
    - 返回 dict：`{"params": int, "grads": int, "optimizer_state": int, "total": int}`；
    - params：所有参数占的字节数；**共享的参数只算一次**（例如绑定的 embedding 和 lm_head，
      tied embeddings）；
    - grads：只有 `requires_grad=True` 的参数才有梯度，梯度与参数同 dtype、同大小；
    - optimizer_state：优化器只为 `requires_grad=True` 的参数存状态："adamw" 每个参数两个同大小的
      状态，"sgd_momentum" 一个，"sgd" 零个（忽略 Adam 每个参数那个 0 维的 step 计数器）；
    - total = 三者之和。

    例子：`nn.Linear(10, 10)`（float32，110 个参数），"adamw" →
    `{"params": 440, "grads": 440, "optimizer_state": 880, "total": 1760}`。
    """
    raise NotImplementedError("请实现 static_training_bytes")
