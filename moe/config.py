"""Model and training configuration: dataclasses validated on construction, TOML presets.

This module imports no torch, so the GPT-4-scale arithmetic (moe/estimates/arithmetic.py) runs anywhere.

    cfg = load_config("tiny", n_layers=2)          # preset name, or a path to a .toml file
    train = load_train_config("tiny", lr=1e-3)     # the preset's [train] table, with overrides

A preset file holds the model fields at top level, the training settings in a `[train]` table, and
optionally a parallel layout in a `[parallel]` table (moe/layout.py).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
from dataclasses import dataclass, fields

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _preset_dir() -> pathlib.Path:
    """configs/ ships in the package as moe/presets (pyproject.toml maps it); in a checkout or an
    editable install, read it where it stands."""
    installed = pathlib.Path(__file__).resolve().parent / "presets"
    return installed if installed.is_dir() else pathlib.Path(__file__).resolve().parent.parent / "configs"


CONFIG_DIR = _preset_dir()
ACTIVATIONS = ("gelu", "swiglu", "clamped_swiglu")  # kernels' ACTIVATIONS (a test keeps them equal)
QK_NORMS = ("none", "head", "projection")
LAYER_TYPES = ("full_attention", "sliding_attention")  # transformers' names


def _number(value) -> bool:
    """A finite int or float (not a bool, not nan or inf)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _positive(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not _number(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def _non_negative(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not _number(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _integers(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")


# kernels cannot import moe, so these repeat kernels.BACKENDS and "none" + kernels.SCHEMES; a test keeps them equal
EXPERT_BACKENDS = ("auto", "torch", "triton")
EXPERT_QUANT = ("none", "int8", "fp8", "int4")


# moe/model/router.py's RULES (the config imports no torch); a test keeps them equal
ROUTER_RULES = ("softmax_topk", "topk_softmax", "sigmoid_topk", "expert_choice")

ROPE_TYPES = ("linear", "dynamic", "yarn")
# the keys each rope_type reads (transformers' names); original_max_position_embeddings defaults to
# max_seq_len where a type reads it (transformers: max_position_embeddings), linear ignores it
_ROPE_KEYS = {
    "linear": {"factor", "original_max_position_embeddings"},
    "dynamic": {"factor", "original_max_position_embeddings"},
    "yarn": {
        "factor",
        "original_max_position_embeddings",
        "beta_fast",
        "beta_slow",
        "attention_factor",
        "mscale",
        "mscale_all_dim",
        "truncate",
    },
}


def rope_scaling_of(scaling, max_seq_len: int) -> dict | None:
    """rope_scaling as transformers writes it (rope_parameters without rope_theta), checked, with its
    defaults filled in: None or rope_type "default" is plain RoPE (None); dynamic and yarn read
    original_max_position_embeddings (default max_seq_len); yarn's factor defaults to
    max_seq_len / original_max_position_embeddings. Raises a ValueError naming the key that is
    missing, unknown or out of range."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling must be a table (dict) or absent, got {scaling!r}")
    scaling = dict(scaling)
    if "type" in scaling and "rope_type" not in scaling:  # transformers 4's spelling
        scaling["rope_type"] = scaling.pop("type")
    kind = scaling.get("rope_type")
    if kind == "default" and set(scaling) == {"rope_type"}:
        return None
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_scaling.rope_type must be one of {ROPE_TYPES} (or 'default': plain RoPE), got {kind!r}")
    allowed = _ROPE_KEYS[kind] | {"rope_type"}
    unknown = sorted(set(scaling) - allowed)
    if unknown:
        raise ValueError(f"rope_scaling: unknown key(s) {unknown} for rope_type {kind!r}; known: {sorted(allowed)}")
    if kind != "linear":
        scaling.setdefault("original_max_position_embeddings", max_seq_len)
    original = scaling.get("original_max_position_embeddings", max_seq_len)
    if isinstance(original, bool) or not isinstance(original, int) or not 0 < original <= max_seq_len:
        raise ValueError(
            f"rope_scaling.original_max_position_embeddings must be an integer in [1, max_seq_len="
            f"{max_seq_len}] (the pretraining length), got {original!r}"
        )
    if kind == "yarn" and scaling.get("factor") is None:
        scaling["factor"] = max_seq_len / original
    factor = scaling.get("factor")
    if not _number(factor) or factor < 1:
        raise ValueError(f"rope_scaling.factor must be a number >= 1, got {factor!r}")
    for key in ("beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim"):
        if scaling.get(key) is not None and (not _number(scaling[key]) or scaling[key] <= 0):
            raise ValueError(f"rope_scaling.{key} must be a number > 0, got {scaling[key]!r}")
    if "truncate" in scaling and not isinstance(scaling["truncate"], bool):
        raise ValueError(f"rope_scaling.truncate must be true or false, got {scaling['truncate']!r}")
    return scaling


@dataclass(frozen=True)
class VisionConfig:
    """The vision path (moe/vision/): a ViT image encoder, a Perceiver Resampler, and gated
    cross-attention blocks inserted into the language model, as in Flamingo. A preset's `[vision]` table."""

    channels: int = 1  # 1: grayscale (rendered text), 3: RGB
    image_height: int = 16  # the largest image, in pixels; smaller ones use the first rows/columns of
    image_width: int = 192  # the learned 2-D position tables. Both multiples of patch_size
    patch_size: int = 4
    # "patches": ViT patches of patch_size x patch_size pixels. "strips": a 3 x 3 convolution (stem_channels
    # wide, GELU), then one token per full-height column strip patch_size pixels wide, so a glyph of a
    # line of text lands in one or two tokens instead of being cut across rows of patches
    stem: str = "patches"
    stem_channels: int = 32
    d_model: int = 96  # the encoder's width (and the resampler's, and the visual tokens')
    n_layers: int = 2  # encoder blocks (pre-norm, bidirectional attention, GELU MLP); 0: the stem alone
    n_heads: int = 4  # encoder and resampler attention heads
    d_ff: int = 384  # the encoder's and resampler's MLP width
    n_latents: int = 48  # visual tokens per image, whatever its size
    resampler_layers: int = 2
    cross_attn_every: int = 1  # a gated cross-attention block before every n-th language-model block
    xattn_d_ff: int = 0  # the gated blocks' feed-forward width; 0: 4 x the language model's d_model
    query_offsets: int = 0  # > 0: the gated blocks' queries add a learned embedding of the token's distance
    # from its image (0 .. query_offsets - 1, clamped); 0: Flamingo's plain queries
    image_token: int = 0  # the token id that stands for an image in the text (<image>)
    # True: reading-order windows on the attention scores (moe/vision/reading.py): the resampler's
    # latent l reads the columns near l * columns / n_latents (fixed), and the token d after its image
    # reads the visual tokens near a d + b (a, b, width learned). False: Flamingo's attention, content only
    reading_window: bool = False
    # Where the gated blocks' windows start (visual tokens per text token, the first token's place, the
    # width). The slope may be a list, one per language-model head: a bank of reading speeds, of which
    # the data picks. The defaults say nothing about the renderer's pitch (1.5 strips per character)
    reading_slope: float | tuple = 1.0
    reading_start: float = 0.0
    reading_width: float = 8.0

    def __post_init__(self) -> None:
        if self.stem not in ("patches", "strips"):
            raise ValueError(f"vision.stem must be 'patches' or 'strips', got {self.stem!r}")
        if not isinstance(self.reading_window, bool):
            raise ValueError(f"vision.reading_window must be true or false, got {self.reading_window!r}")
        if isinstance(self.reading_slope, (list, tuple)):
            object.__setattr__(self, "reading_slope", tuple(self.reading_slope))
            if not self.reading_slope or not all(_number(a) for a in self.reading_slope):
                raise ValueError(
                    f"vision.reading_slope must be a number or a list of numbers, got {self.reading_slope!r}"
                )
        elif not _number(self.reading_slope):
            raise ValueError(f"vision.reading_slope must be a number or a list of numbers, got {self.reading_slope!r}")
        for name in ("reading_start", "reading_width"):
            if not _number(getattr(self, name)):
                raise ValueError(f"vision.{name} must be a finite number, got {getattr(self, name)!r}")
        if self.reading_width <= 0:
            raise ValueError(f"vision.reading_width must be > 0, got {self.reading_width!r}")
        sizes = (
            "channels",
            "image_height",
            "image_width",
            "patch_size",
            "d_model",
            "n_heads",
            "d_ff",
            "n_latents",
            "resampler_layers",
            "cross_attn_every",
            "stem_channels",
        )
        _integers(self, *sizes, "n_layers", "xattn_d_ff", "image_token", "query_offsets")
        _positive(self, *sizes)
        _non_negative(self, "n_layers", "xattn_d_ff", "image_token", "query_offsets")
        for side in ("image_height", "image_width"):
            if getattr(self, side) % self.patch_size:
                raise ValueError(
                    f"vision.{side} ({getattr(self, side)}) must be a multiple of vision.patch_size ({self.patch_size})"
                )
        if self.d_model % self.n_heads:
            raise ValueError(f"vision.d_model ({self.d_model}) must be divisible by vision.n_heads ({self.n_heads})")

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, columns) of patches (strips: one row) of the largest image."""
        rows = 1 if self.stem == "strips" else self.image_height // self.patch_size
        return rows, self.image_width // self.patch_size


@dataclass(frozen=True)
class ModelConfig:
    name: str = "custom"
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 1  # 1: multi-query attention; 1 < n_kv_heads < n_heads: grouped-query
    head_dim: int = 0  # 0: d_model // n_heads
    n_experts: int = 16
    top_k: int = 2
    d_ff: int = 256  # hidden width of one expert
    # "gelu": gelu(x W_up) W_down;  "swiglu": (silu(x W_gate) * x W_up) W_down;  "clamped_swiglu":
    # gpt-oss's, with its clamps and +1 (kernels/expert_mlp.py has the formula)
    activation: str = "gelu"
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    # RoPE scaling for a context longer than pretraining, with Hugging Face's keys and meanings
    # (transformers 5: rope_parameters = {"rope_theta": rope_theta, **rope_scaling}); moe/model/rope.py
    # has the formulas. {"rope_type": "linear" | "dynamic" | "yarn", "factor": > 1,
    # "original_max_position_embeddings": the pretraining length, yarn: "beta_fast", "beta_slow",
    # "attention_factor", "truncate"}. None: plain RoPE.
    rope_scaling: dict | None = None
    # Attention as the open MoE families vary it (moe/model/attention.py); the defaults: plain attention
    qkv_bias: bool = False  # biases on the q, k, v projections (Qwen2-MoE, gpt-oss)
    out_bias: bool = False  # ... and on the output projection (gpt-oss)
    # RMSNorm of q and k before RoPE: "head" over each head's head_dim (Qwen3-MoE), "projection" over
    # the whole projection, n_heads * head_dim and n_kv_heads * head_dim (OLMoE)
    qk_norm: str = "none"
    qkv_clip: float = 0.0  # > 0: q, k, v clamped to [-qkv_clip, qkv_clip] after the projections (OLMoE)
    attention_sinks: bool = False  # one learned logit per head in every softmax's denominator (gpt-oss)
    # > 0: in a sliding layer a query sees the last sliding_window positions, itself included
    sliding_window: int = 0
    # LAYER_TYPES, layer by layer, repeated when shorter than n_layers (gpt-oss: ["sliding_attention",
    # "full_attention"]); None: every layer sliding when sliding_window > 0, else full
    layer_types: tuple | None = None
    expert_bias: bool = False  # biases on the experts' projections (gpt-oss)
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02
    # Router (moe/model/router.py documents the formulas).
    router_renormalize: bool = True  # rescale the top-k probabilities of a token to sum to 1
    router_aux_loss_coef: float = 0.01  # load-balancing loss coefficient
    router_z_loss_coef: float = 0.001
    router_jitter: float = 0.0  # training only: router input *= U(1 - eps, 1 + eps)
    capacity_factor: float = 0.0  # 0: dropless; else capacity = ceil(cf * T * k / n_experts)
    # The routing rule, one of ROUTER_RULES: softmax_topk (Mixtral, Qwen, OLMoE, Switch), topk_softmax
    # (gpt-oss), sigmoid_topk (DeepSeek-V3, Llama 4), expert_choice (training only)
    router_rule: str = "softmax_topk"
    router_bias: bool = False  # the gate has a learned bias (gpt-oss)
    router_score_bias: bool = False  # a bias on the scores that steers the choice only (DeepSeek-V3)
    router_bias_update_rate: float = 0.0  # > 0: learn that bias from the experts' load, no gradient
    router_groups: int = 1  # group-limited choice (DeepSeek-V3's n_group, topk_group)
    router_topk_groups: int = 1
    router_scale: float = 1.0  # routing weights x this (DeepSeek-V3's routed_scaling_factor)
    router_scale_input: bool = False  # top-1 only: scale the expert's input, not its output (Llama 4)
    # Shared experts: an MLP of this width every token passes through beside the routed ones (0: none;
    # DeepSeek's n_shared_experts x moe_intermediate_size), optionally behind a sigmoid gate (Qwen2-MoE)
    shared_d_ff: int = 0
    shared_gate: bool = False
    expert_backend: str = "auto"  # expert matmuls: "auto" (Triton on CUDA, PyTorch elsewhere) | "torch" | "triton"
    # Serving only: the experts' weights stored weight-only quantized, "none" | "int8" | "fp8" | "int4"
    # (kernels/quantized.py; python -m moe quantize writes such checkpoints; train refuses them).
    expert_quant: str = "none"
    quantize_dense: bool = False  # with expert_quant: the attention projections and the output head too
    vision: VisionConfig | None = None  # a [vision] table: the model reads images too (moe/vision/)

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):  # from TOML or a checkpoint's config.json
            object.__setattr__(self, "vision", from_dict(VisionConfig, self.vision, "the [vision] table"))
        if self.vision is not None and not isinstance(self.vision, VisionConfig):
            raise ValueError(f"vision must be a table or absent, got {self.vision!r}")
        sizes = (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "n_experts",
            "top_k",
            "d_ff",
            "max_seq_len",
        )
        _integers(self, *sizes, "head_dim")
        _positive(self, *sizes, "rope_theta", "norm_eps", "init_std")
        _non_negative(
            self, "head_dim", "router_aux_loss_coef", "router_z_loss_coef", "router_jitter", "capacity_factor"
        )
        if self.head_dim == 0 and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}) unless head_dim is given"
            )
        if self.head_dim == 0:  # frozen dataclass: derive the default through object.__setattr__
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k ({self.top_k}) must be <= n_experts ({self.n_experts})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.router_jitter >= 1:
            raise ValueError(f"router_jitter must be < 1, got {self.router_jitter}")
        self._check_router()
        self._check_attention()
        if self.expert_backend not in EXPERT_BACKENDS:
            raise ValueError(f"expert_backend must be 'auto', 'torch' or 'triton', got {self.expert_backend!r}")
        object.__setattr__(self, "rope_scaling", rope_scaling_of(self.rope_scaling, self.max_seq_len))
        if self.expert_quant not in EXPERT_QUANT:
            raise ValueError(f"expert_quant must be one of {EXPERT_QUANT}, got {self.expert_quant!r}")
        if not isinstance(self.quantize_dense, bool):
            raise ValueError(f"quantize_dense must be true or false, got {self.quantize_dense!r}")
        if self.quantize_dense and (self.expert_quant == "none" or self.tie_embeddings):
            raise ValueError(
                "quantize_dense needs expert_quant set (it takes the same scheme) and untied "
                "embeddings (a tied head is the embedding table)"
            )
        if self.vision is not None:
            slopes = self.vision.reading_slope
            if isinstance(slopes, tuple) and len(slopes) != self.n_heads:
                raise ValueError(
                    f"vision.reading_slope lists {len(slopes)} slopes: give one per head (n_heads = "
                    f"{self.n_heads}) or one number"
                )
            if self.vision.image_token >= self.vocab_size:
                raise ValueError(
                    f"vision.image_token ({self.vision.image_token}) must be a token id < vocab_size "
                    f"({self.vocab_size})"
                )
            if self.expert_quant != "none":
                raise ValueError(
                    "a vision model cannot be quantized (expert_quant): quantized serving covers text models only"
                )
            if self.vision.cross_attn_every > self.n_layers:
                raise ValueError(
                    f"vision.cross_attn_every ({self.vision.cross_attn_every}) exceeds n_layers "
                    f"({self.n_layers}): no block would get a cross-attention"
                )
        if self.expert_quant != "none" and self.capacity_factor:
            raise ValueError(
                f"a quantized model serves dropless: capacity_factor must be 0 with expert_quant {self.expert_quant!r}"
            )

    def _check_router(self) -> None:
        if self.router_rule not in ROUTER_RULES:
            raise ValueError(f"router_rule must be one of {ROUTER_RULES}, got {self.router_rule!r}")
        flags = ("router_bias", "router_score_bias", "router_scale_input", "shared_gate")
        for name in flags:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        _integers(self, "router_groups", "router_topk_groups", "shared_d_ff")
        _positive(self, "router_groups", "router_topk_groups", "router_scale")
        _non_negative(self, "router_bias_update_rate", "shared_d_ff")
        E, G = self.n_experts, self.router_groups
        if E % G or self.router_topk_groups > G:
            raise ValueError(
                f"router_groups ({G}) must divide n_experts ({E}), and router_topk_groups "
                f"({self.router_topk_groups}) must be <= router_groups"
            )
        if self.top_k > self.router_topk_groups * (E // G):
            raise ValueError(
                f"top_k ({self.top_k}) exceeds the experts of the router_topk_groups chosen groups "
                f"({self.router_topk_groups} x {E // G})"
            )
        if self.router_bias_update_rate and not self.router_score_bias:
            raise ValueError("router_bias_update_rate needs router_score_bias = true (the bias it learns)")
        if self.router_scale_input and self.top_k != 1:
            raise ValueError(
                f"router_scale_input scales a token's one expert input: it needs top_k 1, got {self.top_k}"
            )
        if self.router_rule == "expert_choice" and (self.router_score_bias or G > 1 or self.router_scale_input):
            raise ValueError("router_rule expert_choice takes no score bias, groups or input scaling")
        if self.shared_gate and not self.shared_d_ff:
            raise ValueError("shared_gate needs a shared expert (shared_d_ff > 0)")

    def _check_attention(self) -> None:
        for name in ("qkv_bias", "out_bias", "attention_sinks", "expert_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}")
        _integers(self, "sliding_window")
        _non_negative(self, "sliding_window", "qkv_clip")
        if self.layer_types is not None:
            types = tuple(self.layer_types) if isinstance(self.layer_types, (list, tuple)) else None
            if not types or any(t not in LAYER_TYPES for t in types):
                raise ValueError(
                    f"layer_types must list {LAYER_TYPES}, one per layer or a pattern repeated over the "
                    f"{self.n_layers} layers, got {self.layer_types!r}"
                )
            object.__setattr__(self, "layer_types", types)
            if "sliding_attention" in types and not self.sliding_window:
                raise ValueError("layer_types names sliding_attention layers: give their sliding_window (> 0)")

    def window(self, layer: int) -> int:
        """Layer `layer`'s sliding window in positions, 0 for full attention."""
        types = self.layer_types
        sliding = types[layer % len(types)] == "sliding_attention" if types else self.sliding_window > 0
        return self.sliding_window if sliding else 0

    @property
    def causal_routing(self) -> bool:
        """Whether a token's experts depend on that token alone (everything but expert choice):
        what generation with a KV cache needs."""
        return self.router_rule != "expert_choice"

    @property
    def n_matrices(self) -> int:
        """Weight matrices per expert: 2 for GELU (up, down), 3 for the SwiGLUs (gate, up, down)."""
        return 2 if self.activation == "gelu" else 3

    def dense_twin(self) -> ModelConfig:
        """One expert with top-1 and top_k times the width: the same active parameters per token."""
        return dataclasses.replace(
            self,
            name=f"{self.name}-dense",
            n_experts=1,
            top_k=1,
            d_ff=self.d_ff * self.top_k,
            capacity_factor=0.0,
            router_rule="softmax_topk",  # one expert at weight 1, whatever the rule
            router_score_bias=False,
            router_bias_update_rate=0.0,
            router_groups=1,
            router_topk_groups=1,
            router_scale=1.0,
            router_scale_input=False,
        )

    def text_only(self) -> ModelConfig:
        """This config without its vision path: the language model it is built on."""
        return dataclasses.replace(self, vision=None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 16
    seq_len: int = 64
    max_steps: int = 2000
    time_budget_s: float = 0.0  # > 0: measure the step time early on and fit max_steps to the budget
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_batches: int = 20
    checkpoint_interval: int = 500
    seed: int = 1337
    val_fraction: float = 0.05
    compile: bool = False  # torch.compile the training step (one process; the first step pays for it)
    # A vision model (a [vision] table): also train its language model. False: Flamingo's stage 2, the
    # language model frozen and only the vision path learning.
    train_language_model: bool = False
    # Megatron's batch-size ramp, counted in tokens: start at ramp_start_batch sequences, add
    # ramp_increment every ramp_tokens / ((batch_size - start) / increment) tokens until batch_size.
    # 0: no ramp. With a ramp the run and its learning-rate schedule are counted in tokens: it ends
    # after max_steps x batch_size x seq_len tokens, warms up over warmup_steps full batches' worth.
    ramp_start_batch: int = 0
    ramp_increment: int = 0
    ramp_tokens: int = 0

    def __post_init__(self) -> None:
        for flag in ("compile", "train_language_model"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        _integers(
            self,
            "batch_size",
            "seq_len",
            "max_steps",
            "warmup_steps",
            "eval_interval",
            "eval_batches",
            "checkpoint_interval",
            "seed",
            "ramp_start_batch",
            "ramp_increment",
            "ramp_tokens",
        )
        _positive(
            self, "batch_size", "seq_len", "max_steps", "lr", "eval_interval", "eval_batches", "checkpoint_interval"
        )
        _non_negative(self, "time_budget_s", "min_lr", "warmup_steps", "weight_decay", "grad_clip", "seed")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must be <= lr ({self.lr})")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.ramp_start_batch or self.ramp_increment or self.ramp_tokens:
            self._check_ramp()

    def _check_ramp(self) -> None:
        start, inc, tokens = self.ramp_start_batch, self.ramp_increment, self.ramp_tokens
        ramp = f"the batch-size ramp (start {start}, increment {inc}, over {tokens} tokens)"
        if not (0 < start < self.batch_size and inc > 0 and tokens > 0):
            raise ValueError(
                f"{ramp}: needs 0 < start < batch_size ({self.batch_size}), a positive increment and token count"
            )
        if (self.batch_size - start) % inc:
            raise ValueError(f"{ramp}: batch_size {self.batch_size} - start must be a multiple of the increment")
        if self.time_budget_s:
            raise ValueError(f"{ramp} counts the run in tokens; a time budget fits steps: give one of them")

    @property
    def ramp(self) -> bool:
        return self.ramp_start_batch > 0

    def batch_size_at(self, tokens: int) -> int:
        """Sequences in the batch of the step that starts after `tokens` tokens (Megatron's ramp)."""
        if not self.ramp:
            return self.batch_size
        increments = (self.batch_size - self.ramp_start_batch) // self.ramp_increment
        done = tokens * increments // self.ramp_tokens  # increments reached: tokens / (ramp_tokens / increments)
        return min(self.batch_size, self.ramp_start_batch + done * self.ramp_increment)

    def batch_sizes(self) -> list[int]:
        """Every batch size the run steps at (the ramp's, then batch_size)."""
        start = self.ramp_start_batch if self.ramp else self.batch_size
        return list(range(start, self.batch_size + 1, self.ramp_increment or 1))

    def steps_by_batch_size(self) -> dict[int, int]:
        """{batch size: steps the run takes at it}, in order: with a ramp, the steps that first reach
        max_steps x batch_size x seq_len tokens; without one, max_steps at batch_size."""
        if not self.ramp:
            return {self.batch_size: self.max_steps}
        steps: dict[int, int] = {}
        tokens = 0
        while tokens < self.max_steps * self.batch_size * self.seq_len:
            b = self.batch_size_at(tokens)
            steps[b] = steps.get(b, 0) + 1
            tokens += b * self.seq_len
        return steps

    def run_steps(self) -> int:
        """The run's steps: max_steps, or with a ramp those of steps_by_batch_size."""
        return sum(self.steps_by_batch_size().values())


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def _merge(base: dict, top: dict) -> dict:
    """top over base; a table present in both is merged key by key."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_toml(name_or_path: str | pathlib.Path, _seen: tuple = ()) -> tuple[dict, str]:
    """A preset's tables. `base = "other"` at top level: start from preset `other` (tiny-vision is
    tiny plus a [vision] table); this file's keys and tables override its."""
    data, stem = _read_one(name_or_path)
    base = data.pop("base", None)
    if base is None:
        return data, stem
    if not isinstance(base, str):
        raise ValueError(f"config {str(name_or_path)!r}: base must be a preset name or a .toml path, got {base!r}")
    if stem in _seen:
        raise ValueError(f"config {str(name_or_path)!r}: its base presets form a loop ({' -> '.join(_seen + (stem,))})")
    return _merge(_read_toml(base, _seen + (stem,))[0], data), stem


def _read_one(name_or_path: str | pathlib.Path) -> tuple[dict, str]:
    path = pathlib.Path(name_or_path)
    if path.suffix != ".toml":
        path = CONFIG_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ValueError(f"unknown preset {str(name_or_path)!r}; presets: {', '.join(preset_names())}")
    elif not path.exists():
        raise ValueError(f"config file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        try:
            return tomllib.load(f), path.stem
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config file {str(path)!r} is not valid TOML: {e}") from None
        except UnicodeDecodeError as e:
            raise ValueError(
                f"config file {str(path)!r} is not UTF-8 text (byte {e.start}): TOML must be UTF-8"
            ) from None


def from_dict(cls, values: dict, where: str):
    """cls(**values), with unknown keys reported as a ValueError naming them and where they came from."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown} in {where}")
    return cls(**values)


def load_config(name_or_path: str | pathlib.Path, **overrides) -> ModelConfig:
    """A preset by name (configs/<name>.toml) or a path to a TOML file, with field overrides."""
    data, stem = _read_toml(name_or_path)
    data.pop("train", None)
    data.pop("parallel", None)  # moe.layout.load_layout reads it
    data.pop("data", None)  # [[data]]: a mixture's sources, which `train` reads (moe/data/mixture.py)
    values = {"name": stem, **data, **overrides}
    return from_dict(ModelConfig, values, f"config {str(name_or_path)!r}")


def load_train_config(name_or_path: str | pathlib.Path, **overrides) -> TrainConfig:
    data, _ = _read_toml(name_or_path)
    return from_dict(TrainConfig, {**data.get("train", {}), **overrides}, f"[train] of {str(name_or_path)!r}")


def split_overrides(overrides: dict) -> tuple[dict, dict]:
    """Route `key=value` overrides to the model or the train config by field name."""
    model_keys = {f.name for f in fields(ModelConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    model, train = {}, {}
    for key, value in overrides.items():
        if key in model_keys:
            model[key] = value
        elif key in train_keys:
            train[key] = value
        else:
            raise ValueError(f"unknown config field {key!r}")
    return model, train


def parse_value(text: str):
    """Parse a command-line override value as a TOML value, falling back to a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def read_table(name_or_path: str | pathlib.Path, table: str) -> dict:
    """One table of a preset or TOML file (empty if absent)."""
    return _read_toml(name_or_path)[0].get(table, {})


__all__ = [
    "ModelConfig",
    "VisionConfig",
    "TrainConfig",
    "load_config",
    "load_train_config",
    "preset_names",
    "read_table",
    "split_overrides",
    "parse_value",
    "from_dict",
]
