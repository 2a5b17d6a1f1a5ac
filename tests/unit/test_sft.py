"""SFT: the loss mask, packing with per-document attention (== one padded row per conversation),
the stdlib instruction pairs, JSONL errors, `--task sft --init`, and a resume with another tokenizer."""

import json

import pytest
import torch
import torch.nn.functional as F

from course_lib.chat import IM_END
from course_lib.config import ModelConfig, TrainConfig
from course_lib.data import ByteTokenizer, DataError
from course_lib.export import save_inference
from course_lib.model import DIYModel, document_attention_mask, document_positions
from course_lib.sft import (
    IGNORE,
    PackedSFTDataset,
    encode_example,
    load_init,
    pack_examples,
    pad_examples,
    read_sft_jsonl,
    stdlib_instruction_pairs,
)
from course_lib.tokenizer import train_bpe
from course_lib.train import ConfigMismatchError, Trainer
from course_lib.train import main as train_main

TOK = ByteTokenizer()
CONVS = [
    [{"role": "user", "content": "q" * k}, {"role": "assistant", "content": "a" * (2 * k)}] for k in (1, 5, 2, 9, 3)
]
CONVS.append(
    [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "r1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "r2"},
    ]
)
TINY = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=256)


def token_losses(logits, y):
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(y.shape)


def test_loss_mask_is_the_assistants_tokens_only():
    x, y = encode_example(CONVS[-1], TOK)
    trained = "".join(chr(t) if t < 256 else "<eos>" for t in y if t != IGNORE)
    assert trained == "r1" + IM_END + "r2" + IM_END + "<eos>"  # answers, their end markers, the final eos
    assert len(x) == len(y) and y[-1] == TOK.eos_id


def test_document_positions_and_mask():
    doc = torch.tensor([[0, 0, 0, 1, 1, 2]])
    assert document_positions(doc).tolist() == [[0, 1, 2, 0, 1, 0]]
    m = document_attention_mask(doc)[0, 0]
    assert m[4].tolist() == [False, False, False, True, True, False]  # token 4 sees only its document's past
    assert m.sum() == 6 + 3 + 1


def test_packed_equals_one_padded_row_per_example_loss_and_gradients():
    torch.manual_seed(0)
    model = DIYModel(ModelConfig(**TINY))
    ex = [encode_example(c, TOK) for c in CONVS]
    x, y, doc = pack_examples(ex, 200, TOK.pad_id)
    assert x.shape[0] < len(ex) and doc.max() >= 2  # several conversations per row
    xp, yp = pad_examples(ex, 200, TOK.pad_id)
    lp, lq = token_losses(model(x, document_ids=doc).logits, y), token_losses(model(xp).logits, yp)
    # per example: the same token losses (packed: the document's span in its row; padded: its row)
    spans = [(r, int(d)) for r in range(x.shape[0]) for d in doc[r].unique() if (y[r][doc[r] == d] != IGNORE).any()]
    assert len(spans) == len(ex)
    for i, (r, d) in enumerate(spans):
        got = lp[r][doc[r] == d][y[r][doc[r] == d] != IGNORE]
        want = lq[i][yp[i] != IGNORE]
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)  # fp32; only summation order differs
    # gradients: of the whole batch's mean loss, and of one example's loss alone
    for pick in (None, 3):
        grads = []
        for inputs, targets, kw, row in (
            (x, y, {"document_ids": doc}, spans[pick][0] if pick is not None else None),
            (xp, yp, {}, pick),
        ):
            model.zero_grad()
            t = targets.clone()
            if pick is not None:
                keep = torch.zeros_like(t, dtype=torch.bool)
                if kw:
                    keep[row] = doc[row] == spans[pick][1]
                else:
                    keep[row] = True
                t[~keep] = IGNORE
            model(inputs, targets=t, **kw).loss.backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_without_document_ids_packing_leaks_across_conversations():
    """The equality above is not trivial: plain causal attention over a packed row differs."""
    torch.manual_seed(0)
    model = DIYModel(ModelConfig(**TINY))
    x, y, doc = pack_examples([encode_example(c, TOK) for c in CONVS], 200, TOK.pad_id)
    with torch.no_grad():
        a, b = model(x, targets=y, document_ids=doc).loss, model(x, targets=y).loss
    assert abs(float(a) - float(b)) > 1e-4


def test_pack_refuses_an_example_longer_than_a_row():
    with pytest.raises(DataError, match="do not fit seq_len=8"):
        pack_examples([encode_example(CONVS[0], TOK)], 8, TOK.pad_id)


def test_stdlib_pairs_hold_out_whole_functions():
    split = stdlib_instruction_pairs(max_bytes=400_000)
    assert len(split.train) > 100 and len(split.heldout) > 0
    assert {r["source"] for r in split.train}.isdisjoint({r["source"] for r in split.heldout})
    assert {r["kind"] for r in split.train} == {"doc2code", "code2doc"}
    assert stdlib_instruction_pairs(max_bytes=400_000).sha256 == split.sha256  # deterministic
    assert max(len(encode_example(r["messages"], TOK)[0]) for r in split.train) <= 300


def test_jsonl_errors_name_file_line_and_field(tmp_path):
    p = tmp_path / "sft.jsonl"
    p.write_text(
        json.dumps({"prompt": "p", "response": "r"})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]})
        + "\n"
    )
    with pytest.raises(DataError, match=r"sft.jsonl:2: messages\[1\].role: 'bot' is not supported"):
        read_sft_jsonl(p)
    p.write_text("{oops\n")
    with pytest.raises(DataError, match=r"sft.jsonl:1: not valid JSON"):
        read_sft_jsonl(p)


def test_packed_dataset_resumes_at_its_position():
    x, y, doc = pack_examples([encode_example(c, TOK) for c in CONVS * 4], 200, TOK.pad_id)
    ds = PackedSFTDataset(x, y, doc, batch_size=2, seed=3)
    it = iter(ds)
    batches = [next(it) for _ in range(5)]
    again = PackedSFTDataset(x, y, doc, batch_size=2, seed=3)
    again.load_state_dict(ds.state_dict(batches_consumed=3))
    nxt = next(iter(again))
    assert all(torch.equal(a, b) for a, b in zip(nxt, batches[3], strict=True))


def write_sft_data(tmp_path, n=40):
    rows = [{"prompt": f"say {i}", "response": f"{i} " * (1 + i % 3)} for i in range(n)]
    p = tmp_path / "sft.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def test_task_sft_from_an_artefact_on_the_command_line(tmp_path, capsys):
    torch.manual_seed(0)
    init = DIYModel(ModelConfig(**{**TINY, "max_seq_len": 128}))
    save_inference(init, tmp_path / "init")
    data = write_sft_data(tmp_path)
    args = [
        "--task",
        "sft",
        "--data",
        data,
        "--init",
        str(tmp_path / "init"),
        "--seq-len",
        "128",
        "--batch-size",
        "4",
        "--max-steps",
        "3",
        "--warmup-steps",
        "1",
        "--eval-interval",
        "3",
        "--eval-batches",
        "1",
        "--log-interval",
        "1",
        "--ckpt-interval",
        "3",
        "--no-tensorboard",
        "--device",
        "cpu",
        "--out-dir",
        str(tmp_path / "run"),
    ]
    assert train_main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "eval loss" in out
    assert "/v1/chat/completions" in out and "--prompt 'def '" not in out  # a chat model's hint: serve and chat
    # the run stored the init model's config (not the CLI default) and is itself an --init source
    cfg, tok, state = load_init(str(tmp_path / "run"))
    assert (
        cfg.max_seq_len == 128
        and cfg.d_model == 32
        and not torch.equal(state["lm_head.weight"], init.state_dict()["lm_head.weight"])
    )
    assert train_main(["--init", str(tmp_path / "nope"), "--task", "sft", "--out-dir", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --init") and "\n" not in err


def test_resume_with_another_tokenizer_is_refused_in_one_line(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("def f(x):\n    return x\n" * 400)
    tok = train_bpe([corpus.read_text()], vocab_size=300)
    tok_path = tok.save(tmp_path / "tok.json")
    common = [
        "--data",
        str(corpus),
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--max-steps",
        "2",
        "--warmup-steps",
        "1",
        "--eval-interval",
        "2",
        "--eval-batches",
        "1",
        "--ckpt-interval",
        "2",
        "--no-tensorboard",
        "--d-model",
        "32",
        "--n-layers",
        "1",
        "--n-heads",
        "2",
        "--n-kv-heads",
        "1",
        "--ffn-hidden",
        "64",
        "--max-seq-len",
        "64",
        "--device",
        "cpu",
        "--out-dir",
        str(tmp_path / "run"),
    ]
    assert train_main(common + ["--tokenizer", str(tok_path), "--vocab-size", "300"]) == 0
    assert (tmp_path / "run" / "tokenizer.json").read_text() == tok.json  # stored with the run
    capsys.readouterr()
    assert train_main(common + ["--vocab-size", "300", "--max-steps", "4"]) == 2  # --tokenizer byte now
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "trained with tokenizer bpe(vocab_size=" in err and "byte(vocab_size=258)" in err
    other = train_bpe(["完全不同的文本 " * 50], vocab_size=300).save(tmp_path / "other.json")
    with pytest.raises(ConfigMismatchError, match="trained with tokenizer bpe"):
        Trainer(
            ModelConfig(vocab_size=300, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64),
            TrainConfig(
                data=str(corpus),
                seq_len=32,
                batch_size=4,
                max_steps=4,
                warmup_steps=1,
                device="cpu",
                tokenizer=str(other),
                out_dir=str(tmp_path / "run"),
                tensorboard=False,
            ),
            console=False,
        )
