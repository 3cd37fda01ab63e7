"""Stage 2 (Flamingo's recipe) as a training task: what the training loop reads for a config with a
[vision] table (moe/training/task.py chooses it; it answers the Task protocol of
moe/training/protocol.py, which this wing does not import).

    dataset       rendered lines of the bundled corpus, each followed by its transcription (captions.py)
    setup         the language model frozen unless train_language_model; the vision path learns
    compile       the language model's blocks through torch.compile, the vision path eager
    eval_extras   the gates of every gated block and the character error rate on held-out lines
"""

from __future__ import annotations

import torch

from moe.config import ModelConfig, TrainConfig
from moe.vision.captions import CaptionDataset
from moe.vision.model import VisionLanguageModel
from moe.vision.transcribe import cer, held_out, transcribe

HELD_OUT_LINES = 100  # read greedily at every evaluation: the same lines and pixels every time


class CaptionTask:
    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig):
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self._reading_set: tuple[list[str], torch.Tensor] | None = None  # held-out lines and their images

    def dataset(self, data) -> CaptionDataset:
        if data is not None:
            raise ValueError(
                f"config {self.model_cfg.name!r} trains its vision path on rendered lines of the "
                "bundled corpus; --data is for text models"
            )
        return CaptionDataset.bundled(self.model_cfg.vision, self.train_cfg.val_fraction)

    def setup(self, model: VisionLanguageModel) -> None:
        model.freeze_language_model(not self.train_cfg.train_language_model)

    def compile(self, model: VisionLanguageModel) -> None:
        for block in model.lm.blocks:  # each in place: they share their code, so one compilation serves all
            block.compile()

    def eval_extras(self, model: VisionLanguageModel, device: torch.device) -> dict:
        """{"gates": (tanh attn, tanh mlp) per gated block, "cer": the character error rate of greedy
        transcriptions of HELD_OUT_LINES validation lines}."""
        if self._reading_set is None:
            lines, images = held_out(self.dataset(None), HELD_OUT_LINES)
            self._reading_set = lines, images.to(device)
        lines, images = self._reading_set
        return {"gates": model.gates(), "cer": cer(transcribe(model, images), lines)}
