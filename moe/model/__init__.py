"""The model wing: modules built from a ModelConfig. Imports nothing from training, serving or parallel.

transformer  MoETransformer (embedding, blocks, head) and Block (attention, then the MoE MLP)
attention    multi-query / grouped-query attention with rotary positions
kv_cache     KVCache (contiguous) and PagedKVCache (pages and block tables)
positions    Positions: where a forward pass's tokens sit, and which cache they use
router       route() and TopKRouter: top-k, aux losses, jitter, capacity
moe_layer    MoELayer (route, cast, call the experts) and moe_layer_reference (a per-token loop)
experts      the experts seam and LocalExperts
"""

from moe.model.attention import Attention
from moe.model.experts import LocalExperts
from moe.model.kv_cache import KVCache, PagedKVCache
from moe.model.moe_layer import MoELayer, moe_layer_reference
from moe.model.positions import Positions
from moe.model.router import RouterOutput, TopKRouter, route
from moe.model.transformer import Block, ModelOutput, MoETransformer

__all__ = [
    "MoETransformer",
    "Block",
    "ModelOutput",
    "Attention",
    "KVCache",
    "PagedKVCache",
    "Positions",
    "MoELayer",
    "moe_layer_reference",
    "LocalExperts",
    "TopKRouter",
    "route",
    "RouterOutput",
]
