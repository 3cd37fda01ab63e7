"""The training task a model's config chooses (the Task protocol, moe/training/protocol.py).

    TextTask      a text model: a prepared dataset (text, or packed instruction data) or the bundled
                  corpus; compiled whole; no extras
    CaptionTask   a config with a [vision] table: rendered lines of the bundled corpus (moe/vision/task.py)

task_for is the one place training tells the kinds apart: the loop takes its dataset from the task,
and LocalTrainer its model set-up, its compiled parts and its evaluation extras.
"""

from __future__ import annotations

import torch

from moe.config import ModelConfig, TrainConfig
from moe.data import TokenDataset, open_data
from moe.data.instruct import InstructDataset, is_instruct
from moe.data.mixture import Mixture
from moe.training.protocol import Dataset, Task


def open_dataset(data, val_fraction: float, seed: int) -> Dataset:
    """`train --data PATH`: instruction data (moe/data/instruct.py, packed with the run's seed), a
    prepared text dataset, or None / 'shakespeare' for the bundled corpus (moe/data/dataset.py)."""
    if data is not None and is_instruct(data):
        return InstructDataset.open(data, seed)
    return open_data(data, val_fraction)


class TextTask:
    def __init__(self, val_fraction: float, seed: int = 0):
        self.val_fraction, self.seed = val_fraction, seed

    def dataset(self, data) -> Dataset:
        """`data` opened (open_dataset); a TokenDataset, InstructDataset or Mixture
        (moe/data/mixture.py) as it is."""
        if isinstance(data, (TokenDataset, InstructDataset, Mixture)):
            return data
        return open_dataset(data, self.val_fraction, self.seed)

    def setup(self, model: torch.nn.Module) -> None:
        pass  # every parameter learns

    def compile(self, model: torch.nn.Module) -> None:
        model.compile()  # whole, from the embedding to the loss

    def eval_extras(self, model: torch.nn.Module, device: torch.device) -> dict:
        return {}


def task_for(model_cfg: ModelConfig, train_cfg: TrainConfig) -> Task:
    if model_cfg.vision is None:
        return TextTask(train_cfg.val_fraction, train_cfg.seed)
    from moe.vision.task import CaptionTask

    return CaptionTask(model_cfg, train_cfg)
