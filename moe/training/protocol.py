"""What the training loop (moe/training/loop.py) drives and reads from.

Trainer   one process's trainer (moe/training/local.py) or one rank's part of a parallel layout
          (moe/parallel/trainer.py). Both answer the same calls, so the loop is written once. The
          loop builds one with build(model_cfg, train_cfg, device, init_from) (init_from: a
          checkpoint whose weights to start from).
Task      what a model learns from and what its evaluation reports besides the loss, chosen by the
          model's config (moe/training/task.py), so neither the loop nor a trainer names a kind of model
Dataset   what the loop samples batches from: a TokenDataset (moe/data/dataset.py) or a task's own
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Protocol

import torch

from moe.data.tokenizer import Tokenizer


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


class Dataset(Protocol):
    name: str  # for the log and summary.json
    tokenizer: Tokenizer  # saved beside the weights; the model's vocabulary must hold it

    def batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator, rows=None):
        """Random examples of "train" or "val": (inputs, targets [B, T]). The generator draws the whole
        batch; rows: return only those rows of it (a data-parallel rank's share)."""

    def check_seq_len(self, seq_len: int) -> None:
        """Raise a ValueError if examples of seq_len tokens cannot be drawn."""

    def bits_per_byte(self, nats_per_token: float) -> float:
        """A validation loss in bits per byte of text."""

    def eval_sets(self, batch_size: int, seq_len: int, generator: torch.Generator, rows, n: int) -> dict:
        """{source name: (weight, n validation batches)}: one source, or each of a mixture's
        (moe/data/mixture.py); the overall validation loss is the weighted mean."""

    def state(self) -> dict:
        """Where the training draws stand beyond the loop's generator (a mixture's rows per source),
        saved in every checkpoint; {} when the generator holds it all."""

    def load_state(self, state: dict) -> None:
        """Continue from a checkpoint's state()."""

    def progress(self) -> dict:
        """Per source of a mixture: {name: {tokens, epochs}} drawn so far; {} for one source."""


class Task(Protocol):
    def dataset(self, data) -> Dataset:
        """The data to train on, given `train`'s data argument (a directory, a TokenDataset or None)."""

    def setup(self, model: torch.nn.Module) -> None:
        """Prepare a freshly built (and loaded) model for training, e.g. freeze the parts that keep their weights."""

    def compile(self, model: torch.nn.Module) -> None:
        """Put the parts of `model` that torch.compile should train through it, in place."""

    def eval_extras(self, model: torch.nn.Module, device: torch.device) -> dict:
        """History fields beyond the loss at an evaluation (moe/training/loop.py's History); {} for none."""


class Trainer(Protocol):
    is_main: bool  # logs, writes the summary, the plot and the run directory's bookkeeping
    compile_s: float | None  # seconds of the first step when it compiled the step (None: eager, or not yet)

    def batch_rows(self, batch_size: int) -> list[int] | None:
        """The rows of each global batch this process reads and trains on (None: all of them)."""

    def step(self, x_BT: torch.Tensor, y_BT: torch.Tensor, lr: float) -> StepResult:
        """One optimizer step on the global batch, of which x and y are this process's batch_rows
        (raise NonFiniteLoss before updating)."""

    def evaluate(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Mean cross-entropy over the global batches (this process's rows of each), no update."""

    def eval_extras(self) -> dict:
        """The task's fields beyond the loss for this evaluation (Task.eval_extras), the same on every process."""

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
