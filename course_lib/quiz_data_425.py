"""Self-check questions of lesson 4.2.5, as plain data in the per-lesson quiz format.

Same shapes as the course's quiz data: ``Q(prompt, options, answer, why)`` (multiple choice) and
``P(prompt, key, options, edges, why)`` (predict the number the notebook measures and passes as
``measured={key: value}``; option i covers ``edges[i-1] <= value < edges[i]``). To be merged into
the course-wide quiz table as the ``"4.2.5"`` entry.
"""

from __future__ import annotations

TITLE = "连续批处理与推理服务"


def Q(prompt, options, answer, why):
    return {"prompt": prompt, "options": list(options), "answer": answer, "why": why}


def P(prompt, key, options, edges, why, fmt="{:.3g}"):
    return {"prompt": prompt, "key": key, "options": list(options), "edges": list(edges), "why": why, "fmt": fmt}


QUESTIONS = [
    Q("静态批处理 (static batching) 的一个 batch 里，7 个请求各生成 8 个 token，1 个请求生成 64 个 token。"
      "按「行 × 解码步」数，这个 batch 的计算里大约有多少是空转（已结束的行还在算）？",
      ["约 15%：只有最后几步有空转",
       "约 75%：8 行 × 64 步 = 512 行·步，有用的只有 7×8 + 64 = 120",
       "0%：静态批处理里，输出了 EOS 或达到 max_tokens 的行会在下一步之前被立即移出 batch，不再参与计算",
       "约 50%：大约一半的行在大约一半的解码步里空转，另一半时间整个 batch 满载"],
      1, "静态批处理要等最长的那一行结束；(512 − 120) / 512 ≈ 77% 的行·步算的是已经结束的序列。"),
    Q("连续批处理 (continuous batching) 的引擎在什么时候让新到的请求加入？",
      ["等当前 batch 里所有请求都结束、整批的 KV 缓存都释放之后，再一次性组成新的 batch",
       "每隔固定的时间片（例如 100 ms）由后台线程统一加入一次，时间片之间到达的请求都要排队等待下一个时间片",
       "每个调度步的 admit 阶段：有空行、预算和空闲 KV 块就预填充它，下一次解码就和其他序列一起算",
       "只在服务器启动时一次性加入"],
      2, "调度以解码步为单位 (iteration-level scheduling，Orca)：新请求不用等别人结束。"),
    Q("本课的 admit 为什么是严格先到先服务 (FIFO)：队首放不下时，后面的小请求也不许插队？",
      ["因为 collections.deque 只能从左边取元素，从中间取出请求需要把整个等待队列复制一遍，代价太高",
       "否则长 prompt 的大请求可能永远凑不齐空闲块，被源源不断的小请求饿死 (starvation)",
       "插队会让小请求的输出与单独生成时不同",
       "FIFO 的吞吐量总是最高"],
      1, "插队能提高一点利用率，但会让大请求无限期等待；vLLM 的默认调度同样按到达顺序。"),
    Q("KV 块池 (BlockPool) 用完了，而一个正在运行的序列下一步需要新块，本课的引擎怎么做？",
      ["直接报错，让整个服务器退出",
       "把这个序列的输出截断，返回 finish_reason = length",
       "等其他序列自然结束、释放出块为止，在此期间 batch 里的所有序列暂停解码，新请求也一律不接纳",
       "抢占 (preemption) 最新加入的序列：释放它的块、放回队首，之后重新预填充 prompt 和它已生成的 token"],
      3, "这是 vLLM 的 recompute 策略；测试 test_preemption_when_the_pool_runs_dry_keeps_outputs_exact 证明输出不变。"),
    Q("长度各不相同的序列为什么能共用一次解码前向，而且每行结果与单独生成相同？",
      ["因为解码时每行只输入最后一个 token，序列长度不同不会影响注意力或其他任何一步计算，也就不需要掩码",
       "每行把新 K/V 写进自己的块、自己的位置；读出时拼成左填充视图，配合注意力掩码和由掩码推出的位置编号",
       "因为引擎会把所有序列截断到最短的那一行",
       "因为每行其实是分开做前向的，只是在同一个线程里"],
      1, "这正是 4.2.4 的左填充 + 掩码 + position ids，只是 K/V 来自各自的分页块 (RaggedPagedCache)。"),
    P("本课负载实验里，在最高的到达率下，连续批处理的吞吐量 (tokens/s) 是静态批处理的多少倍？",
      "throughput_ratio",
      ["不到 1.2 倍：调度方式几乎不影响吞吐",
       "1.2 到 1.8 倍",
       "1.8 到 3 倍",
       "3 倍以上"],
      [1.2, 1.8, 3.0],
      "过载时静态批处理每步算的行里有很大一部分是已结束的行，比例取决于批内最长回答与平均回答长度之比；"
      "连续批处理把这些行立即换成等待中的请求。"),
]
