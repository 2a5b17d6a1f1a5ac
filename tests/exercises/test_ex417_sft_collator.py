"""Grader for ex417: the SFT collator (loss mask + packing with per-document attention).

Oracle: course_lib.sft.encode_example + pack_examples (inputs, labels, document ids) and
course_lib.model.document_positions (positions). Training-relevant check: the learner's four tensors
through the real DIYModel give every conversation the same token losses and the same gradients as
one conversation per row with right padding (course_lib.sft.pad_examples), fp32, atol 2e-5 on the
losses and 1e-6 / rtol 1e-4 on the gradients (only the summation order differs).
"""

import pytest
import torch
import torch.nn.functional as F

from course_lib.chat import encode_chat
from course_lib.config import ModelConfig
from course_lib.data import ByteTokenizer
from course_lib.model import DIYModel, document_positions
from course_lib.sft import IGNORE, encode_example, pack_examples, pad_examples

EX = "ex417_sft_collator"
TOK = ByteTokenizer()
SEQ = 200
TINY = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=256)
NAMES = ("input_ids", "labels", "position_ids", "document_ids")


def conversations():
    convs = [
        [{"role": "user", "content": "q" * k}, {"role": "assistant", "content": "a" * (2 * k)}] for k in (1, 5, 2, 9)
    ]
    convs.append(
        [
            {"role": "system", "content": "简短回答"},
            {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "2"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    )
    convs.append([{"role": "user", "content": "def f(x):"}, {"role": "assistant", "content": "return x"}])
    convs.append([{"role": "user", "content": "z" * 30}, {"role": "assistant", "content": "ok"}])
    return convs


def learner_inputs(convs):
    """What the learner gets: (ids with the final <eos>, assistant mask) per conversation."""
    out = []
    for c in convs:
        ids, mask = encode_chat(c, TOK)
        out.append((ids + [TOK.eos_id], mask + [True]))
    return out


def oracle(convs, seq_len=SEQ):
    x, y, doc = pack_examples([encode_example(c, TOK) for c in convs], seq_len, TOK.pad_id)
    return x, y, document_positions(doc), doc


def run(impl, convs, seq_len=SEQ):
    out = impl(EX).collate_packed(learner_inputs(convs), seq_len, TOK.pad_id)
    assert isinstance(out, tuple) and len(out) == 4, (
        f"collate_packed 应返回 4 个张量的元组 (input_ids, labels, position_ids, document_ids)，实际返回 {type(out).__name__}"
        + (f"（长度 {len(out)}）" if isinstance(out, (tuple, list)) else "")
    )
    want = oracle(convs, seq_len)
    for name, got, w in zip(NAMES, out, want, strict=True):
        assert isinstance(got, torch.Tensor), f"{name} 应是 torch.Tensor，实际是 {type(got).__name__}"
        assert got.dtype == torch.int64, f"{name} 的 dtype 应是 torch.int64，实际是 {got.dtype}"
        assert tuple(got.shape) == tuple(w.shape), (
            f"{name} 的形状应是 {tuple(w.shape)}（{w.shape[0]} 行，每行 seq_len={seq_len}，按顺序贪心打包），"
            f"实际是 {tuple(got.shape)}"
        )
    return out, want


def first_diff(got, want):
    r, t = (got != want).nonzero()[0].tolist()
    return r, t, int(got[r, t]), int(want[r, t])


def describe(convs, r, t, seq_len=SEQ):
    """Which conversation (and which token of it) the oracle puts at row r, column t."""
    x, y, _, doc = oracle(convs, seq_len)
    d = int(doc[r, t])
    start = int((doc[r] == d).nonzero()[0])
    ex_rows = [
        (rr, int(dd)) for rr in range(doc.shape[0]) for dd in doc[rr].unique() if (y[rr][doc[rr] == dd] != IGNORE).any()
    ]
    if (r, d) not in ex_rows:
        return "行尾的 padding"
    return f"第 {ex_rows.index((r, d))} 条对话的第 {t - start} 个输入 token"


def test_labels_mask_everything_but_the_assistants_next_tokens(impl):
    convs = conversations()
    (x, y, pos, doc), (wx, wy, wpos, wdoc) = run(impl, convs)
    if torch.equal(y, wy):
        return
    has = y != IGNORE
    if has.any() and torch.equal(y[has], x[has]):
        raise AssertionError(
            "labels 里每个保留下来的标签都等于同一位置的输入 token：标签没有错一位 (shift)。"
            "DIYModel 不会在内部移位（Hugging Face 的模型才会）：labels[t] 必须是下一个 token ids[t+1]，"
            "掩码也要看 mask[t+1]"
        )
    r, t, got, want = first_diff(y, wy)
    where = f"labels[{r}, {t}]（{describe(convs, r, t)}）"
    if want == IGNORE:
        raise AssertionError(
            f"{where} 应为 -100，实际是 {got}：下一个 token 不属于助手的回答（是 system/user 的内容、模板标记 "
            "<|im_start|>… 或 padding），它不该计入 loss。掩码要看**标签**那个 token 的 assistant_mask，也就是 mask[t+1]"
        )
    nxt = int(wx[r, t + 1]) if t + 1 < wx.shape[1] else None
    if got == int(wx[r, t]):
        raise AssertionError(
            f"{where} 应是下一个 token {want}，实际是这个位置自己的输入 token {got}：标签没有错一位 (shift)。"
            "DIYModel 不会在内部移位：labels[t] 必须是 ids[t+1]"
        )
    raise AssertionError(
        f"{where} 应是 {want}（下一个 token，它属于助手的回答），实际是 {got}"
        + (f"；它后面那个输入 token 是 {nxt}" if nxt is not None else "")
    )


def test_input_ids_are_packed_in_order_with_padding(impl):
    convs = conversations()
    (x, *_), (wx, *_) = run(impl, convs)
    if not torch.equal(x, wx):
        r, t, got, want = first_diff(x, wx)
        raise AssertionError(
            f"input_ids[{r}, {t}]（{describe(convs, r, t)}）应是 {want}，实际是 {got}："
            "每条对话贡献 ids[:-1]，按顺序贪心打包（放得下就接在当前行后面，放不下就开新行），行尾填 pad_id"
        )


def test_document_ids_number_the_conversations_of_each_row(impl):
    convs = conversations()
    (_, _, _, doc), (*_, wdoc) = run(impl, convs)
    if not torch.equal(doc, wdoc):
        r, t, got, want = first_diff(doc, wdoc)
        leak = (
            " 同一行里的两条对话用了同一个 id，注意力会跨文档 (cross-document attention)：后一条对话能看到前一条"
            if (doc[r] == doc[r, 0]).all() and (wdoc[r] != wdoc[r, 0]).any()
            else ""
        )
        raise AssertionError(
            f"document_ids[{r}, {t}]（{describe(convs, r, t)}）应是 {want}，实际是 {got}：每行的对话依次编号 0, 1, 2…，"
            f"行尾的 padding 是再下一个编号。{leak}"
        )


def test_positions_restart_at_every_document(impl):
    convs = conversations()
    (_, _, pos, _), (_, _, wpos, _) = run(impl, convs)
    if not torch.equal(pos, wpos):
        r, t, got, want = first_diff(pos, wpos)
        raise AssertionError(
            f"position_ids[{r}, {t}]（{describe(convs, r, t)}）应是 {want}，实际是 {got}："
            "每个文档（包括行尾的 padding）从位置 0 重新数起，这样打包后每条对话的 RoPE 位置与单独一行时相同"
        )


def token_losses(logits, y):
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(y.shape)


def test_packed_rows_train_exactly_like_one_padded_row_per_conversation(impl):
    """The training-relevant check: losses and gradients through the real model."""
    convs = conversations()
    (x, y, pos, doc), (_, wy, _, wdoc) = run(impl, convs)
    torch.manual_seed(0)
    model = DIYModel(ModelConfig(**TINY))
    ex = [encode_example(c, TOK) for c in convs]
    xp, yp = pad_examples(ex, SEQ, TOK.pad_id)
    # per conversation: its token losses in the learner's packed rows (at the oracle's place) vs its padded row
    with torch.no_grad():
        lp = token_losses(model(x, position_ids=pos, document_ids=doc).logits, y)
        lq = token_losses(model(xp).logits, yp)
    spans = [
        (r, int(d)) for r in range(wdoc.shape[0]) for d in wdoc[r].unique() if (wy[r][wdoc[r] == d] != IGNORE).any()
    ]
    for i, (r, d) in enumerate(spans):
        got, want = lp[r][(wdoc[r] == d) & (wy[r] != IGNORE)], lq[i][yp[i] != IGNORE]
        if not (got.shape == want.shape and torch.allclose(got, want, atol=2e-5, rtol=1e-5)):
            raise AssertionError(
                f"第 {i} 条对话：打包后它的 token loss 与单独一行（右侧 padding）时不同"
                f"（打包 {got.sum():.5f}，单独 {want.sum():.5f}，{got.numel()} vs {want.numel()} 个计入 loss 的 token）。"
                "检查 document_ids（同一行的对话不能互相看到）、position_ids（每条对话从 0 数起）和 labels"
            )
    # gradients of the summed loss: packed batch vs padded batch
    grads = []
    for inputs, targets, kw in ((x, y, {"position_ids": pos, "document_ids": doc}), (xp, yp, {})):
        model.zero_grad()
        token_losses(model(inputs, **kw).logits, targets).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    names = [n for n, _ in model.named_parameters()]
    for n, a, b in zip(names, *grads, strict=True):
        if not torch.allclose(a, b, atol=1e-6, rtol=1e-4):
            raise AssertionError(
                f"参数 {n} 的梯度：打包的 batch 与一条对话一行的 batch 不同（最大差 {(a - b).abs().max():.2e}）："
                "打包改变了训练（多算了或少算了某些位置的 loss，或对话之间互相看得到）"
            )


def test_a_conversation_filling_a_row_exactly_fits_and_a_longer_one_is_refused(impl):
    mod = impl(EX)
    ids, mask = learner_inputs(conversations()[:1])[0]
    n = len(ids) - 1
    x, y, pos, doc = mod.collate_packed([(ids, mask)], n, TOK.pad_id)
    assert tuple(x.shape) == (1, n), (
        f"一条 {n} 个输入的对话正好填满 seq_len={n} 的一行，结果应是 1 行，实际形状 {tuple(x.shape)}"
    )
    with pytest.raises(ValueError):
        mod.collate_packed([(ids, mask)], n - 1, TOK.pad_id)
