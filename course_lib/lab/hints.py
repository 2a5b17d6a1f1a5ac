"""Hints for the exercises, one level at a time.

    from course_lib.lab.hints import hint
    hint("4.0.2")               # level 1 of the lesson's exercise
    hint("4.0.2")               # level 2, ... (each call reveals one more)
    hint("ex411_train_script")  # a lesson with two exercises needs the exercise name
    hint("4.0.2", level=1)      # show one level again

The exercise stubs state the contract; the recipe lives here, so a learner who wants to work
it out alone never reads it by accident. The last level is close to the answer.
"""

from __future__ import annotations

from .grading import GradingError, known_exercises, resolve

HINTS: dict[str, list[str]] = {
    "ex00_rmsnorm": [
        "先用 `xf = x.float()` 升到 float32，最后再 `.to(x.dtype)`。",
        "均方值：`xf.pow(2).mean(dim=-1, keepdim=True)`；`keepdim=True` 让它能和 x 广播。",
        "`torch.rsqrt(ms + eps)` 就是 1/sqrt(ms + eps)；乘上 xf，转回 dtype，再乘 weight。",
    ],
    "ex401_checkpoint": [
        "`model.state_dict()` 和 `optimizer.state_dict()` 都只含张量和普通容器，可以直接放进一个 dict。",
        '读取用 `torch.load(src, map_location="cpu", weights_only=True)`：它拒绝执行 pickle 里的代码。',
        (
            '恢复：`model.load_state_dict(state["model"])`、`optimizer.load_state_dict(state["optimizer"])`，'
            '返回 `int(state["iteration"])`。'
        ),
    ],
    "ex402_lr_schedule": [
        "分三段写：`step < warmup_steps`、`step >= total_steps`、中间的衰减段。",
        "预热：`peak_lr * step / warmup_steps`（HF 约定，第 0 步是 0）。",
        (
            "衰减：`progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)`，"
            "`min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))`。"
        ),
    ],
    "ex403_clip_grad_norm": [
        "先把 `parameters` 变成列表（它可能是生成器），只留 `p.grad is not None` 的梯度。",
        "全局范数 = 各梯度范数组成的向量的范数：`vector_norm(stack([vector_norm(g) for g in grads]))`。",
        "`coef = max_norm / (total + eps)`；只有 `coef < 1` 时对每个梯度 `g.mul_(coef)`；返回 total。",
    ],
    "ex404_nan_guard": [
        "梯度范数的算法与 ex403 相同（只算不改）。",
        "`math.isfinite(float(loss))` 和 `math.isfinite(norm)`：NaN 和 ±Inf 都会得到 False。",
        (
            '`raise NonFiniteError(f"step {step}: loss={...}, grad_norm={...}。可能的原因：学习率太大、'
            '梯度爆炸（用裁剪）、fp16 溢出、坏数据")`。'
        ),
    ],
    "ex405_memory_estimate": [
        "`model.parameters()` 本身就会跳过重复的共享参数；每个参数 `p.numel() * p.element_size()` 字节。",
        "梯度和优化器状态只算 `p.requires_grad` 的参数。",
        "AdamW 每个参数存 exp_avg 和 exp_avg_sq 两份：optimizer_state = 2 × grads 的字节数。",
    ],
    "ex406_roofline_counts": [
        (
            "先写一个函数数出所有矩阵的元素个数：每层 q 和 o 各 `d_model × n_heads × head_dim`，k 和 v 各 "
            "`d_model × n_kv_heads × head_dim`，gate/up/down 各 `d_model × ffn_hidden`，再加一个 "
            "`vocab_size × d_model`（输出头）。"
        ),
        (
            "N = 矩阵 + `(2 * n_layers + 1) * d_model` 个 norm 权重；FLOPs = `6 * N + 12 * n_layers * n_heads * "
            "head_dim * seq_len`。别忘了注意力那一项：它随 seq_len 增长。"
        ),
        (
            "字节 = (矩阵 + norm 权重 + KV) × dtype_bytes，KV = `2 * n_layers * n_kv_heads * head_dim * context * batch`"
            "（K 和 V 两份；按 n_kv_heads 而不是 n_heads：GQA）。"
        ),
    ],
    "ex411_keep_last_k": [
        "用正则 `^step_(\\d{8,})$` 取出步数，`int(...)` 之后再排序。",
        '只收集 `p.is_dir()` 且 `(p / "COMPLETE.json").exists()` 的文件夹。',
        "排序后删掉前 `len(items) - keep_last` 个（`shutil.rmtree`），先检查 `keep_last < 1`。",
    ],
    "ex411_train_script": [
        (
            "顺序：`build(args)` → AdamW → `LambdaLR(optimizer, lambda s: lr_factor(s, ...))` → 如果有"
            " checkpoint 就加载 → 循环。每步：取 batch、前向、`zero_grad`、`backward`、"
            "`clip_grad_norm_`、`optimizer.step()`、`scheduler.step()`。"
        ),
        (
            "保存时一个 dict 装下全部：`model/optimizer/scheduler` 的 `state_dict()`、`step`、"
            "`torch.get_rng_state()`（和 `random.getstate()`）、`dataset.state_dict(step)`、`vars(args)`。"
        ),
        (
            "原子写入：先 `torch.save(state, tmp)`，再 `os.replace(tmp, final)`；找最新的 checkpoint 时只看"
            "正式文件名，按文件名里的步数数值取最大。半截的 tmp 文件永远不会被读。"
        ),
        (
            "恢复时先建好模型、优化器、scheduler，再依次 `load_state_dict`，最后 `torch.set_rng_state(...)`。"
            "不要在恢复 RNG 之后再创建 DataLoader 迭代器（它会从全局 RNG 取一个种子）：直接 `iter(dataset)`。"
        ),
    ],
    "ex412_ddp_setup": [
        (
            '`rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])`；'
            '`dist.is_initialized()` 为 False 时才 `dist.init_process_group("gloo", ...)`。'
        ),
        "`DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)`。",
        (
            "`DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True)`（有 sampler 就不传 shuffle）；"
            "模型包成 `DistributedDataParallel(model)`（CPU 上不传 device_ids）。"
        ),
    ],
    "ex412_ddp_by_hand": [
        (
            "`dist.all_reduce(t, op=dist.ReduceOp.SUM)` 原地把所有进程的 t 加起来，每个进程都拿到和；"
            "`dist.get_world_size()` 是进程数。"
        ),
        "average_gradients：对每个 `p.grad is not None` 的参数 all_reduce 求和，再 `p.grad.div_(world)`。",
        (
            "钩子：`p.register_post_accumulate_grad_hook(hook)`，hook(p) 在 p.grad 累加完成后被调用，"
            "在里面做同样的求和与除法；把返回的句柄收集成列表。"
        ),
    ],
    "ex413_sharded_stream": [
        (
            "先写 rank 的顺序：`perm = torch.randperm(n, generator=torch.Generator().manual_seed(...))`，"
            "种子由 seed 和 epoch 决定；rank r 取 `perm[r::world_size]`。"
        ),
        (
            "在 `__iter__` 里用 `torch.utils.data.get_worker_info()` 得到 worker 编号 w 和总数 W"
            "（主进程里它是 None：当作 w=0, W=1）。"
        ),
        (
            "DataLoader 轮流读 worker 0, 1, …：worker w 产生剩余序列的第 w, w+W, w+2W, … 个，"
            "读出来的顺序就与 W 无关。恢复：剩余序列 = rank 顺序[consumed:]。"
        ),
    ],
    "ex414_grad_accumulation": [
        "每个小批次的梯度会在 `.grad` 里 **累加**：N 次 backward 之后是 N 个梯度之和。",
        "大批次的平均损失 = N 个小批次平均损失的平均：每个小批次 `(loss / N).backward()`。",
        (
            "所有小批次之后：`if max_norm > 0: clip_grad_norm_(...)`，然后 `optimizer.step()`、"
            "`optimizer.zero_grad(set_to_none=True)`。"
        ),
    ],
    "ex415_amp_step": [
        "前向放进 `with torch.autocast(device_type=device_type, dtype=dtype):`，backward 在外面。",
        "`scaler.scale(loss).backward()`，然后 `scaler.unscale_(optimizer)`，**之后**才裁剪。",
        (
            "`before = scaler.get_scale()`；`scaler.step(optimizer)`；`scaler.update()`；"
            "`skipped = scaler.get_scale() < before`。"
        ),
    ],
    "ex416_per_rank_memory": [
        (
            '形状不用真的分配内存：`with torch.device("meta"): model = DIYModel(model_cfg)`，'
            "`[tuple(p.shape) for p in model.parameters()]`（共享的参数只出现一次）。"
        ),
        (
            "FSDP 一个形状 (n0, ...) 的参数：`c = math.ceil(n0 / world_size)`，`rows = max(0, min(c, n0 - rank * c))`，"
            "本 rank 的元素数 = `rows * math.prod(shape[1:])`；DDP 就是 `math.prod(shape)`。"
        ),
        (
            "params = grads = 元素数 × 4；optimizer = 2 × params + 4 × 参数张量的个数（step 计数器不分片）；"
            "先检查 `world_size >= 1` 和 `0 <= rank < world_size`，否则 `raise ValueError(...)`。"
        ),
    ],
    "ex421_inference_artifact": [
        (
            "`safetensors.torch.save_file(tensors, path)`：tensors 是 `{name: tensor}`，"
            "去掉 `lm_head.weight`（绑定时），每个张量 `.contiguous()`。"
        ),
        (
            '加载：`ModelConfig.from_dict(json.load(...)["model"])` 建模型，'
            "`safetensors.torch.load_file` 读权重，`load_state_dict(tensors, strict=False)`。"
        ),
        "先比较名字和形状再加载，不符的名字放进 ValueError 的信息里；最后 `return model.eval()`。",
    ],
    "ex422_int8_quant": [
        "每行的最大绝对值：`w.abs().amax(dim=1)`；`.clamp_min(1e-12)` 防止全零行。",
        "`scale = amax / 127`；`q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)`。",
        "反量化：`q.float() * scale[:, None]`。",
    ],
    "ex423_kv_attention_step": [
        "新缓存：`torch.cat([k_cache, k_new], dim=2)`（v 同理）。",
        "`scores = q @ k.transpose(-2, -1) / math.sqrt(D)`，形状 (B, H, 1, T+1)。",
        "新 token 是最后一个位置，能看到全部：不需要掩码；`out = scores.softmax(-1) @ v`。",
    ],
    "ex423_kv_block": [
        (
            "`past_len = past_kv[0].shape[2]`；新的 k、v 接在缓存后面：`torch.cat([past_k, k], dim=2)`。"
            "缓存的是 repeat_interleave **之前** 的 k、v（KV 头）。"
        ),
        "因果掩码加偏移：查询 i 的绝对位置是 past_len + i，能看到键 j 当且仅当 j <= past_len + i。",
        (
            "TinyLM：位置 `torch.arange(past_len, past_len + T)`；逐层把 `past_key_values[i]` 传给 block，"
            "收集每层返回的 (k, v)；`use_cache=False` 时返回 None。"
        ),
    ],
    "ex424_left_pad": [
        "每行右对齐：第 i 行的真实 token 放在 `[T - len(s):]`。",
        "`position_ids = (mask.cumsum(-1) - 1).clamp(min=0)`：累计真实 token 的个数。",
    ],
    "ex424_batched_generate": [
        (
            "prefill：左填充得到 ids 和 mask，`pos = (mask.cumsum(-1) - 1).clamp(min=0)`，"
            "`model(ids, attention_mask=mask, position_ids=pos, use_cache=True)`。"
        ),
        (
            "每步：取 `logits[:, -1].argmax(-1)`；新 token 的位置 = 这一行到目前为止的真实 token 数 "
            "`mask.sum(-1)`；mask 末尾加一列 1，再带上 `past_key_values` 只喂新 token。"
        ),
        "用一个 `finished` 布尔向量：结束的行之后喂 pad、不再记录；全部结束就 break。",
    ],
    "ex417_sft_collator": [
        (
            "先逐条做错一位：`inp = ids[:-1]`，`lab = [t if m else -100 for t, m in zip(ids[1:], mask[1:])]`——"
            "掩码看的是**标签**那个 token（mask[1:]），不是输入那个（mask[:-1]）；`len(inp) > seq_len` 就 raise ValueError。"
        ),
        (
            "打包：`rows = []`，`used = seq_len + 1`（逼第一条开新行）；每条 `if used + len(inp) > seq_len: rows.append([]); used = 0`，"
            "再 `rows[-1].append(...)`，`used += len(inp)`。"
        ),
        (
            "四个张量先用 `torch.full` / `torch.zeros` 建好（pad_id、-100、0、0），每行用游标 t 逐个文档写入："
            "`pos[r, t:t+n] = torch.arange(n)`，`doc[r, t:t+n] = d`；行尾 `doc[r, t:] = len(row)`，"
            "`pos[r, t:] = torch.arange(seq_len - t)`。"
        ),
    ],
    "ex425_scheduler": [
        "admit 只看 `engine.waiting[0]`：它放不下就 `break`，不要跳过它去看后面的请求（那会饿死大请求）。",
        (
            "三个条件写成三个 `if ...: break`：`len(engine.running) >= engine.max_batch`；"
            "`admitted and budget + n > engine.max_step_tokens`；`engine.blocks_for(n + 1) > len(engine.pool.free)`。"
        ),
        "evict：对每个 `req.done` 的请求先 `engine.release(req)`，再把没结束的留在一个新列表里赋回 `engine.running`。",
    ],
    "ex426_prefix_cache": [
        (
            'match：`parent = b""`，对 `i in range(limit // bs)` 算 `h = chain_hash(parent, token_ids[i*bs:(i+1)*bs])`，'
            "`bm.cached.get(h)` 是 None 就 break，否则记下块号、`parent = h`。"
        ),
        (
            'commit：`for i in range(len(seq.hashes), seq.length // bs)`，父键是 `seq.hashes[-1]`（没有就 `b""`）；'
            "先 `seq.hashes.append(h)`，再在 `h not in bm.cached and seq.table[i] not in bm.hash_of` 时登记两个 dict。"
        ),
        (
            "release：`for b in reversed(seq.table)`：`bm.refs[b] -= 1`，只有 `bm.refs[b] == 0` 时才放回："
            "`bm.pool.free.insert(0, b)`（登记过）或 `append(b)`（没登记过）；最后清空 table、hashes，lengths 置 0。"
        ),
    ],
}

_shown: dict[str, int] = {}


def _target(exercise_id: str) -> str:
    ident = str(exercise_id).strip()
    if ident in HINTS:
        return ident
    names = resolve(ident)
    if len(names) > 1:
        raise GradingError(
            f"{exercise_id} 有 {len(names)} 个练习：{', '.join(names)}。请写练习名，例如 hint({names[-1]!r})。"
        )
    return names[0]


def hint(exercise_id: str, level: int | None = None, show: bool = True) -> str:
    """Reveal the next hint level of an exercise (or `level`, counted from 1) and return it."""
    try:
        name = _target(exercise_id)
    except GradingError as e:
        text = f"提示 (hint)：{e}"
        if show:
            print(text)
        return text
    levels = HINTS.get(name)
    if not levels:
        text = f"提示 (hint)：{name} 还没有提示。"
    else:
        if level is None:
            n = min(_shown.get(name, 0) + 1, len(levels))
        else:
            if not 1 <= int(level) <= len(levels):
                raise ValueError(f"level={level}: {name} has hint levels 1..{len(levels)}")
            n = int(level)
        _shown[name] = max(_shown.get(name, 0), n)
        shown = (
            "\n".join(f"  {i}. {levels[i - 1]}" for i in range(1, n + 1))
            if level is None
            else f"  {n}. {levels[n - 1]}"
        )
        more = "（已是最后一层）" if n == len(levels) else f"（再调用一次看第 {n + 1} 层，共 {len(levels)} 层）"
        text = f"{name} 的提示 {n}/{len(levels)} {more}\n{shown}"
    if show:
        print(text)
    return text


def reset_hints() -> None:
    """Forget which levels were shown (the next hint() starts at level 1 again)."""
    _shown.clear()


def exercises_without_hints() -> list[str]:
    return [n for n in known_exercises() if len(HINTS.get(n, [])) < 2]
