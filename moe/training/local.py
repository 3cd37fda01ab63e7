"""One process's trainer: the whole model on one device, AdamW, bf16 autocast on a GPU.
The training loop (moe/training/loop.py) drives it; moe/parallel/trainer.py is its twin for a layout."""

from __future__ import annotations

import contextlib
import math
import pathlib
import time

import torch

from moe import devices
from moe.config import ModelConfig, TrainConfig
from moe.data.instruct import Packed
from moe.model.init import materialize
from moe.model.positions import Positions
from moe.model.router import update_balance_biases
from moe.training import checkpoint
from moe.training.checkpoint import build_model
from moe.training.optim import load_optimizer_state, make_optimizer, set_lr
from moe.training.protocol import NonFiniteLoss, StepResult, TrainingError
from moe.training.run_dir import is_distributed
from moe.training.task import task_for


def model_inputs(x, device: torch.device) -> dict:
    """A batch's inputs as the model's keywords, on `device`: token ids, (token ids, images) from a
    dataset of captioned images, or Packed rows of whole examples (moe/data/instruct.py), whose
    positions restart with each example and whose attention stays inside it."""
    if isinstance(x, tuple):
        return {"idx_BT": x[0].to(device), "images": x[1].to(device)}
    if isinstance(x, Packed):
        return {"idx_BT": x.idx_BT.to(device), "positions": Positions.packed(x.doc_BT.to(device))}
    return {"idx_BT": x.to(device)}


def autocast(device: torch.device):
    """bf16 autocast on a GPU; float32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class LocalTrainer:
    is_main = True

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, device: str | None = None, init_from=None):
        self.device = devices.resolve(device)
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        torch.manual_seed(train_cfg.seed)
        with torch.device("meta"):  # built as every layout builds it (moe/parallel/trainer.py)
            self.model = build_model(model_cfg)
        materialize(self.model, model_cfg, self.device, train_cfg.seed)
        if init_from is not None:  # start from these weights (any checkpoint that fits, distributed ones too)
            checkpoint.load_weights(self.model, init_from)
        self.task = task_for(model_cfg, train_cfg)  # what is frozen and compiled, what evaluation adds
        self.task.setup(self.model)
        self.optimizer = make_optimizer(
            [p for p in self.model.parameters() if p.requires_grad], train_cfg, compiled=train_cfg.compile
        )
        self.model.train()
        self._update = self._clip_and_update
        # --compile: the step through torch.compile in two parts, the forward (its backward derived
        # from it by AOTAutograd) and the update (clipping and AdamW, fused loops over every parameter
        # instead of a kernel per tensor and operation; torch.optim splits it with a graph break).
        # Inductor fuses the norms, rotary, router, permutation and combine around the matrix
        # products, which it calls as they are (the grouped matmuls are custom operators: no break).
        # The task says which modules compile (a text model whole, from the embedding to the loss).
        # Evaluation stays eager, so the one forward compilation is the training graph's; compile_s
        # is the first step, compilation included.
        if train_cfg.compile:
            self.task.compile(self.model)
            self._update = torch.compile(self._clip_and_update)
        self.compile_s: float | None = None

    def batch_rows(self, batch_size: int) -> None:
        return None  # one process reads the whole batch

    def step(self, x_BT, y_BT, lr: float) -> StepResult:
        set_lr(self.optimizer, lr)
        first = self.train_cfg.compile and self.compile_s is None
        start = time.perf_counter()
        with autocast(self.device):
            out = self._forward(x_BT, y_BT)
        loss = out.loss.item()
        if not math.isfinite(loss):
            raise NonFiniteLoss(loss)
        (out.loss + out.aux_loss).backward()
        norm = self._update()
        norm = None if norm is None else float(norm)
        update_balance_biases(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        if first:
            self.compile_s = time.perf_counter() - start
        return StepResult(loss, norm, torch.stack([r.tokens_per_expert for r in out.routing]).cpu())

    def _clip_and_update(self) -> torch.Tensor | None:
        """Clip the gradients' global norm to grad_clip (when > 0; returns the norm before clipping),
        then the AdamW step."""
        norm = None
        if self.train_cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train_cfg.grad_clip)
        self.optimizer.step()
        return norm

    @torch.no_grad()
    def evaluate(self, batches) -> float:
        self.model.eval()
        losses = []
        for x, y in batches:
            with autocast(self.device), torch.compiler.set_stance("force_eager"):  # compiled blocks run eagerly
                losses.append(self._forward(x, y).loss.item())
        self.model.train()
        return sum(losses) / len(losses)

    def _forward(self, x, y):
        """The model on a batch (model_inputs)."""
        return self.model(**model_inputs(x, self.device), targets=y.to(self.device))

    def eval_extras(self) -> dict:
        """The task's fields beyond the loss (e.g. a reading score), computed as evaluate computes."""
        with autocast(self.device), torch.compiler.set_stance("force_eager"):
            return self.task.eval_extras(self.model, self.device)

    def nonfinite_weights(self) -> list[str]:
        return [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]

    def save(self, out_dir: pathlib.Path, state: dict, step: int, files: dict[str, bytes]) -> pathlib.Path:
        state = dict(state, optimizer=self.optimizer.state_dict(), torch_rng=torch.get_rng_state())
        return checkpoint.save_checkpoint(out_dir, self.model, self.model_cfg, self.train_cfg, state, step, files)

    def load(self, step_dir: pathlib.Path) -> tuple[dict, str]:
        if is_distributed(step_dir):
            raise TrainingError(
                f"{step_dir} was written by distributed training: resume it through "
                "moe.parallel.train_distributed (the CLI does so, in one process too)"
            )
        checkpoint.load_weights(self.model, step_dir)
        state = checkpoint.load_trainer_state(step_dir)
        if state is None:
            raise TrainingError(f"{step_dir} has no trainer.pt: it holds weights only and cannot be resumed")
        load_optimizer_state(self.optimizer, state.pop("optimizer"))
        torch.set_rng_state(state.pop("torch_rng"))  # router jitter draws from it
        return state, ""

    def agree(self, value: int) -> int:
        return value

    def any(self, flag: bool) -> bool:
        return flag

    def describe(self) -> dict:
        compiled = {"compile_s": round(self.compile_s, 2)} if self.compile_s is not None else {}
        return {
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "compiled": self.train_cfg.compile,
            **compiled,
        }
