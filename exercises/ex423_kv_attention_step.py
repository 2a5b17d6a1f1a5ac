"""练习 ex423：带 KV 缓存 (KV cache) 的一步注意力。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.2.3")` 检查你的实现；
卡住时 `from course_lib.lab.hints import hint; hint("ex423_kv_attention_step")`，每调用一次多给一层提示。
"""

from torch import Tensor


def attend_with_cache(q: Tensor, k_new: Tensor, v_new: Tensor, k_cache: Tensor, v_cache: Tensor):
    """解码 (decode) 阶段的一步：新 token 的查询 (query) 关注缓存里的全部旧 token 和它自己。

    输入（B = batch，H = 头数，T = 已缓存的 token 数，可以为 0，D = head_dim）：
    - `q`, `k_new`, `v_new`：形状 (B, H, 1, D)，新 token 的 query/key/value；
    - `k_cache`, `v_cache`：形状 (B, H, T, D)，之前所有 token 的 key/value（按时间顺序）。

    输出 `(out, k_cache_new, v_cache_new)`：
    - `out` 形状 (B, H, 1, D)，等于对整段 T+1 个 token 做缩放点积因果注意力 (scaled dot-product
      causal attention) 后最后一个位置的输出（float32 误差内）；
    - 两个新缓存形状 (B, H, T+1, D)：旧的在前，新 token 在最后。
    不要调用 `torch.nn.functional.scaled_dot_product_attention`。

    例子：B=1, H=2, D=4, T=3 → out (1, 2, 1, 4)，新缓存 (1, 2, 4, 4)，且 `k_cache_new[:, :, :3]`
    就是原来的 `k_cache`。
    """
    raise NotImplementedError("请实现 attend_with_cache")
