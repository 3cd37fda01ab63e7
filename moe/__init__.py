"""A runnable Mixture-of-Experts transformer on the leaked GPT-4 design.

The config and the parameter/FLOP arithmetic import no torch; the torch-backed names below are
imported on first use, so `from moe import load_config` works on a machine without torch.
"""

from moe.config import ModelConfig, TrainConfig, load_config, load_train_config

_LAZY = {
    "MoETransformer": "moe.model", "Block": "moe.model", "ModelOutput": "moe.model",
    "Attention": "moe.attention", "KVCache": "moe.kv_cache", "PagedKVCache": "moe.kv_cache",
    "MoELayer": "moe.moe_layer", "moe_layer_reference": "moe.moe_layer",
    "TopKRouter": "moe.router", "route": "moe.router", "RouterOutput": "moe.router",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'moe' has no attribute {name!r}")


__all__ = ["ModelConfig", "TrainConfig", "load_config", "load_train_config", *_LAZY]
