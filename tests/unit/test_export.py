"""Inference artefact: save -> load in a fresh process -> same logits; mismatches are refused."""

import json
import subprocess
import sys

import pytest
import torch

from course_lib.config import ModelConfig
from course_lib.export import ExportError, export_from_run, load_inference, save_inference, tied_weights
from course_lib.model import DIYModel


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return DIYModel(
        ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_seq_len=64, **kw)
    ).eval()


def test_round_trip_same_logits_and_tied_weights_stored_once(tmp_path):
    m = make()
    save_inference(m, tmp_path)
    from safetensors.torch import load_file

    names = set(load_file(str(tmp_path / "model.safetensors")))
    assert "embed_tokens.weight" in names and "lm_head.weight" not in names
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["tied_weights"] == {"lm_head.weight": "embed_tokens.weight"}
    assert meta["tokenizer"]["type"] == "byte"
    m2, tok, _ = load_inference(tmp_path)
    assert m2.lm_head.weight is m2.embed_tokens.weight, "the tie must be restored on load"
    ids = torch.randint(0, 258, (2, 16))
    with torch.no_grad():
        assert torch.equal(m(ids).logits, m2(ids).logits)


def test_untied_model_round_trip(tmp_path):
    m = make(tie_embeddings=False)
    assert tied_weights(m) == {}
    save_inference(m, tmp_path)
    m2, _, _ = load_inference(tmp_path)
    ids = torch.randint(0, 258, (1, 8))
    with torch.no_grad():
        assert torch.equal(m(ids).logits, m2(ids).logits)


def test_fresh_process_loads_and_generates(tmp_path):
    m = make()
    save_inference(m, tmp_path)
    ids = torch.tensor([[100, 101, 32, 102]])
    from course_lib.generate import generate

    want = generate(m, ids, 8).tolist()
    code = (
        "import sys, torch; from course_lib.export import load_inference; from course_lib.generate import generate;"
        "m, tok, _ = load_inference(sys.argv[1]); print(generate(m, torch.tensor([[100, 101, 32, 102]]), 8).tolist())"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(want)


def test_config_weights_mismatch_names_tensors_and_shapes(tmp_path):
    save_inference(make(), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model"]["d_model"] = 128
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError) as e:
        load_inference(tmp_path)
    msg = str(e.value)
    assert "embed_tokens.weight" in msg and "(258, 64)" in msg and "(258, 128)" in msg


def test_missing_layer_reported(tmp_path):
    save_inference(make(), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model"]["n_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match=r"missing from the file: \['layers\.2\."):
        load_inference(tmp_path)


def test_pickle_file_is_never_unpickled(tmp_path):
    save_inference(make(), tmp_path)

    class Boom:
        def __reduce__(self):
            return (exec, ("open(r'%s', 'w').write('pwned')" % (tmp_path / "pwned"),))

    torch.save({"x": Boom()}, tmp_path / "model.safetensors")
    with pytest.raises(ExportError, match="safetensors"):
        load_inference(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_export_from_training_run_is_much_smaller(tmp_path):
    from course_lib.config import TrainConfig
    from course_lib.train import Trainer

    mc = ModelConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=32)
    tc = TrainConfig(
        max_steps=2,
        batch_size=2,
        seq_len=16,
        warmup_steps=0,
        ckpt_interval=2,
        eval_interval=100,
        log_interval=1,
        device="cpu",
        out_dir=str(tmp_path / "run"),
        tensorboard=False,
    )
    Trainer(mc, tc, console=False).fit()
    info = export_from_run(tmp_path / "run", tmp_path / "art")
    ckpt_bytes = (info["checkpoint"] / "state.pt").stat().st_size
    weights = (tmp_path / "art" / "model.safetensors").stat().st_size
    assert info["step"] == 2
    assert weights < ckpt_bytes / 2.5, (weights, ckpt_bytes)  # no optimizer moments, no RNG, no data state
    m, _, meta = load_inference(tmp_path / "art")
    assert meta["source_checkpoint"]["step"] == 2


def test_reference_model_ships_and_loads():
    from course_lib.pretrained import REFERENCE_DIR, load_reference_model, reference_info

    m, tok = load_reference_model()
    info = reference_info()
    # issue 13: at least 15% below the first shipped model's 1.57 nats/byte
    assert info["final_eval_loss"] is not None and info["final_eval_loss"] <= 0.85 * 1.57, info["final_eval_loss"]
    assert len(info["data"]["sha256"]) == 64
    assert "/" not in info["data"]["source"], "TRAINING.json must not record the building machine's paths"
    assert (REFERENCE_DIR / "model.safetensors").stat().st_size < 8_000_000  # kept small: it is in git
    assert m.num_parameters() > 500_000
