"""练习 ex424：批量生成的左填充 (left padding)、注意力掩码 (attention mask) 与位置编号 (position ids)。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.2.4")` 检查你的实现；
卡住时 `from course_lib.lab.hints import hint; hint("ex424_left_pad")`，每调用一次多给一层提示。
"""

from torch import Tensor


def left_pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """把长度不同的 token 列表拼成一个批次 (batch)，在左边填充。

    返回 `(input_ids, attention_mask, position_ids)`，三个都是形状 (B, T_max)、dtype torch.long：
    - `input_ids`：每行右对齐，左边用 `pad_id` 填满；
    - `attention_mask`：真实 token 为 1，填充为 0；
    - `position_ids`：只在真实 token 上计数，每行第一个真实 token 的位置是 0，之后 1, 2, ...；
      填充位置的 position 设为 0（它们会被掩码遮住，值不影响结果）。
    这样每个序列的位置编号与它单独生成时一样，批量结果才能等于逐个生成。
    空列表（没有 token 的序列）应抛出 `ValueError`。

    例子：seqs=[[5, 6, 7], [9]]，pad_id=0 →
    input_ids=[[5, 6, 7], [0, 0, 9]]，attention_mask=[[1, 1, 1], [0, 0, 1]]，
    position_ids=[[0, 1, 2], [0, 0, 0]]。
    """
    raise NotImplementedError("请实现 left_pad_batch")
