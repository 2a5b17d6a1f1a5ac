"""练习 ex422：int8 逐通道对称量化 (per-channel symmetric quantization)。

在 notebook 里运行 `from course_lib.grading import check; check("4.2.2")` 检查你的实现。
"""
from torch import Tensor


def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """把线性层权重 `w`（形状 (out, in)，float32）量化为 int8。

    每个输出通道（每一行）一个缩放因子 (scale)：`scale = max(|w[row]|) / 127`；
    `q = round(w / scale)`，截断到 [-127, 127]，dtype 为 torch.int8。
    返回 `(q, scale)`：`q` 形状 (out, in)、dtype int8；`scale` 形状 (out,)、dtype float32。
    全零的行：scale 不得为 0（用一个很小的下限，例如 1e-12），以免除以 0。
    """
    raise NotImplementedError("请实现 quantize_int8")


def dequantize_int8(q: Tensor, scale: Tensor) -> Tensor:
    """反量化 (dequantize)：返回 float32 张量 `q * scale`（scale 按行广播），形状 (out, in)。"""
    raise NotImplementedError("请实现 dequantize_int8")
