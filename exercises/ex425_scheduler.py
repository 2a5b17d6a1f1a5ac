"""练习 ex425：连续批处理 (continuous batching) 调度器的 admit / evict 两步。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.2.5")` 检查你的实现；卡住时
`from course_lib.lab.hints import hint; hint("ex425_scheduler")`，每调用一次多给一层提示。
评分器把你的两个函数装进 `course_lib.engine.Engine`（替换它自己的 admit / evict），再检查：
每个请求的贪心输出与单独用 `course_lib.generate.generate` 生成时逐 token 相同、KV 块用完即还、
批大小不超过上限、先到先服务 (FIFO)。
"""

from course_lib.engine import Engine


def admit(engine: Engine) -> None:
    """把等待队列里的请求放进正在运行的批次 (running batch)，每个调度步调用一次。

    可用的东西：
    - `engine.waiting`：等待中的请求，`collections.deque`，最早到的在最左边 (`engine.waiting[0]`)；
    - `engine.running`：正在运行的请求列表；`engine.max_batch`：它最多能有几行；
    - `engine.max_step_tokens`：本步的 token 预算 (token budget)；`engine.prefill_tokens(req)`：
      接纳 req 要做多少个 token 的预填充 (prefill)；
    - `engine.blocks_for(n)`：存 n 个位置要几个 KV 块；`len(engine.pool.free)`：空闲块数；
    - `engine.prefill(req)`：预填充 req 并把它加入 `engine.running`（你不用自己 append）。

    规则（按顺序）：
    1. 预算从 `len(engine.running)` 开始（每个正在运行的序列本步解码 1 个 token）；
    2. 只看队首 `engine.waiting[0]`，它能进就 `popleft()`、预算加上 `engine.prefill_tokens(req)`、
       调用 `engine.prefill(req)`，然后继续看新的队首；队首进不去就停下（严格 FIFO，后面的不许插队）；
    3. 队首「能进」当且仅当三条都满足：
       - `len(engine.running) < engine.max_batch`；
       - 预算够：`已用预算 + engine.prefill_tokens(req) <= engine.max_step_tokens`，
         或者本步还没有接纳任何请求（否则超长的 prompt 永远进不去）；
       - 空闲块够：`engine.blocks_for(engine.prefill_tokens(req) + 1) <= len(engine.pool.free)`
         （+1：预填充后的第一个解码步还要放一个 token）。

    例子：max_batch=3、running 为空、等待 5 个请求 → 一次最多接纳 3 个（预算和块都够时）。
    """
    raise NotImplementedError("请实现 admit")


def evict(engine: Engine) -> None:
    """把已经结束的请求移出批次并归还它们的 KV 块，每个调度步在解码之后调用一次。

    - 请求结束的标志是 `req.done`（遇到 EOS 或达到 max_tokens，引擎已经记好了 `req.finish_reason`）；
    - 对每个结束的请求调用 `engine.release(req)`（把它的块还给 `engine.pool`）；
    - `engine.running` 只留下没结束的请求，保持原来的顺序。
    例子：running = [A(未结束), B(已结束), C(未结束)] → 之后 running = [A, C]，B 的块回到空闲列表。
    """
    raise NotImplementedError("请实现 evict")
