"""练习 ex424（进阶）：批量贪心生成 (batched greedy generation)。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.2.4")` 检查；卡住时
`from course_lib.lab.hints import hint; hint("ex424_batched_generate")`，每调用一次多给一层提示。
"""

import torch


@torch.no_grad()
def batched_greedy(
    model, prompts: list[list[int]], max_new_tokens: int, pad_id: int, eos_id: int | None = None
) -> list[list[int]]:
    """一次前向处理整批提示 (prompts)，用贪心解码 (greedy: 每步取 argmax) 为每个提示生成新 token。

    输入：
    - `model`：course_lib 的 `DIYModel`（已在 eval 模式）。`model(input_ids, attention_mask=...,
      position_ids=..., past_key_values=..., use_cache=...)` 返回的对象有 `.logits`
      (B, T, vocab) 和 `.past_key_values`；`attention_mask` 要覆盖 过去 + 这次 的全部 token。
    - `prompts`：B 个长度可以不同的 token 列表；`pad_id`：填充用的 token；
    - `eos_id`：结束符；为 None 时总是生成满 `max_new_tokens` 个。

    输出：长度 B 的 list，第 i 项是第 i 个提示 **新生成** 的 token（不含提示本身）。

    约定 (contract)：
    - 结果必须与把每个提示 **单独** 生成（没有填充）时逐 token 相同：填充不能改变任何一行的结果，
      `pad_id` 取什么值也不影响结果；
    - 某一行生成了 `eos_id` 后，这一行到此为止（列表以 eos_id 结尾），其他行继续；
      所有行都结束时提前停止；
    - 任何提示为空时抛出 `ValueError`。

    例子：prompts=[[5, 6, 7], [9]]，max_new_tokens=3，eos_id=None →
    返回 [[a1, a2, a3], [b1, b2, b3]]，其中 [a1, a2, a3] 与只生成 [5, 6, 7] 时得到的完全一样。
    """
    raise NotImplementedError("请实现 batched_greedy")
