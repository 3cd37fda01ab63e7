"""The training task a model's config chooses (the Task protocol, moe/training/protocol.py).

    TextTask      a text model: a prepared dataset or the bundled corpus; compiled whole; no extras
    CaptionTask   a config with a [vision] table: rendered lines of the bundled corpus (moe/vision/task.py)

task_for is the one place training tells the kinds apart: the loop takes its dataset from the task,
and LocalTrainer its model set-up, its compiled parts and its evaluation extras.
"""

from __future__ import annotations

import torch

from moe.config import ModelConfig, TrainConfig
from moe.data import TokenDataset, open_data
from moe.data.mixture import Mixture
from moe.training.protocol import Task


class TextTask:
    def __init__(self, val_fraction: float):
        self.val_fraction = val_fraction

    def dataset(self, data) -> TokenDataset:
        """`data` opened (moe/data/dataset.py): a prepared directory, or None for the bundled corpus;
        a TokenDataset or a Mixture (moe/data/mixture.py) as it is."""
        return data if isinstance(data, (TokenDataset, Mixture)) else open_data(data, self.val_fraction)

    def setup(self, model: torch.nn.Module) -> None:
        pass  # every parameter learns

    def compile(self, model: torch.nn.Module) -> None:
        model.compile()  # whole, from the embedding to the loss

    def eval_extras(self, model: torch.nn.Module, device: torch.device) -> dict:
        return {}


def task_for(model_cfg: ModelConfig, train_cfg: TrainConfig) -> Task:
    if model_cfg.vision is None:
        return TextTask(train_cfg.val_fraction)
    from moe.vision.task import CaptionTask

    return CaptionTask(model_cfg, train_cfg)
