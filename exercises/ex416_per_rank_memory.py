"""练习 ex416：每个 rank 上有多少字节？DDP 与 FSDP 的逐 rank 内存 (per-rank memory)。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.1.6")` 检查你的实现；
卡住时 `from course_lib.lab.hints import hint; hint("ex416_per_rank_memory")`，每调用一次多给一层提示。
"""

from course_lib.config import ModelConfig


def per_rank_memory(model_cfg: ModelConfig, world_size: int, strategy: str = "fsdp", rank: int = 0) -> dict:
    """返回用 `world_size` 个进程、以 `strategy` 训练 `DIYModel(model_cfg)` 时，第 `rank` 个进程在
    一次 AdamW 优化器步 (optimizer step) 之后持有的模型状态字节数 (bytes)。

    约定 (contract)：
    - 返回 dict：`{"params": int, "grads": int, "optimizer": int, "total": int}`，total = 三者之和；
    - 参数全是 float32（4 字节）；模型的全部参数都算，绑定 (tied) 的 embedding 和 lm_head 是同一个参数，只算一次；
    - strategy="ddp"：每个 rank 持有完整的参数、梯度和优化器状态，与 world_size 无关；
    - strategy="fsdp"（FSDP2 `fully_shard`，每个参数沿第 0 维切分 (dim-0 sharding)）：形状为 (n0, ...)
      的参数，每份 c = ceil(n0 / world_size) 行，第 r 个 rank 持有 max(0, min(c, n0 - r*c)) 行
      （与 `torch.chunk` 一样：前面的 rank 拿满 c 行，最后的 rank 拿余下的，可能是 0 行）；
      梯度和优化器状态与本 rank 的参数分片同形状。`fully_shard` 内部把每个分片补齐 (pad) 到 c 行，
      补齐的部分不属于任何参数，**不计入**；
    - optimizer：AdamW 每个参数有两个与它（的分片）同形状的状态 (exp_avg, exp_avg_sq)，另外每个参数张量
      还有一个 0 维 float32 的 step 计数器（4 字节），计数器**不分片**，每个 rank 各有一份；
    - world_size = 1 时 FSDP 与 DDP 相同；world_size < 1 或 rank 不在 0..world_size-1 时抛出 ValueError。

    例子：`ModelConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64)`（26 848 个参数，
    20 个参数张量），strategy="ddp" → `{"params": 107392, "grads": 107392, "optimizer": 214864,
    "total": 429648}`；world_size=2、strategy="fsdp"、rank=0 → `{"params": 53696, "grads": 53696,
    "optimizer": 107472, "total": 214864}`。
    """
    raise NotImplementedError("请实现 per_rank_memory")
