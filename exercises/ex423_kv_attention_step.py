"""练习 ex423：带 KV 缓存 (KV cache) 的一步注意力。

在 notebook 里运行 `from course_lib.grading import check; check("4.2.3")` 检查你的实现。
"""
from torch import Tensor


def attend_with_cache(q: Tensor, k_new: Tensor, v_new: Tensor, k_cache: Tensor, v_cache: Tensor):
    """解码 (decode) 阶段的一步：新 token 的查询 (query) 关注缓存里的全部旧 token 和它自己。

    输入（B = batch，H = 头数，T = 已缓存的 token 数，可以为 0，D = head_dim）：
    - `q`, `k_new`, `v_new`：形状 (B, H, 1, D)，新 token 的 query/key/value；
    - `k_cache`, `v_cache`：形状 (B, H, T, D)，之前所有 token 的 key/value。

    任务：
    1. 把 `k_new`/`v_new` 沿序列维 (dim=2) 接到缓存后面，得到长度 T+1 的新缓存；
    2. 计算 softmax(q @ k^T / sqrt(D)) @ v（新 token 可以看到全部 T+1 个位置，不需要因果掩码）。

    返回 `(out, k_cache_new, v_cache_new)`：`out` 形状 (B, H, 1, D)；两个新缓存形状 (B, H, T+1, D)。
    结果应与对整段序列做因果注意力 (causal attention) 后取最后一个位置完全一致（float32 误差内）。
    不要调用 `torch.nn.functional.scaled_dot_product_attention`。
    """
    raise NotImplementedError("请实现 attend_with_cache")
