"""Bring your own model (course_lib/protocol.py): two foreign models, an HF ``LlamaForCausalLM`` and a
nanoGPT-style GPT (tests/unit/foreign_models.py), go through the real train command, a SIGKILL, a
bitwise resume, generate and the inference artefact; the nanoGPT model, whose attention follows the
course's cache convention, also runs in every cache kind and in the engine; the HF adapter
(recompute mode) is refused by the engine with a message naming what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import foreign_models  # noqa: E402,F401  (ModelSpec imports it by name; fail early if it breaks)

from course_lib.checkpoint import CheckpointManager  # noqa: E402
from course_lib.config import ConfigError, TrainConfig  # noqa: E402
from course_lib.engine import Engine  # noqa: E402
from course_lib.export import export_from_run, load_inference, load_model_from_run  # noqa: E402
from course_lib.faults import fault_env  # noqa: E402
from course_lib.generate import generate, left_pad  # noqa: E402
from course_lib.protocol import CausalLM, ModelSpec, as_causal_lm, load_factory  # noqa: E402
from course_lib.train import ConfigMismatchError, Trainer  # noqa: E402

NANO = ("foreign_models:NanoGPT", {"n_layer": 2, "n_embd": 32})
LLAMA = ("foreign_models:tiny_llama", {"hidden_size": 32, "layers": 2})


def test_native_model_in_every_cache_kind_and_the_engine():
    torch.manual_seed(0)
    model = ModelSpec(*NANO).build().eval()
    assert isinstance(model, CausalLM)
    ids = torch.randint(0, 258, (2, 10), generator=torch.Generator().manual_seed(0))
    ref = generate(model, ids, 12, use_cache=False)
    for kind in ("dynamic", "static", "paged"):
        assert torch.equal(generate(model, ids, 12, cache=kind), ref), kind
    x, m = left_pad([[1, 2, 3, 4, 5], [7, 8]], 0)  # left-padded row == the row alone
    assert torch.equal(generate(model, x, 6, attention_mask=m)[1], generate(model, torch.tensor([[7, 8]]), 6)[0])
    engine = Engine(model, max_batch=4)
    reqs = [engine.submit(r.tolist(), 12) for r in ids]
    engine.run_until_done()
    assert [r.output for r in reqs] == ref.tolist()


def test_hf_llama_generates_hf_greedy_tokens_and_the_engine_says_why_not():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = ModelSpec(*LLAMA).build().eval()
    assert type(model).__name__ == "HFCausalLM" and model.config.max_seq_len == 64
    ids = torch.randint(0, 258, (2, 10), generator=torch.Generator().manual_seed(0))
    got = generate(model, ids, 12)
    want = model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)[:, 10:]
    assert torch.equal(got, want)
    assert torch.equal(generate(model, ids, 12, use_cache=False), got)
    x, m = left_pad([[1, 2, 3, 4, 5], [7, 8]], 0)
    assert torch.equal(generate(model, x, 6, attention_mask=m)[1], generate(model, torch.tensor([[7, 8]]), 6)[0])
    # training loss: HF's own shifted-labels loss equals ours on aligned targets
    seq = torch.randint(0, 258, (2, 17), generator=torch.Generator().manual_seed(1))
    ours = model(seq[:, :-1], targets=seq[:, 1:]).loss
    theirs = model.hf(input_ids=seq[:, :-1], labels=seq[:, :-1].clone()).loss  # HF shifts inside
    full = model.hf(input_ids=seq).logits[:, :-1]
    assert torch.allclose(
        ours, torch.nn.functional.cross_entropy(full.reshape(-1, 258), seq[:, 1:].reshape(-1)), atol=1e-5
    )
    assert theirs.isfinite()
    engine = Engine(model, max_batch=2)
    r = engine.submit([1, 2, 3], 4)
    engine.run_until_done()
    assert r.finish_reason == "error" and "cache.update" in r.error


class Stage3GPT(torch.nn.Module):
    """nanoGPT's forward shape: (idx, targets=None) -> (logits, loss), last position only without targets."""

    def __init__(self, vocab_size=258, block_size=32, n_embd=16):
        super().__init__()
        self.wte, self.wpe = torch.nn.Embedding(vocab_size, n_embd), torch.nn.Embedding(block_size, n_embd)
        self.attn = torch.nn.MultiheadAttention(n_embd, 2, batch_first=True)
        self.head = torch.nn.Linear(n_embd, vocab_size)

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T))
        causal = torch.ones(T, T, dtype=torch.bool).triu(1)
        x = x + self.attn(x, x, x, attn_mask=causal, need_weights=False)[0]
        if targets is None:
            return self.head(x[:, [-1]]), None
        logits = self.head(x)
        return logits, torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def make_stage3(**kw):
    from course_lib.protocol import PlainCausalLM

    return PlainCausalLM(Stage3GPT(**kw), vocab_size=kw.get("vocab_size", 258), max_seq_len=kw.get("block_size", 32))


def test_plain_stage3_model_trains_resumes_and_generates(tmp_path):
    spec = ModelSpec(make_stage3, {"block_size": 32})  # a callable: in-process, e.g. from a notebook
    assert spec.to_dict()["class"].endswith(":make_stage3") and spec.max_seq_len == 32
    cfg = TrainConfig(
        data=corpus(tmp_path),
        max_steps=4,
        batch_size=2,
        seq_len=16,
        warmup_steps=1,
        ckpt_interval=2,
        eval_interval=2,
        eval_batches=1,
        out_dir=str(tmp_path / "r"),
        device="cpu",
        tensorboard=False,
        val_fraction=0.1,
    )
    tr = Trainer(spec, cfg, console=False)
    hist = tr.fit()
    assert len(hist) == 4 and all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    again = Trainer(spec, cfg, console=False)  # resumes at the end: the state dict round-trips
    assert again.step == 4
    assert all(
        torch.equal(a, b)
        for a, b in zip(tr.model.state_dict().values(), again.model.state_dict().values(), strict=True)
    )
    model = tr.model.eval()
    ids = torch.randint(0, 258, (2, 5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(generate(model, ids, 8), generate(model, ids, 8, use_cache=False))
    x, m = left_pad([[1, 2, 3], [4]], 0)
    with pytest.raises(ValueError, match="padded batches"):
        generate(model, x, 2, attention_mask=m)


def test_bad_model_class_is_one_line():
    with pytest.raises(ConfigError, match="package.module:Factory"):
        load_factory("foreign_models.NanoGPT")
    with pytest.raises(ConfigError, match="cannot import"):
        load_factory("no_such_module_xyz:Model")
    with pytest.raises(ConfigError, match="has no"):
        load_factory("foreign_models:Nope")
    with pytest.raises(ConfigError, match="forward lacks"):
        as_causal_lm(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------
# the real train command: uninterrupted vs SIGKILLed + resumed, bitwise; then generate/export
# ------------------------------------------------------------------------------------------
def corpus(tmp: Path) -> str:
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "course_lib").glob("*.py")))
    (tmp / "c.txt").write_text(text[:40_000], encoding="utf-8")
    return str(tmp / "c.txt")


def train(spec, data: str, out: Path, extra_env=None) -> subprocess.CompletedProcess:
    import json

    cmd = [
        sys.executable,
        "-m",
        "course_lib.train",
        "--model-class",
        spec[0],
        "--model-kwargs",
        json.dumps(spec[1]),
        "--data",
        data,
        "--device",
        "cpu",
        "--max-steps",
        "6",
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--warmup-steps",
        "2",
        "--eval-interval",
        "3",
        "--eval-batches",
        "1",
        "--log-interval",
        "3",
        "--ckpt-interval",
        "2",
        "--no-tensorboard",
        "--val-fraction",
        "0.1",
        "--out-dir",
        str(out),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]), OMP_NUM_THREADS="1", **(extra_env or {}))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{prefix}/{i}")


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("spec", [NANO, LLAMA], ids=["nanogpt", "hf-llama"])
def test_train_kill_resume_generate(spec, tmp_path):
    if spec is LLAMA:
        pytest.importorskip("transformers")
    data = corpus(tmp_path)
    ref, run = tmp_path / "ref", tmp_path / "run"
    p = train(spec, data, ref)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "parameters" in p.stdout
    p = train(spec, data, run, fault_env("after_step", 3))
    assert p.returncode in (-9, 137), (p.returncode, p.stderr[-2000:])
    p = train(spec, data, run)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resumed from" in p.stdout and "at step 2" in p.stdout
    a, _ = CheckpointManager(ref, verbose=False).load_latest()
    b, _ = CheckpointManager(run, verbose=False).load_latest()
    assert a["step"] == b["step"] == 6
    assert a["config"]["model"] == {"class": spec[0], "kwargs": spec[1]}
    pa, pb = (
        dict(tensors({"m": a["model"], "o": a["optimizer"]})),
        dict(tensors({"m": b["model"], "o": b["optimizer"]})),
    )
    assert pa.keys() == pb.keys() and len(pa) > 10
    assert all(torch.equal(pa[k], pb[k]) for k in pa), [k for k in pa if not torch.equal(pa[k], pb[k])][:5]

    # generate from the run folder (the model is rebuilt from the spec stored in the checkpoint)
    model, tok, _ = load_model_from_run(run)
    prompt = torch.tensor([tok.encode("def main():\n")])
    out = generate(model, prompt, 10)
    assert torch.equal(out, generate(model, prompt, 10, use_cache=False))
    # the inference artefact carries the spec and rebuilds the same model
    export_from_run(run, tmp_path / "art")
    loaded, _, meta = load_inference(tmp_path / "art")
    assert meta["model"]["class"] == spec[0]
    assert torch.equal(generate(loaded, prompt, 10), out)

    # resuming with another model spec is refused (it would overwrite the run)
    other = ModelSpec(spec[0], {**spec[1], "seed": 1} if spec is LLAMA else {**spec[1], "n_head": 4})
    cfg = TrainConfig(
        data=data,
        max_steps=8,
        batch_size=4,
        seq_len=32,
        warmup_steps=2,
        out_dir=str(run),
        device="cpu",
        tensorboard=False,
        val_fraction=0.1,
    )
    with pytest.raises(ConfigMismatchError, match="different model config"):
        Trainer(other, cfg, console=False)


def test_fsdp_refused_for_a_foreign_model(tmp_path):
    cfg = TrainConfig(
        data=corpus(tmp_path),
        max_steps=2,
        batch_size=2,
        seq_len=16,
        warmup_steps=0,
        out_dir=str(tmp_path / "r"),
        device="cpu",
        tensorboard=False,
        strategy="fsdp",
    )
    with pytest.raises(ConfigError, match="--strategy ddp"):
        Trainer(ModelSpec(*NANO), cfg, console=False)


@pytest.mark.parametrize(
    "argv,expected",
    [
        (
            ["--model-class", "foreign_models:NanoGPT", "--model-kwargs", "[1]"],
            "--model-kwargs: expected a JSON object",
        ),
        (["--model-class", "foreign_models:NanoGPT", "--model-kwargs", "{bad"], "--model-kwargs: not valid JSON"),
        (["--model-class", "no_such_mod_xyz:M"], "--model-class: cannot import"),
    ],
)
def test_cli_model_class_errors_are_one_line(argv, expected, capsys):
    from course_lib.train import main as train_main

    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
