"""练习 ex00：RMSNorm（热身练习，用来熟悉练习与自检的流程）。

在 notebook 里运行 `from course_lib.grading import check; check("00")` 检查你的实现；
也可以在终端运行 `python -m course_lib.grading 00`。
"""
from torch import Tensor


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """实现 RMSNorm（Root Mean Square Layer Normalization，均方根归一化）。

    任务：沿最后一个维度做归一化，再乘以可学习的缩放向量 `weight`：

        y = x / sqrt(mean(x**2, dim=-1, keepdim=True) + eps) * weight

    约定 (contract)：
    - `x`：形状 (..., d)，dtype 可以是 float32、bfloat16 或 float16。
    - `weight`：形状 (d,)。
    - `eps`：加在均方值上的小常数，防止除以 0。
    - 计算要在 float32 中进行（先把 x 转成 float32），归一化之后再转回 `x` 原来的 dtype，
      然后乘以 `weight`；返回值的形状和 dtype 与 `x` 相同。
    - 不得原地修改 (in-place) `x`。
    - 结果应与 `torch.nn.functional.rms_norm(x, (d,), weight, eps)` 一致（但不要直接调用它）。
    """
    raise NotImplementedError("请实现 rms_norm")
