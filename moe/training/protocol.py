"""What the training loop (moe/training/loop.py) drives: one process's trainer
(moe/training/local.py) or one rank's part of a parallel layout (moe/parallel/trainer.py).
Both answer the same calls, so the loop is written once. The loop builds one with
build(model_cfg, train_cfg, device, init_from) (init_from: a checkpoint whose weights to start from)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Protocol

import torch


class TrainingError(RuntimeError):
    """Training stopped on purpose (a non-finite loss or weights); the message says what is kept."""


class NonFiniteLoss(TrainingError):
    """Raised by a trainer's step before it updates anything."""

    def __init__(self, loss: float):
        super().__init__(f"loss became {loss}")
        self.loss = loss


@dataclass
class StepResult:
    loss: float  # cross-entropy of the global batch, the same on every process
    grad_norm: float | None  # before clipping (None when not computed)
    expert_tokens_LE: torch.Tensor | None  # int64 [layers, experts] assignments this step, where known


class Trainer(Protocol):
    is_main: bool  # logs, writes the summary, the plot and the run directory's bookkeeping

    def batch_rows(self, batch_size: int) -> list[int] | None:
        """The rows of each global batch this process reads and trains on (None: all of them)."""

    def step(self, x_BT: torch.Tensor, y_BT: torch.Tensor, lr: float) -> StepResult:
        """One optimizer step on the global batch, of which x and y are this process's batch_rows
        (raise NonFiniteLoss before updating)."""

    def evaluate(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Mean cross-entropy over the global batches (this process's rows of each), no update."""

    def nonfinite_weights(self) -> list[str]:
        """Names of parameters holding inf or NaN (on any process)."""

    def save(self, out_dir: pathlib.Path, state: dict, step: int, files: dict[str, bytes]) -> pathlib.Path:
        """A checkpoint of the weights, the optimizer, the loop's `state` and `files` (name -> content,
        e.g. the tokenizer); returns its step directory."""

    def load(self, step_dir: pathlib.Path) -> tuple[dict, str]:
        """Restore the weights and the optimizer; return the loop's state and a note for the log."""

    def agree(self, value: int) -> int:
        """The main process's value, on every process (decisions taken from one clock)."""

    def any(self, flag: bool) -> bool:
        """Whether any process says so (e.g. an interrupt reached one of them)."""

    def describe(self) -> dict:
        """Fields for summary.json: device, versions, layout."""
