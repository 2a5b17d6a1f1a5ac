"""The trainer's callback interface: hooks a component can override to join the loop.

``Trainer`` calls every hook of every callback at fixed points of a training run; the base
class implements each as a no-op (``on_batch`` returns the batch unchanged), so a callback
overrides only what it needs. Kept in a leaf module so that components such as
``monitor.ProgressBar`` can declare "I am a callback" without importing the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor


class Callback:
    """Override what you need. ``trainer`` (a ``train.Trainer``) gives access to model, optimizer,
    step, config."""

    def on_train_start(self, trainer: Any) -> None:
        """Once, after resuming (``trainer.step`` is the step training continues from)."""

    def on_batch(self, trainer: Any, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Each micro-batch before the forward; return the (possibly replaced) batch."""
        return x, y

    def on_after_backward(self, trainer: Any) -> None:
        """After the backward of the step's last micro-batch, before unscaling, clipping and the optimizer step."""

    def on_step_end(self, trainer: Any, metrics: dict) -> None:
        """After each optimizer step, with the step's metrics (loss, lr, grad_norm, ...)."""

    def on_checkpoint(self, trainer: Any, path: Path) -> None:
        """After a checkpoint has been written completely to ``path``."""

    def on_train_end(self, trainer: Any) -> None:
        """Once, after the last step (not called when training raised an error)."""
