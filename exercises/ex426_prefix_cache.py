"""练习 ex426：前缀缓存 (prefix caching) 的查找 (lookup)、登记 (insert) 与引用计数 (reference count)。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.2.6")` 检查你的实现；卡住时
`from course_lib.lab.hints import hint; hint("ex426_prefix_cache")`，每调用一次多给一层提示。
评分器把你的三个函数装进 `course_lib.block_manager.BlockManager`（替换它自己的 match / commit / release），
再用真实的 `course_lib.engine.Engine(..., prefix_cache=True)` 跑带共享前缀、会发生抢占 (preemption) 的请求序列，
检查：每个请求的贪心输出与单独生成逐 token 相同、每一步之后引用计数与块表一致、结束后没有泄漏的块、缓存确实命中。

你会用到 `bm`（一个 `BlockManager`）上的这些东西：
- `bm.block_size`：每块几个 token；`bm.pool.free`：空闲块列表（`pool.allocate()` 从列表**末尾**取块）；
- `bm.refs[b]`：块 b 被几个块表引用；
- `bm.cached`：dict，链式哈希 (chain hash) -> 块号；`bm.hash_of`：dict，块号 -> 它的链式哈希（只有登记过的块才有）；
- `chain_hash(parent, token_ids)`：本块的键 = 父块的键（第 0 块用 `b""`）+ 本块的 token ids 的摘要；
- `seq`（一个 `SeqBlocks`）：`seq.table` 块表，`seq.length` 已缓存的位置数，`seq.hashes` 已登记到第几块的哈希。
"""

from collections.abc import Sequence

from course_lib.block_manager import BlockManager, SeqBlocks, chain_hash  # noqa: F401


def match(bm: BlockManager, token_ids: Sequence[int], limit: int) -> list[int]:
    """查找：返回缓存里按顺序存着 `token_ids` 开头若干个**整块**的块号列表，最多覆盖 `limit` 个 token。

    - 第 i 块的 token 是 `token_ids[i*bs:(i+1)*bs]`（bs = `bm.block_size`），只看 `limit // bs` 个整块；
    - 第 i 块的键是 `chain_hash(第 i-1 块的键, 第 i 块的 token)`，第 0 块的父键是 `b""`；
    - 在 `bm.cached` 里查键，第一次查不到就停（后面的块即使内容相同也不算：它们前面的 token 不同，K/V 也不同）；
    - 只查不改：不动引用计数、不动空闲列表（`allocate` 会做）。
    例子：bs=2，缓存里登记过 [1,2,3,4] 的两块；`match(bm, [1,2,3,4,5], limit=4)` → 那两块的块号；
    `match(bm, [9,9,3,4], 4)` → `[]`（第 0 块不同，第 1 块虽然也是 [3,4] 也不算）。
    """
    raise NotImplementedError("请实现 match")


def commit(bm: BlockManager, seq: SeqBlocks, token_ids: Sequence[int]) -> None:
    """登记：一次前向写完 K/V 之后调用，把 `seq` 新写满的整块登记进缓存。

    - `token_ids` 是 `seq` 已缓存的 token（至少 `seq.length` 个）；写满的块数是 `seq.length // bs`；
    - 从第 `len(seq.hashes)` 块开始（前面的已登记过），对每个新写满的块 i：
      算出它的键 h（父键 = `seq.hashes[-1]`，没有就是 `b""`），`seq.hashes.append(h)`；
      如果 `h` 还不在 `bm.cached` 里、而且这个块 `seq.table[i]` 也还没有登记过别的键，就登记：
      `bm.cached[h] = 块号`，`bm.hash_of[块号] = h`（两个序列同时算出了同一块时，先登记的那个留作缓存）。
    - 没写满的最后一块不登记：它还会被写。
    """
    raise NotImplementedError("请实现 commit")


def release(bm: BlockManager, seq: SeqBlocks) -> None:
    """释放：序列结束或被抢占时调用，放掉它对每个块的引用。

    - 从块表**末尾往前**：`bm.refs[b] -= 1`；**只有**降到 0 的块才回到空闲列表
      （别的序列还在用的共享块绝不能放回去：它会被分给别人并被改写）；
    - 降到 0 的块：登记过的（`b in bm.hash_of`）放到 `bm.pool.free` 的**最前面**（`insert(0, b)`，最后才被取走，
      所以它尽量久地留作缓存；被取走时 `allocate` 会把它从缓存里删掉）；没登记过的 `append` 到末尾（先被取走）；
    - 最后清空 `seq.table`、`seq.hashes`，把 `seq.lengths` 全置 0。
    例子：块 7 被两个序列共享（refs=2）；第一个序列 release 后 refs[7]=1，块 7 不在空闲列表里。
    """
    raise NotImplementedError("请实现 release")
