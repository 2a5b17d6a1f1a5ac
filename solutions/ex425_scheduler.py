"""练习 ex425 参考答案：连续批处理调度器的 admit / evict。"""

from course_lib.engine import Engine


def admit(engine: Engine) -> None:
    budget = len(engine.running)  # every running row decodes one token this step
    admitted = 0
    while engine.waiting:
        req = engine.waiting[0]  # strict FIFO: only the head may go in
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
    keep = []
    for req in engine.running:
        if req.done:
            engine.release(req)
        else:
            keep.append(req)
    engine.running = keep
