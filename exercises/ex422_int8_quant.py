"""练习 ex422：int8 逐通道对称量化 (per-channel symmetric quantization)。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.2.2")` 检查你的实现；
卡住时 `from course_lib.lab.hints import hint; hint("ex422_int8_quant")`，每调用一次多给一层提示。
"""

from torch import Tensor


def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """把线性层权重 `w`（形状 (out, in)，float32）量化为 int8，每个输出通道（每一行）一个缩放因子 (scale)。

    约定 (contract)：
    - 对称量化：每行的 scale 使该行绝对值最大的元素正好映射到 ±127；q 是 w / scale 四舍五入后
      截断到 [-127, 127] 的 int8；
    - 返回 `(q, scale)`：`q` 形状 (out, in)、dtype int8；`scale` 形状 (out,)、dtype float32；
    - 全零的行：scale 不得为 0（用一个很小的下限，例如 1e-12），以免除以 0；
    - 反量化后的误差每个元素不超过该行 scale 的一半。

    例子：w = [[2.54, -1.27]] → scale = [0.02]，q = [[127, -64]]（-63.5 四舍五入到偶数 -64）。
    """
    raise NotImplementedError("请实现 quantize_int8")


def dequantize_int8(q: Tensor, scale: Tensor) -> Tensor:
    """反量化 (dequantize)：返回 float32 张量，形状 (out, in)，第 r 行 = q[r] × scale[r]。

    例子：q = [[127, -64]]，scale = [0.02] → [[2.54, -1.28]]。
    """
    raise NotImplementedError("请实现 dequantize_int8")
