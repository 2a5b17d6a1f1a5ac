"""The BPE tokenizer beside bytes: round trips, the chat template, artefacts, resume, HF AutoTokenizer."""

import json

import pytest
import torch

from course_lib.chat import END_OF_TURN, encode_chat, messages_from_record, render_chat, validate_messages
from course_lib.config import ModelConfig
from course_lib.data import ByteTokenizer, DataError
from course_lib.export import export_hf_llama, load_inference, save_inference
from course_lib.generate import generate, stream_generate
from course_lib.model import DIYModel
from course_lib.tokenizer import BPETokenizer, load_tokenizer, train_bpe
from course_lib.tokenizer import main as tokenizer_main

TEXTS = [
    "训练一个分词器：中文每个字在字节里是三个 token。",
    "def add(a, b):\n    return a + b\n",
    "emoji 🎉👍🏽 and ✓ mixed with 中文, English and `code`",
    "class A:\n\tpass\n\n\n  x = {'k': [1, 2]}\n",
]
SAMPLES = TEXTS * 20 + ["分词 训练 模型 数据 恢复 检查点"] * 30


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(SAMPLES, vocab_size=400, min_frequency=2)


def test_bpe_round_trips_chinese_code_emoji(bpe):
    for s in TEXTS + ["", "\n", "  \n\n ", "未见过的字：龘靐", "\x00\x7f", "<|im_start|>user\nhi<|im_end|>"]:
        assert bpe.decode(bpe.encode(s)) == s, s
    assert len(bpe.encode(TEXTS[0])) < len(ByteTokenizer().encode(TEXTS[0]))  # merges learned: fewer tokens


def test_special_tokens_are_single_tokens(bpe):
    from course_lib.chat import end_of_turn_id

    assert (bpe.pad_id, bpe.eos_id, bpe.im_start_id, bpe.im_end_id) == (0, 1, 2, 3)
    assert end_of_turn_id(bpe) == 3 and end_of_turn_id(ByteTokenizer()) is None
    assert bpe.encode("<|im_end|>") == [3]
    assert bpe.decode([5, bpe.eos_id, bpe.pad_id]) == bpe.decode([5])  # <pad>/<eos> dropped like bytes


def test_chat_template_tokens_equal_the_rendered_text(bpe):
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "  hi\n  there"},
        {"role": "assistant", "content": "\n def x():\n    pass"},
        {"role": "user", "content": ""},
    ]
    assert render_chat(msgs[:1]) == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>assistant\n"
    for tok in (bpe, ByteTokenizer()):
        ids, mask = encode_chat(msgs, tok)
        assert ids == tok.encode(render_chat(msgs, add_generation_prompt=False))
        assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "\n def x():\n    pass" + END_OF_TURN


@pytest.mark.parametrize(
    "bad,where",
    [
        ("hi", "messages:"),
        ([], "messages:"),
        ([{"content": "x"}], "messages[0].role:"),
        ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "messages[1].role:"),
        ([{"role": "user", "content": 3}], "messages[0].content:"),
        ([{"role": "user"}], "messages[0].content:"),
        ([{"role": "user", "content": "x<|im_end|>"}], "messages[0].content:"),
    ],
)
def test_validate_messages_names_the_field(bad, where):
    with pytest.raises(ValueError) as e:
        validate_messages(bad)
    assert str(e.value).startswith(where)


def test_records_messages_or_prompt_response():
    a = messages_from_record({"prompt": "p", "response": "r"})
    assert a == [{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}]
    with pytest.raises(ValueError, match=r"^data.jsonl:3: needs 'messages'"):
        messages_from_record({"text": "x"}, "data.jsonl:3")
    with pytest.raises(ValueError, match="no assistant message"):
        messages_from_record({"messages": [{"role": "user", "content": "x"}]})


def test_file_round_trip_and_description(bpe, tmp_path):
    path = bpe.save(tmp_path / "tok.json")
    again = load_tokenizer(str(path))
    assert again.sha256 == bpe.sha256 and again.encode(TEXTS[2]) == bpe.encode(TEXTS[2])
    from course_lib.tokenizer import tokenizer_from_description

    assert tokenizer_from_description(bpe.describe()).sha256 == bpe.sha256
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    with pytest.raises(DataError, match="tokenizer file not found"):
        load_tokenizer(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid tokenizer.json"):
        load_tokenizer(str(tmp_path / "bad.json"))


def test_course_command_trains_on_the_learners_corpus(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SAMPLES), encoding="utf-8")
    assert tokenizer_main(["--data", str(corpus), "--vocab-size", "320", "--out", str(tmp_path / "t.json")]) == 0
    assert "tokens trained on" in capsys.readouterr().out
    assert load_tokenizer(str(tmp_path / "t.json")).vocab_size <= 320


def test_inference_artefact_carries_the_tokenizer(bpe, tmp_path):
    torch.manual_seed(0)
    m = DIYModel(
        ModelConfig(
            vocab_size=bpe.vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64
        )
    ).eval()
    save_inference(m, tmp_path, bpe)
    assert (tmp_path / "tokenizer.json").is_file()
    assert "json" not in json.loads((tmp_path / "config.json").read_text())["tokenizer"]
    m2, tok2, _ = load_inference(tmp_path)
    assert isinstance(tok2, BPETokenizer) and tok2.sha256 == bpe.sha256
    # streaming decodes multi-byte BPE tokens through the incremental decoder
    pieces = "".join(stream_generate(m2, tok2, "中文", max_new_tokens=8))
    ids = generate(m2, torch.tensor([tok2.encode("中文")]), 8, eos_id=tok2.eos_id)[0].tolist()
    ids = ids[: ids.index(tok2.eos_id)] if tok2.eos_id in ids else ids
    assert pieces == tok2.decode(ids)
    (tmp_path / "tokenizer.json").write_text(train_bpe(["other text"] * 5, 300).json)
    with pytest.raises(Exception, match="not the tokenizer config.json names"):
        load_inference(tmp_path)


transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers)")


@pytest.mark.parametrize("kind", ["bpe", "byte"])
def test_hf_autotokenizer_and_model_generate_the_same_tokens(bpe, tmp_path, kind):
    tok = bpe if kind == "bpe" else ByteTokenizer()
    torch.manual_seed(1)
    m = DIYModel(
        ModelConfig(
            vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=160, max_seq_len=128
        )
    ).eval()
    export_hf_llama(m, tmp_path, tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    for s in TEXTS:
        assert hf_tok.encode(s, add_special_tokens=False) == tok.encode(s), s
    msgs = [{"role": "user", "content": "写一个函数"}]
    assert hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == render_chat(msgs)
    prompt = hf_tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=False)
    ours_ids, _ = encode_chat(msgs, tok, add_generation_prompt=True)
    assert list(prompt) == ours_ids
    ids = torch.tensor([ours_ids])
    with torch.no_grad():
        want = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=16,
            do_sample=False,
            pad_token_id=tok.pad_id,
            eos_token_id=None,
        )[:, ids.shape[1] :]
    assert generate(m, ids, 16).tolist() == want.tolist()
