"""练习 ex00：RMSNorm（热身练习，用来熟悉练习与自检的流程）。

在 notebook 里运行 `from course_lib.lab.grading import check; check("00")` 检查你的实现；
卡住时 `from course_lib.lab.hints import hint; hint("ex00_rmsnorm")`，每调用一次多给一层提示。

也可以在终端运行 `python -m course_lib.lab.grading 00`。
"""

from torch import Tensor


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """实现 RMSNorm（Root Mean Square Layer Normalization，均方根归一化）。

    定义：沿最后一个维度，y = x / sqrt(mean(x**2) + eps) * weight。

    约定 (contract)：
    - 输入 `x` 形状 (..., d)，dtype 可以是 float32、bfloat16 或 float16；`weight` 形状 (d,)；
      `eps` 是加在均方值上的小常数。
    - 输出与 `x` 同形状、同 dtype；归一化部分要在 float32 中算（低精度下平方和会丢精度、fp16 会溢出），
      归一化之后再转回 `x` 的 dtype，然后乘以 `weight`。
    - 不得原地修改 (in-place) `x`；结果应与 `torch.nn.functional.rms_norm(x, (d,), weight, eps)`
      一致（但不要直接调用它）。

    例子：x = [[3., 4.]]，weight = [1., 2.]，eps = 0 → mean(x**2) = 12.5，sqrt = 3.5355，
    y = [[0.8485, 2.2627]]。
    """
    raise NotImplementedError("请实现 rms_norm")
