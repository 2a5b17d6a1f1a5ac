"""Plausible mistake: finished requests leave the batch but their KV blocks are never given back
(the pool leaks until nothing can be admitted). Should fail test_finished_rows_free_their_blocks_at_once
(and test_pool_pressure_outputs_still_exact)."""

from course_lib.engine import Engine


def admit(engine: Engine) -> None:
    budget = len(engine.running)
    admitted = 0
    while engine.waiting:
        req = engine.waiting[0]
        n = engine.prefill_tokens(req)
        if len(engine.running) >= engine.max_batch:
            break
        if admitted and budget + n > engine.max_step_tokens:
            break
        if engine.blocks_for(n + 1) > len(engine.pool.free):
            break
        engine.waiting.popleft()
        budget += n
        admitted += 1
        engine.prefill(req)


def evict(engine: Engine) -> None:
    engine.running = [req for req in engine.running if not req.done]
