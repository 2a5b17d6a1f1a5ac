"""Plausible mistake: release gives every block of the sequence back to the free list, also the
prefix blocks another running sequence still references (the count goes down, but the block is
freed regardless). The block is then handed out and rewritten under the other sequence. Should fail
test_refcounts_keep_a_shared_block_until_its_last_holder and the engine trace tests."""

from collections.abc import Sequence

from course_lib.block_manager import BlockManager, SeqBlocks, chain_hash


def match(bm: BlockManager, token_ids: Sequence[int], limit: int) -> list[int]:
    bs, parent, out = bm.block_size, b"", []
    for i in range(limit // bs):
        h = chain_hash(parent, token_ids[i * bs : (i + 1) * bs])
        block = bm.cached.get(h)
        if block is None:
            break
        out.append(block)
        parent = h
    return out


def commit(bm: BlockManager, seq: SeqBlocks, token_ids: Sequence[int]) -> None:
    bs = bm.block_size
    for i in range(len(seq.hashes), seq.length // bs):
        parent = seq.hashes[-1] if seq.hashes else b""
        h = chain_hash(parent, token_ids[i * bs : (i + 1) * bs])
        seq.hashes.append(h)
        block = seq.table[i]
        if h not in bm.cached and block not in bm.hash_of:
            bm.cached[h] = block
            bm.hash_of[block] = h


def release(bm: BlockManager, seq: SeqBlocks) -> None:
    for b in reversed(seq.table):
        bm.refs[b] = max(bm.refs[b] - 1, 0)
        if b in bm.hash_of:
            bm.pool.free.insert(0, b)
        else:
            bm.pool.free.append(b)
    seq.table.clear()
    seq.hashes.clear()
    seq.lengths[:] = [0] * len(seq.lengths)
