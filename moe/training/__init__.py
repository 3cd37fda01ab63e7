"""The training wing: one loop for one process and for every parallel layout, and the run directory.

loop        train(): data, schedule, time budget, evaluation, checkpoints, history, summary, plot
protocol    what the loop drives (Trainer) and how a step reports (StepResult, TrainingError)
local       LocalTrainer: one process, the whole model
optim       AdamW groups and the learning-rate schedule
run_dir     step directories and `latest`, published without a gap
checkpoint  one process's checkpoints (safetensors); loads any checkpoint, whole
hf_convert  Hugging Face MoE checkpoints (Mixtral, Qwen3-MoE, Qwen2-MoE, OLMoE, gpt-oss) to ours and back
plots       loss curves and expert-load heatmaps
"""

from moe.training.checkpoint import load_model, load_weights, read_config, save_checkpoint
from moe.training.hf_convert import from_hf as convert_from_hf
from moe.training.hf_convert import to_hf as convert_to_hf
from moe.training.loop import train
from moe.training.protocol import TrainingError

__all__ = [
    "train",
    "TrainingError",
    "load_model",
    "load_weights",
    "read_config",
    "save_checkpoint",
    "convert_from_hf",
    "convert_to_hf",
]
