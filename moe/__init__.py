"""A runnable Mixture-of-Experts transformer on the leaked GPT-4 design.

The public API: import these names from `moe`, never from the wings inside, which may move.

    from moe import load_config, MoETransformer, train, load_model, generate, Engine, Request

    config     ModelConfig, TrainConfig, load_config, load_train_config, preset_names, Layout, parse_layout
    model      MoETransformer, Block, ModelOutput, Attention, KVCache, PagedKVCache, Positions, MoELayer,
               moe_layer_reference, TopKRouter, route, RouterOutput
    data       prepare, TokenDataset, load_tokenizer (bytes, bpe:N, cl100k_base, Hugging Face)
    vision     VisionLanguageModel, load_image, render_line (Flamingo-style image path)
    training   train, TrainingError, save_checkpoint, load_model, load_weights, read_config,
               convert_from_hf, convert_to_hf (Mixtral-layout checkpoints)
    serving    generate, Engine, Request, Result, RequestError, SamplingParams
    parallel   train_distributed (under torchrun), parallelize
    estimates  count_params, forward_flops_per_token, print_figures (no torch)

The config, the layout and the estimates import no torch; the torch-backed names are imported on
first use, so `from moe import load_config` works on a machine without torch.
"""

from moe.config import ModelConfig, TrainConfig, load_config, load_train_config, preset_names
from moe.estimates.arithmetic import count_params, forward_flops_per_token
from moe.estimates.report import print_figures
from moe.layout import Layout, parse_layout

_LAZY = {
    **dict.fromkeys(
        [
            "MoETransformer",
            "Block",
            "ModelOutput",
            "Attention",
            "KVCache",
            "PagedKVCache",
            "Positions",
            "MoELayer",
            "moe_layer_reference",
            "TopKRouter",
            "route",
            "RouterOutput",
        ],
        "moe.model",
    ),
    **dict.fromkeys(["TokenDataset", "load_tokenizer"], "moe.data"),
    "prepare": "moe.data.prepare",
    "VisionLanguageModel": "moe.vision",
    "load_image": "moe.vision.images",
    "render_line": "moe.vision.render",
    **dict.fromkeys(
        [
            "train",
            "TrainingError",
            "save_checkpoint",
            "load_model",
            "load_weights",
            "read_config",
            "convert_from_hf",
            "convert_to_hf",
        ],
        "moe.training",
    ),
    **dict.fromkeys(["generate", "Engine", "Request", "Result", "RequestError", "SamplingParams"], "moe.serving"),
    "train_distributed": "moe.parallel.trainer",
    "parallelize": "moe.parallel.parallelize",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'moe' has no attribute {name!r}")


__all__ = [
    "ModelConfig",
    "TrainConfig",
    "load_config",
    "load_train_config",
    "preset_names",
    "Layout",
    "parse_layout",
    "count_params",
    "forward_flops_per_token",
    "print_figures",
    *_LAZY,
]
