"""One process's checkpoints: a step directory of a run directory (moe/training/run_dir.py).

    step-0001000/
      model.safetensors     the weights (a tied output head is stored once, as the embedding)
      config.json           model and training config
      trainer.pt            optimizer state, step, RNG states, data position, history
      tokenizer.moe.json    the tokenizer its token ids mean (moe/data/tokenizer.py; absent: bytes)

Loading also reads the distributed checkpoints of moe/parallel/checkpoint.py, whole, into one process.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import warnings

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from moe.checksums import MARKER, DamagedFile, verify, verify_all
from moe.config import ModelConfig, TrainConfig, from_dict
from moe.files import make_scratch
from moe.training.run_dir import is_distributed, publish, resolve, temp_dir


def build_model(cfg: ModelConfig) -> torch.nn.Module:
    """The model a config describes: MoETransformer, or VisionLanguageModel with a [vision] table."""
    if cfg.vision is not None:
        from moe.vision import VisionLanguageModel

        return VisionLanguageModel(cfg)
    from moe.model import MoETransformer

    return MoETransformer(cfg)


def _tied_head(model: torch.nn.Module) -> str | None:
    """The state-dict key of a head tied to the embedding (stored once, as the embedding), or None."""
    if not model.cfg.tie_embeddings:
        return None
    return "lm.lm_head.weight" if model.cfg.vision is not None else "lm_head.weight"


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    head = _tied_head(model)
    if head:
        sd.pop(head)
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_checkpoint(
    run_dir,
    model,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig | None = None,
    trainer_state: dict | None = None,
    step: int = 0,
    files: dict[str, bytes] | None = None,
) -> pathlib.Path:
    """A step directory: the model's weights, config.json, trainer.pt (given trainer_state) and
    `files` (name -> content, e.g. tokenizer.moe.json), published whole (moe/training/run_dir.py)."""
    return save_weights(run_dir, _weights(model), model_cfg, train_cfg, trainer_state, step, files)


def save_weights(
    run_dir,
    weights: dict[str, torch.Tensor],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig | None = None,
    trainer_state: dict | None = None,
    step: int = 0,
    files: dict[str, bytes] | None = None,
) -> pathlib.Path:
    """save_checkpoint from a state dict (our parameter names) instead of a model."""
    run_dir = pathlib.Path(run_dir)
    tmp = make_scratch(temp_dir(run_dir, step))  # creates run_dir too
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
    config = {"model": model_cfg.to_dict(), "train": None if train_cfg is None else vars(train_cfg), **MARKER}
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer.pt")
    for name, content in (files or {}).items():
        (tmp / name).write_bytes(content)
    return publish(run_dir, tmp, step)


def read_config(path) -> tuple[ModelConfig, dict | None]:
    """The model config and the training settings (a dict, or None) a checkpoint was saved with."""
    f = resolve(path) / "config.json"
    verify(f)
    try:
        data = json.loads(f.read_text())
        model = data["model"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedFile(f"{f}: not a readable checkpoint config ({type(e).__name__}: {e})") from None
    return from_dict(ModelConfig, model, f"checkpoint {str(f.parent)!r}"), data.get("train")


def load_weights(model: torch.nn.Module, path) -> pathlib.Path:
    """Load weights into `model`, or raise naming every missing, unexpected and mis-shaped tensor.
    A distributed checkpoint (any layout, moe/parallel/checkpoint.py) loads whole into this process."""
    step_dir = resolve(path)
    model = _text_part(model, step_dir)
    if is_distributed(step_dir):
        _load_distributed_whole(model, step_dir)
    else:
        model.load_state_dict(read_weights(step_dir, model), strict=not model.cfg.tie_embeddings)
    return step_dir


def read_weights(step_dir: pathlib.Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full tensors of a single-process checkpoint, checked against `model`'s names and shapes
    (`model` may live on the meta device: only its shapes are read)."""
    weights = open_weights(step_dir, model)
    return {k: weights.get_tensor(k) for k in weights.keys()}


def open_weights(step_dir: pathlib.Path, model: torch.nn.Module):
    """A single-process checkpoint's weights opened for reading whole tensors or slices of them
    (safetensors' safe_open: get_tensor, get_slice), once their names and shapes, read from the
    file's header, have been checked against `model`'s."""
    f = step_dir / "model.safetensors"
    verify(f)
    try:
        weights = safe_open(str(f), framework="pt")
        saved = {k: tuple(weights.get_slice(k).get_shape()) for k in weights.keys()}
    except (SafetensorError, OSError) as e:
        raise DamagedFile(f"{f}: not a readable safetensors file ({e}); the checkpoint is damaged") from None
    expected = model.state_dict()
    head = _tied_head(model)
    if head:
        expected.pop(head)
    problems = [
        f"{k}: checkpoint {saved[k]} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in saved and saved[k] != tuple(v.shape)
    ]
    problems += [f"missing {k} {tuple(v.shape)}" for k, v in expected.items() if k not in saved]
    problems += [f"unexpected {k} {v}" for k, v in saved.items() if k not in expected]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ValueError(f"checkpoint {str(step_dir)!r} does not fit this model ({len(problems)} tensor(s)): {shown}")
    return weights


# Fields a text checkpoint may differ in from the language model of the vision config it starts
_NOT_WEIGHTS = ("name", "expert_backend", "vision")  # (they change neither the weights nor what they compute)


def _text_part(model: torch.nn.Module, step_dir: pathlib.Path) -> torch.nn.Module:
    """Where a checkpoint's weights go in `model`: all of it, or a vision model's language model `lm`
    when the checkpoint is a text model's of the same config. A vision checkpoint never loads into a
    text model."""
    saved, _ = read_config(step_dir)
    is_vision = model.cfg.vision is not None
    if saved.vision is not None and not is_vision:
        raise ValueError(
            f"checkpoint {str(step_dir)!r} holds a vision model ({saved.name!r}, with a [vision] table): "
            "it does not load as a text-only model; load it whole (load_model builds it), or give "
            "a config with its [vision] table"
        )
    if not is_vision or saved.vision is not None:
        return model
    now, was = model.cfg.to_dict(), saved.to_dict()
    differ = {k: (was[k], now[k]) for k in now if k not in _NOT_WEIGHTS and was.get(k) != now[k]}
    if differ:
        shown = ", ".join(f"{k} {a!r} in the checkpoint vs {b!r}" for k, (a, b) in differ.items())
        raise ValueError(
            f"checkpoint {str(step_dir)!r} is the text model {saved.name!r}, but config {model.cfg.name!r} "
            f"builds its vision path on a different language model: {shown}"
        )
    return model.lm


def load_model(path, device="cpu", **overrides):
    """Build the model a checkpoint was saved from and load its weights. `overrides` change model
    fields that do not touch the weights' shapes (e.g. expert_backend)."""
    cfg, _ = read_config(path)
    cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
    model = build_model(cfg).to(device)
    load_weights(model, path)
    return model


def load_trainer_state(path) -> dict | None:
    """The optimizer, RNG, data and history state saved beside the weights (None: weights only)."""
    f = resolve(path) / "trainer.pt"
    if not f.exists():
        return None
    verify(f)
    try:
        return torch.load(f, weights_only=True)
    except Exception as e:  # torch.load raises many kinds (pickle, zip, runtime) for a damaged file
        raise DamagedFile(
            f"{f}: not a readable trainer state ({type(e).__name__}: {e}); the checkpoint is damaged"
        ) from None


def _load_distributed_whole(model: torch.nn.Module, step_dir) -> None:
    """The whole model in this process from a checkpoint any layout wrote (no process group needed):
    DCP stores every tensor under its global name and shape, whatever shards wrote it."""
    import torch.distributed.checkpoint as dcp

    verify_all(step_dir)
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=step_dir, no_dist=True)
    model.load_state_dict(state["model"])


def quantize_checkpoint(
    path, out, scheme: str, *, dense: bool = False, overwrite: bool = False
) -> tuple[pathlib.Path, int]:
    """A serving copy of a checkpoint with its expert weights (dense: attention and head too) quantized
    (moe/model/quantized.py):
    weights, config (expert_quant set) and tokenizer; no optimizer state. Returns the step directory
    and the bytes the expert weights took before (for the report; the quantized model says the after)."""
    from moe.model.quantized import is_expert_weight, quantize_state

    step_dir = resolve(path)
    cfg, _ = read_config(step_dir)
    if cfg.vision is not None:
        raise ValueError(f"{step_dir} holds a vision model ({cfg.name!r}): quantized serving covers text models only")
    if cfg.expert_quant != "none":
        raise ValueError(f"{step_dir} is already quantized ({cfg.expert_quant}): quantize the unquantized checkpoint")
    if is_distributed(step_dir):
        state = load_model(step_dir).state_dict()
    else:
        f = step_dir / "model.safetensors"
        verify(f)
        state = load_file(str(f))
    new_cfg, new_state = quantize_state(cfg, state, scheme, dense)
    before = sum(t.numel() * t.element_size() for k, t in state.items() if is_expert_weight(k))
    files = {}
    tok = step_dir / "tokenizer.moe.json"
    if tok.exists():
        verify(tok)
        files[tok.name] = tok.read_bytes()
    from moe.training import run_dir

    run_dir.prepare(out)
    with run_dir.lock(out):
        if run_dir.check_fresh(out, overwrite):
            run_dir.remove_checkpoints(out)
        return save_weights(out, new_state, new_cfg, files=files), before
