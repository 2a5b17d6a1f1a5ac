"""DIYModel correctness: cache == full forward, left padding == alone, GQA, errors."""

import pytest
import torch

from course_lib.config import ModelConfig
from course_lib.kv_cache import DynamicCache
from course_lib.model import DIYModel, RMSNorm


def make(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(
        d_model=64, n_layers=2, n_heads=4, n_kv_heads=kw.pop("n_kv_heads", 2), ffn_hidden=128, max_seq_len=64, **kw
    )
    return DIYModel(cfg).eval()


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_incremental_decoding_matches_full_forward(kv_heads):
    model = make(n_kv_heads=kv_heads)
    ids = torch.randint(0, 258, (2, 20))
    with torch.no_grad():
        full = model(ids).logits
        cache = DynamicCache()
        out = model(ids[:, :8], past_key_values=cache, use_cache=True)
        steps = [out.logits]
        for t in range(8, 20):
            out = model(ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    inc = torch.cat(steps, dim=1)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)
    assert cache.get_seq_length() == 20


def test_legacy_tuple_cache_round_trip():
    model = make()
    ids = torch.randint(0, 258, (1, 10))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :6], past_key_values=(), use_cache=True)
        assert isinstance(out.past_key_values, tuple) and len(out.past_key_values) == 2
        out2 = model(ids[:, 6:], past_key_values=out.past_key_values, use_cache=True)
    torch.testing.assert_close(out2.logits, full[:, 6:], atol=1e-5, rtol=0)


def test_left_padded_batch_matches_each_sequence_alone():
    model = make()
    seqs = [torch.randint(0, 256, (n,)) for n in (5, 12, 9)]
    T = max(len(s) for s in seqs)
    ids = torch.full((3, T), 256)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s) :] = s
        mask[i, T - len(s) :] = 1
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits[:, -1]
        for i, s in enumerate(seqs):
            alone = model(s[None]).logits[:, -1]
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=0)
    assert torch.isfinite(batched).all()


def test_left_padded_cached_decoding_matches_alone():
    model = make()
    a, b = torch.randint(0, 256, (4,)), torch.randint(0, 256, (10,))
    ids = torch.full((2, 10), 256)
    ids[0, 6:], ids[1] = a, b
    mask = torch.zeros(2, 10, dtype=torch.long)
    mask[0, 6:], mask[1] = 1, 1
    nxt = torch.randint(0, 256, (2, 1))
    with torch.no_grad():
        out = model(ids, attention_mask=mask, use_cache=True)
        mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        step = model(nxt, attention_mask=mask2, past_key_values=out.past_key_values, use_cache=True).logits[:, -1]
        alone_a = model(torch.cat([a, nxt[0]])[None]).logits[:, -1]
    torch.testing.assert_close(step[0:1], alone_a, atol=1e-5, rtol=0)


def test_loss_ignores_minus_100_and_tied_weights():
    model = make()
    torch.manual_seed(0)
    ids = torch.randint(0, 258, (2, 8))
    tgt = torch.randint(0, 258, (2, 8))
    tgt[:, :4] = -100
    out = model(ids, targets=tgt)
    logits = out.logits.float()
    # oracle: the mean cross-entropy over the kept positions only (it never sees -100); a loss that
    # averaged over all 16 positions, or treated -100 as a class, would differ
    want = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, logits.shape[-1]), tgt[:, 4:].reshape(-1))
    assert out.loss.ndim == 0
    torch.testing.assert_close(out.loss, want, atol=1e-6, rtol=1e-6)
    # the logits at ignored positions get no gradient
    out.logits.retain_grad()
    out.loss.backward()
    assert out.logits.grad[:, :4].abs().max() == 0 and out.logits.grad[:, 4:].abs().max() > 0
    assert model.lm_head.weight is model.embed_tokens.weight


def test_rmsnorm_matches_torch():
    x = torch.randn(3, 7, 16)
    n = RMSNorm(16, eps=1e-6)
    torch.nn.init.normal_(n.weight)
    torch.testing.assert_close(n(x), torch.nn.functional.rms_norm(x, (16,), n.weight, 1e-6), atol=1e-6, rtol=1e-5)


def test_bad_inputs_raise_clear_errors():
    model = make()
    with pytest.raises(ValueError, match="batch, seq_len"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="position 70 is beyond max_seq_len=64"):
        model(torch.zeros(1, 2, dtype=torch.long), position_ids=torch.tensor([[3, 70]]))
    # left padding does not count: 70 columns, 60 real tokens -> positions 0..59 fit the window
    mask = torch.cat([torch.zeros(1, 10, dtype=torch.long), torch.ones(1, 60, dtype=torch.long)], 1)
    assert model(torch.zeros(1, 70, dtype=torch.long), attention_mask=mask).logits.shape == (1, 70, 258)


def test_gqa_without_copies_matches_repeat_interleave(monkeypatch):
    """SDPA's enable_gqa reads the grouped K/V heads directly; the old repeat_interleave path
    (kept for torch without it) must give the same logits, cached and uncached."""
    import course_lib.model as model_mod
    from course_lib.config import ModelConfig as MC

    torch.manual_seed(0)
    m = DIYModel(MC(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96, max_seq_len=64)).eval()
    ids = torch.randint(0, 258, (2, 12))
    with torch.no_grad():
        fast = m(ids).logits
        out = m(ids[:, :8], use_cache=True)
        step = m(ids[:, 8:9], past_key_values=out.past_key_values, use_cache=True).logits
        monkeypatch.setattr(model_mod, "SDPA_GQA", False)
        slow = m(ids).logits
    assert model_mod._sdpa_has_gqa(), "torch 2.5+ has enable_gqa; the fast path should be on"
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step[:, 0], slow[:, 8], rtol=1e-5, atol=1e-5)


def test_decode_without_padding_builds_no_mask(monkeypatch):
    """A one-token decode step with no padding sees every cached key: no mask tensor is built."""
    import course_lib.model as model_mod
    from course_lib.config import ModelConfig as MC

    m = DIYModel(MC(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=32)).eval()
    calls = []
    real = model_mod.build_attention_mask
    monkeypatch.setattr(model_mod, "build_attention_mask", lambda *a, **k: calls.append(a) or real(*a, **k))
    with torch.no_grad():
        out = m(torch.randint(0, 258, (1, 5)), use_cache=True)
        m(torch.randint(0, 258, (1, 1)), past_key_values=out.past_key_values, use_cache=True)
    assert calls == []
    with torch.no_grad():  # with padding the mask is still needed
        am = torch.tensor([[0, 1, 1, 1, 1, 1]])
        out = m(torch.randint(0, 258, (1, 5)), attention_mask=am[:, :5], use_cache=True)
        m(torch.randint(0, 258, (1, 1)), attention_mask=am, past_key_values=out.past_key_values, use_cache=True)
    assert len(calls) == 2
