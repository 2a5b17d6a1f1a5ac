"""练习 ex417：SFT 的损失掩码 (loss mask) + 打包 (packing) 整理函数 (collator)。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.1.7")` 检查你的实现；卡住时
`from course_lib.lab.hints import hint; hint("ex417_sft_collator")`，每调用一次多给一层提示。
评分器拿 `course_lib.sft` 的真实实现做对照 (oracle)：`encode_example` + `pack_examples`，位置编号用
`course_lib.model.document_positions`；再把你的四个张量喂进真实的 `DIYModel`
（`model(input_ids, position_ids=..., document_ids=...)`），要求每条对话的 loss 和梯度都与
「一条对话一行、右侧 padding」时相同。
"""

from collections.abc import Sequence

import torch  # noqa: F401
from torch import Tensor

IGNORE = -100  # 不计入 loss 的标签 (label)


def collate_packed(
    conversations: Sequence[tuple[Sequence[int], Sequence[bool]]], seq_len: int, pad_id: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """把若干条已分词的对话打包成 `(input_ids, labels, position_ids, document_ids)`，四个都是
    `(行数, seq_len)` 的 `torch.int64` 张量。

    输入：每条对话是 `(ids, assistant_mask)`，等长：`ids` 是整条对话套上聊天模板 (chat template) 后的
    token（末尾已经有 `<eos>`），`assistant_mask[i]` 为 True 表示第 i 个 token 属于助手 (assistant) 的回答
    （回答内容、结束它的 `<|im_end|>` 和最后的 `<eos>`）；system / user 的内容和模板标记都是 False。

    1. 错一位 (shift)：一条 n 个 token 的对话给出 n-1 个输入 `ids[:-1]`，第 t 个输入的标签是**下一个**
       token `ids[t+1]`——只有当这个下一个 token 属于助手时才保留，否则是 -100（掩码看的是标签那个 token）。
    2. 按顺序贪心打包：当前行放得下（已用长度 + n-1 <= seq_len）就接在后面，放不下就开新的一行；
       n-1 > seq_len 的对话放不进任何一行，抛出 `ValueError`（信息里写明是第几条、多长）。
    3. 每行里的对话依次编号 `document_ids` = 0, 1, 2, ...；行尾的 padding 算作再下一个编号的文档，
       `input_ids` 填 `pad_id`，`labels` 填 -100。模型只在同一个 document_id 的连续片段内做注意力。
    4. `position_ids` 在每个文档（包括行尾的 padding）的开头从 0 重新数起。

    例子（seq_len=6，pad_id=0）：对话 A = `([5, 6, 7], [F, F, T])`，B = `([8, 9], [F, T])`：
        input_ids    = [[5, 6, 8, 0, 0, 0]]
        labels       = [[-100, 7, 9, -100, -100, -100]]
        position_ids = [[0, 1, 0, 0, 1, 2]]
        document_ids = [[0, 0, 1, 2, 2, 2]]
    """
    raise NotImplementedError("请实现 collate_packed")
