"""练习 ex406：数一数模型要多少算力和带宽：每个训练 token 的 FLOPs，每个 decode 步读的字节。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.0.6")` 检查你的实现；
卡住时 `from course_lib.lab.hints import hint; hint("ex406_roofline_counts")`，每调用一次多给一层提示。
"""

from course_lib.config import ModelConfig


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """训练时每个 token 的浮点运算次数 (FLOPs)，按 nanoGPT / PaLM 的算法：`6 N + 12 L H Q T`。

    约定 (contract)：
    - N：参数个数（`DIYModel(cfg).num_parameters()` 的算法：每层 q/k/v/o、gate/up/down 三个矩阵、
      两个 RMSNorm 的权重，最后一个 RMSNorm，加上 embedding 表 `vocab_size × d_model`；
      **embedding 表只算一次**：绑定 (tie_embeddings) 时它就是 lm_head；不绑定时 lm_head 是另一个
      矩阵，而输入 embedding 只是查表、不做乘法，不算进 N）；
    - 6N：前向每个权重 2 FLOPs（一次乘一次加），反向 4；
    - 12 L H Q T：注意力的 QKᵀ 和 AV（L 层、H = n_heads 个 query 头、Q = head_dim、T = seq_len），
      前向 + 反向，按完整的 T×T 计算（PaLM 的约定，不因因果掩码减半）；
    - 返回 int。

    例子：`ModelConfig(vocab_size=10, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=16)`，
    `seq_len=16` → N = 1272，返回 `6 * 1272 + 12 * 2 * 2 * 4 * 16 = 10704`。
    """
    raise NotImplementedError("请实现 flops_per_token")


def decode_bytes_per_step(cfg: ModelConfig, context: int, batch: int = 1, dtype_bytes: int = 4) -> int:
    """一个 decode 步（batch 行各生成一个 token）至少要从内存读多少字节。

    约定 (contract)：
    - 权重：这一步要乘的每个矩阵读一次（整个 batch 共用一次读取）：每层 q/k/v/o、gate/up/down，
      再加输出头 lm_head（`vocab_size × d_model`）；还有 `2 L + 1` 个 RMSNorm 权重向量（各 d_model）；
      不绑定时的输入 embedding 只查 batch 行，忽略不计；
    - KV cache：每一行、每一层读 K 和 V 各 `context` 个位置，每个位置 `n_kv_heads × head_dim` 个数；
    - 所有数都是 `dtype_bytes` 字节（fp32 = 4，bf16 = 2）；激活值忽略；返回 int。

    例子：上面那个配置，`context=16, batch=3, dtype_bytes=4` → 权重 (1232 + 40) × 4 = 5088，
    KV 2 × 2 × 1 × 4 × 16 × 3 × 4 = 3072，返回 8160。
    """
    raise NotImplementedError("请实现 decode_bytes_per_step")
