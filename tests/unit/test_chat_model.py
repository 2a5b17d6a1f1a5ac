"""The shipped chat model (course_lib/assets/chat_model/): within its size budget, recorded like the
reference model, better than the reference on held-out instructions, and its stored demo is what it
really answers (greedy, so reproducible)."""

import json

import pytest
import torch

from course_lib.export import load_inference
from course_lib.pretrained import REFERENCE_DIR

CHAT_DIR = REFERENCE_DIR.parent / "chat_model"
pytestmark = pytest.mark.skipif(
    not (CHAT_DIR / "model.safetensors").exists(), reason="no chat model shipped (tools/train_chat_model.py)"
)


def test_size_budget_and_training_record():
    rec = json.loads((CHAT_DIR / "TRAINING.json").read_text())
    assert (CHAT_DIR / "model.safetensors").stat().st_size == rec["weights_bytes"] <= rec["weights_budget_bytes"]
    assert "--task sft --init reference" in rec["command"]
    assert rec["heldout_assistant_loss_after_sft"] < rec["heldout_assistant_loss_before_sft"]


def test_stored_demo_is_what_the_model_answers():
    from course_lib.sft import chat_reply

    model, tok, _ = load_inference(CHAT_DIR)
    demo = (CHAT_DIR / "DEMO.txt").read_text(encoding="utf-8")
    assert demo.startswith("sampling: temperature=0.0")
    block = demo.split("### held-out ", 2)[1]
    user = block.split("[user]\n", 1)[1].split("\n[assistant: the model]\n", 1)[0]
    stored = block.split("[assistant: the model]\n", 1)[1].split("\n[reference answer]\n", 1)[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the demo was generated on one thread
    try:
        got = chat_reply(model, tok, [{"role": "user", "content": user}], max_new_tokens=160)
    finally:
        torch.set_num_threads(threads)
    assert got == stored
