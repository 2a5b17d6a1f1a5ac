"""练习 ex404：NaN 守卫 (NaN guard)。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.0.4")` 检查你的实现；
卡住时 `from course_lib.lab.hints import hint; hint("ex404_nan_guard")`，每调用一次多给一层提示。
"""

from collections.abc import Iterable

import torch


class NonFiniteError(FloatingPointError):
    """loss 或梯度出现 NaN/Inf。"""


def guard_step(step: int, loss: torch.Tensor, parameters: Iterable[torch.nn.Parameter]) -> float:
    """在 `backward()` 之后、`optimizer.step()` 之前调用：检查这一步是否还是有限值 (finite)。

    约定 (contract)：
    - 输入：步数 `step`、这一步的 `loss`、模型参数（可能是生成器）；
    - loss 和所有梯度都有限时：返回全局梯度范数 (global grad-norm，所有 `p.grad` 拼成一个向量的
      L2 范数，Python float)，没有梯度的参数跳过；
    - loss 或任何梯度含 NaN / ±Inf 时：抛出 `NonFiniteError`，信息里写出出问题的步数
      （形如 `step 17`）和可能的原因，至少提到学习率过大（写「学习率」或 "learning rate" 都可以）；
    - 不得修改参数或梯度。

    例子：`guard_step(17, loss, model.parameters())`，某个梯度是 NaN →
    `NonFiniteError("step 17 出现 NaN/Inf：可能是学习率太大、……")`。
    """
    raise NotImplementedError("请实现 guard_step")
