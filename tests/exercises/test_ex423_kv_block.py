"""Grader for exercises/ex423_kv_block.py: a KV cache threaded through a small GQA model.

Oracles: (1) a functional re-implementation here of the uncached model, reading the learner's
weights by name (so a change to the maths of the model itself is caught); (2) the same model
without cache: greedy generation one token at a time with the cache must produce the same
tokens as recomputing the whole sequence each step, logits within 1e-5 (fp32, only the order
of additions differs: the cached path multiplies the same numbers in smaller matrices);
(3) the byte formula 2 x layers x batch x kv_heads x tokens x head_dim x 4 for fp32.
"""

import math

import pytest
import torch
import torch.nn.functional as F

EX = "ex423_kv_block"
ATOL = 1e-5


def build(ex, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ex.TinyConfig(**kw)
    model = ex.TinyLM(cfg).eval()
    return cfg, model


def reference_logits(model, cfg, ids):
    """The uncached model, written out from the weights (no learner code runs here)."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    B, T = ids.shape
    H, KV, D = cfg.n_heads, cfg.n_kv_heads, cfg.d_model // cfg.n_heads
    x = sd["tok_emb.weight"][ids] + sd["pos_emb.weight"][torch.arange(T)][None]
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (cfg.d_model,), sd[p + "norm1.weight"], sd[p + "norm1.bias"])
        q = (h @ sd[p + "attn.q_proj.weight"].T).view(B, T, H, D).transpose(1, 2)
        k = (h @ sd[p + "attn.k_proj.weight"].T).view(B, T, KV, D).transpose(1, 2).repeat_interleave(H // KV, 1)
        v = (h @ sd[p + "attn.v_proj.weight"].T).view(B, T, KV, D).transpose(1, 2).repeat_interleave(H // KV, 1)
        s = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(
            torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")
        )
        a = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * D) @ sd[p + "attn.o_proj.weight"].T
        x = x + a
        h = F.layer_norm(x, (cfg.d_model,), sd[p + "norm2.weight"], sd[p + "norm2.bias"])
        h = (
            F.gelu(h @ sd[p + "mlp.0.weight"].T + sd[p + "mlp.0.bias"]) @ sd[p + "mlp.2.weight"].T
            + sd[p + "mlp.2.bias"]
        )
        x = x + h
    x = F.layer_norm(x, (cfg.d_model,), sd["norm.weight"], sd["norm.bias"])
    return x @ sd["head.weight"].T


def formula_bytes(cfg, batch, tokens):
    return 2 * cfg.n_layers * batch * cfg.n_kv_heads * tokens * (cfg.d_model // cfg.n_heads) * 4


def check_cache(cache, cfg, batch, tokens, where):
    assert isinstance(cache, (list, tuple)) and len(cache) == cfg.n_layers, (
        f"{where}：cache 应是长度 n_layers={cfg.n_layers} 的 list，实际 {type(cache).__name__}"
        + (f"（长度 {len(cache)}）" if isinstance(cache, (list, tuple)) else "")
    )
    want = (batch, cfg.n_kv_heads, tokens, cfg.d_model // cfg.n_heads)
    for i, kv in enumerate(cache):
        for name, t in zip("kv", kv, strict=True):
            assert tuple(t.shape) == want, (
                f"{where}：第 {i} 层缓存的 {name} 形状期望 {want}（batch, n_kv_heads, 已见 token 数, head_dim），"
                f"实际 {tuple(t.shape)}"
            )


@torch.no_grad()
def test_prefill_with_cache_matches_reference(impl):
    ex = impl(EX)
    cfg, model = build(ex)
    ids = torch.randint(0, cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    logits, cache = model(ids, use_cache=True)
    want = reference_logits(model, cfg, ids)
    diff = (logits - want).abs().max().item()
    assert diff <= ATOL, (
        f"带 use_cache=True 的整段前向 logits 与参照差 {diff:.3g}（允许 {ATOL}）：模型本身的计算被改动了？"
    )
    check_cache(cache, cfg, 2, 7, "prefill 7 个 token 之后")


@torch.no_grad()
def test_chunked_prefill_equals_one_pass(impl):
    """T > 1 with a past: the causal mask and the positions need the offset."""
    ex = impl(EX)
    cfg, model = build(ex, seed=3)
    ids = torch.randint(0, cfg.vocab_size, (1, 9), generator=torch.Generator().manual_seed(2))
    want = reference_logits(model, cfg, ids)
    _, cache = model(ids[:, :4], use_cache=True)
    got, cache = model(ids[:, 4:], past_key_values=cache, use_cache=True)
    assert got.shape == (1, 5, cfg.vocab_size), (
        f"第二块 5 个 token 的 logits 形状应为 (1, 5, {cfg.vocab_size})，实际 {tuple(got.shape)}"
    )
    diff = (got - want[:, 4:]).abs().max().item()
    assert diff <= ATOL, (
        f"先 prefill 4 个 token、再带缓存喂 5 个：logits 与一次算完差 {diff:.3g}（允许 {ATOL}）。"
        "新 token 的位置 (position) 和因果掩码 (causal mask) 都要从 past_len 开始算"
    )
    check_cache(cache, cfg, 1, 9, "分两块喂完 9 个 token 之后")


@torch.no_grad()
@pytest.mark.parametrize("n_kv_heads", [2, 4, 1])
def test_greedy_with_cache_equals_without(impl, n_kv_heads):
    ex = impl(EX)
    cfg, model = build(ex, seed=5, n_kv_heads=n_kv_heads)
    prompt = torch.randint(0, cfg.vocab_size, (2, 5), generator=torch.Generator().manual_seed(4))
    slow = prompt.clone()
    fast = prompt.clone()
    logits, cache = model(prompt, use_cache=True)
    nxt = logits[:, -1].argmax(-1, keepdim=True)
    for step in range(12):
        want_logits, _ = model(slow)  # recompute everything
        want = want_logits[:, -1].argmax(-1, keepdim=True)
        diff = (logits[:, -1] - want_logits[:, -1]).abs().max().item()
        assert diff <= ATOL, (
            f"n_kv_heads={n_kv_heads}，生成第 {step + 1} 个 token 时带缓存的 logits 与不带缓存的差 "
            f"{diff:.3g}（允许 {ATOL}）"
        )
        assert torch.equal(nxt, want), (
            f"n_kv_heads={n_kv_heads}，第 {step + 1} 个 token：不带缓存得到 "
            f"{want.flatten().tolist()}，带缓存得到 {nxt.flatten().tolist()}"
        )
        slow = torch.cat([slow, want], 1)
        fast = torch.cat([fast, nxt], 1)
        logits, cache = model(nxt, past_key_values=cache, use_cache=True)
        assert logits.shape == (2, 1, cfg.vocab_size), (
            f"带缓存只喂 1 个新 token 时 logits 形状应为 (2, 1, {cfg.vocab_size})，实际 {tuple(logits.shape)}"
        )
        nxt = logits[:, -1].argmax(-1, keepdim=True)
    check_cache(cache, cfg, 2, fast.shape[1], f"生成 12 个 token 之后 (n_kv_heads={n_kv_heads})")


@torch.no_grad()
def test_cache_bytes_equal_the_formula(impl):
    ex = impl(EX)
    cfg, model = build(ex, seed=7)
    ids = torch.randint(0, cfg.vocab_size, (3, 6), generator=torch.Generator().manual_seed(6))
    _, cache = model(ids, use_cache=True)
    _, cache = model(ids[:, :1], past_key_values=cache, use_cache=True)
    got = sum(t.numel() * t.element_size() for kv in cache for t in kv)
    want = formula_bytes(cfg, 3, 7)
    assert got == want, (
        f"缓存字节数：期望 2 × n_layers × B × n_kv_heads × T × head_dim × 4 = "
        f"2×{cfg.n_layers}×3×{cfg.n_kv_heads}×7×{cfg.d_model // cfg.n_heads}×4 = {want}，实际 {got}"
        + (
            "（缓存的是按查询头复制后的 K/V？GQA 只需缓存 n_kv_heads 个头）"
            if got == want * cfg.n_heads // cfg.n_kv_heads
            else ""
        )
    )


@torch.no_grad()
def test_no_cache_returned_when_not_asked(impl):
    ex = impl(EX)
    cfg, model = build(ex)
    ids = torch.randint(0, cfg.vocab_size, (1, 4), generator=torch.Generator().manual_seed(8))
    _, cache = model(ids, use_cache=True)
    _, none = model(ids[:, :1], past_key_values=cache, use_cache=False)
    assert none is None, f"use_cache=False 时应返回 cache=None，实际 {type(none).__name__}"
