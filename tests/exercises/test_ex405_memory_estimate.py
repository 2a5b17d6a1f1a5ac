"""Grader for exercises/ex405_memory_estimate.py. Oracle: the real tensors. We run a real
backward and a real optimizer step, then add up the bytes of the gradients and of the
optimizer's state tensors (the 0-dim Adam step counters excluded, as the contract says).
Exact integers: no tolerance needed."""

import pytest
import torch

EX = "ex405_memory_estimate"


class Tiny(torch.nn.Module):
    def __init__(self, tied=True, frozen=False, dtype=torch.float32):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16, dtype=dtype)
        self.mid = torch.nn.Linear(16, 16, dtype=dtype)
        self.head = torch.nn.Linear(16, 50, bias=False, dtype=dtype)
        if tied:
            self.head.weight = self.emb.weight
        if frozen:
            self.mid.requires_grad_(False)

    def forward(self, x):
        return self.head(self.mid(self.emb(x)))


def measured(model, optimizer):
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = {
        "adamw": lambda: torch.optim.AdamW(trainable, lr=1e-3),
        "sgd_momentum": lambda: torch.optim.SGD(trainable, lr=1e-3, momentum=0.9),
        "sgd": lambda: torch.optim.SGD(trainable, lr=1e-3),
    }[optimizer]()
    model(torch.randint(0, 50, (2, 5))).float().sum().backward()
    opt.step()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    state = sum(
        t.numel() * t.element_size()
        for s in opt.state.values()
        for t in s.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    return {"params": params, "grads": grads, "optimizer_state": state, "total": params + grads + state}


@pytest.mark.parametrize(
    "tied,frozen,dtype,optimizer",
    [
        (False, False, torch.float32, "adamw"),
        (True, False, torch.float32, "adamw"),
        (True, True, torch.float32, "adamw"),
        (True, False, torch.bfloat16, "adamw"),
        (False, False, torch.float32, "sgd_momentum"),
        (True, True, torch.float32, "sgd"),
    ],
)
def test_matches_real_tensors(impl, tied, frozen, dtype, optimizer):
    torch.manual_seed(0)
    want = measured(Tiny(tied, frozen, dtype), optimizer)
    got = impl(EX).static_training_bytes(Tiny(tied, frozen, dtype), optimizer)
    for k in ("params", "grads", "optimizer_state", "total"):
        assert got.get(k) == want[k], (
            f"{k}（tied={tied}, frozen={frozen}, dtype={dtype}, optimizer={optimizer}）：实测 {want[k]} 字节，"
            f"你的估计 {got.get(k)}。提示：共享参数只算一次；冻结参数没有梯度和优化器状态；用 element_size()"
        )
