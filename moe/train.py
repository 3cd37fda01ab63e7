"""Training: AdamW, linear warmup then cosine decay, gradient clipping, bf16 autocast on GPU,
periodic validation, atomic checkpoints, exact resume, a PNG of the run at the end.

Wall-clock accounting: `train_time_s` counts time spent in training steps only (not validation,
checkpoints or plotting); the loss curves are plotted against it. With `time_budget_s`, max_steps
(the end of the cosine schedule) is fitted so training ends at the budget: first from the step time
over steps 10-30, then every 10 steps from the steps since the last fit, because a shared
machine's speed drifts (and a slow first window must not cut the run short). A time-budgeted
schedule therefore depends on measured time; with time_budget_s = 0 the schedule is fixed by
max_steps and a resumed run repeats a straight one exactly.

Stops: max_steps reached; Ctrl-C (finishes the step, writes a checkpoint, exits); a loss that is
not finite (stops, writes nothing, names the step and the last good checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import signal
import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from moe import checkpoint
from moe.config import ModelConfig, TrainConfig
from moe.data import get_batch, load_corpus, split_corpus
from moe.model import MoETransformer

FIRST_FIT = (10, 30)  # time_budget_s: measure steps 10-30 (after warm-up), fit max_steps at step 30
REFIT_EVERY = 10  # then re-fit this often (and at the schedule's end) from the steps since the last fit
_clock = time.perf_counter  # the step timer; tests replace it with a fake clock


class TrainingError(RuntimeError):
    pass


@dataclass
class History:
    step: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    train_time_s: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)

    def add(self, step: int, tokens: int, train_time_s: float, train_loss: float, val_loss: float) -> None:
        """One evaluation point."""
        self.step.append(step)
        self.tokens.append(tokens)
        self.train_time_s.append(round(train_time_s, 3))
        self.train_loss.append(train_loss)
        self.val_loss.append(val_loss)


def lr_at(step: int, cfg: TrainConfig, max_steps: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over `params` (e.g. model.parameters()); weight decay on matrices only (not norms).
    Fused where this torch supports it (on CPU it is about 20% of a tiny-preset step faster than the
    default). DTensor and plain parameters go in separate groups: a fused or foreach update takes a
    group's tensors together and cannot mix the two."""
    groups: dict[tuple, dict] = {}
    for p in params:
        decay = p.dim() >= 2
        groups.setdefault((decay, type(p)), {"params": [], "weight_decay": cfg.weight_decay if decay else 0.0})
        groups[(decay, type(p))]["params"].append(p)
    kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    try:
        return torch.optim.AdamW(list(groups.values()), fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(list(groups.values()), **kw)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model, data, cfg: TrainConfig, device) -> float:
    """Mean loss over eval_batches windows drawn with a fixed seed: the same windows every time."""
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = get_batch(data, cfg.batch_size, cfg.seq_len, gen)
        with _autocast(device):
            losses.append(model(x.to(device), targets=y.to(device)).loss.item())
    model.train()
    return sum(losses) / len(losses)


class _Interrupt:
    """First Ctrl-C: finish the step, checkpoint, exit. A second one interrupts at once."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self.previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing this step and writing a checkpoint (Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def train(model_cfg: ModelConfig, cfg: TrainConfig, out_dir, *, resume: bool = False, overwrite: bool = False,
          device: str | None = None, corpus=None, progress: bool | None = None, plot: bool = True, log=print) -> dict:
    """Train, checkpointing to out_dir. Returns a summary dict (also written to out_dir/summary.json).
    A fresh run refuses an out_dir that already holds checkpoints unless overwrite=True."""
    out_dir = pathlib.Path(out_dir)
    if not resume and checkpoint.check_fresh(out_dir, overwrite):
        checkpoint.remove_checkpoints(out_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed)
    model = MoETransformer(model_cfg).to(device)
    optimizer = make_optimizer(model.parameters(), cfg)
    train_data, val_data = split_corpus(load_corpus(corpus), cfg.val_fraction)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    hist, step, train_time, max_steps = History(), 0, 0.0, cfg.max_steps
    L, E = model_cfg.n_layers, model_cfg.n_experts
    expert_tokens = torch.zeros(L, E, dtype=torch.int64)

    if resume:
        saved_cfg, _ = checkpoint.read_config(out_dir)
        if saved_cfg != model_cfg:
            diff = {k: (v, getattr(model_cfg, k)) for k, v in saved_cfg.to_dict().items() if getattr(model_cfg, k) != v}
            log(f"warning: resuming with a different model config; differing fields (saved, now): {diff}")
        step_dir = checkpoint.load_weights(model, out_dir)
        state = checkpoint.load_trainer_state(out_dir)
        if state is None:
            raise TrainingError(f"{step_dir} has no trainer.pt: it holds weights only and cannot be resumed")
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        data_gen.set_state(state["data_rng"])
        step, train_time = state["step"], state["train_time_s"]
        if cfg.time_budget_s and step > FIRST_FIT[1]:  # keep the schedule fitted so far; else obey max_steps
            max_steps = state["max_steps"]
        hist = History(**state["history"])
        expert_tokens = state["expert_tokens"]
        log(f"resumed from {step_dir} at step {step}")

    def save() -> pathlib.Path:
        # A finite loss can still be followed by an update that made the weights inf/NaN: never let
        # such weights replace the last good checkpoint.
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TrainingError(f"weights became non-finite at step {step} ({', '.join(bad[:3])}...); stopped "
                                f"without saving. Last good checkpoint: {last_good()}")
        state = dict(optimizer=optimizer.state_dict(), torch_rng=torch.get_rng_state(), data_rng=data_gen.get_state(),
                     step=step, train_time_s=train_time, max_steps=max_steps,
                     history=vars(hist), expert_tokens=expert_tokens)
        return checkpoint.save_checkpoint(out_dir, model, model_cfg, cfg, state, step)

    def last_good() -> str:
        latest = out_dir / "latest"
        return str(out_dir / latest.read_text().strip()) if latest.exists() else "none (nothing was saved yet)"

    progress = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=max_steps, initial=step, disable=not progress, dynamic_ncols=True)
    tokens_per_step = cfg.batch_size * cfg.seq_len
    running, n_running = 0.0, 0
    fit_mark = (step, train_time) if step >= FIRST_FIT[0] else None  # where the step-time window starts
    interrupted, saved, saved_step = False, None, None
    model.train()
    with _Interrupt() as interrupt:
        while step < max_steps:
            if step == FIRST_FIT[0]:
                fit_mark = (step, train_time)
            t0 = _clock()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg, max_steps)
            x, y = get_batch(train_data, cfg.batch_size, cfg.seq_len, data_gen)
            x, y = x.to(device), y.to(device)
            with _autocast(device):
                out = model(x, targets=y)
            loss = out.loss.item()
            if not math.isfinite(loss):
                bar.close()
                raise TrainingError(f"loss became {loss} at step {step}; stopped without saving. "
                                    f"Last good checkpoint: {last_good()}")
            (out.loss + out.aux_loss).backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            counts = torch.stack([r.tokens_per_expert for r in out.routing]).cpu()
            expert_tokens += counts
            step += 1
            dt = _clock() - t0
            train_time += dt
            running, n_running = running + loss, n_running + 1

            refit = step == FIRST_FIT[1] or (step > FIRST_FIT[1] and (step % REFIT_EVERY == 0 or step == max_steps))
            if cfg.time_budget_s and refit and fit_mark is not None and step > fit_mark[0]:
                per_step = (train_time - fit_mark[1]) / (step - fit_mark[0])
                fitted = max(step, step + int((cfg.time_budget_s - train_time) / per_step))
                if step == FIRST_FIT[1] or abs(fitted - max_steps) > max_steps // 20:  # quiet on noise
                    log(f"time budget {cfg.time_budget_s:.0f}s at {per_step * 1e3:.1f} ms/step: max_steps = {fitted}")
                max_steps, fit_mark, bar.total = fitted, (step, train_time), fitted

            balance = (counts.max(dim=1).values.float() / counts.float().mean(dim=1)).mean().item()
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_step / dt:,.0f}", load_max_mean=f"{balance:.2f}")
            bar.update(1)

            if step % cfg.eval_interval == 0 or step == max_steps:
                val = evaluate(model, val_data, cfg, device)
                hist.add(step, step * tokens_per_step, train_time, running / n_running, val)
                running, n_running = 0.0, 0
                msg = (f"step {step}/{max_steps}  train {hist.train_loss[-1]:.4f}  val {val:.4f}  "
                       f"{train_time:.0f}s  {step * tokens_per_step / train_time:,.0f} tok/s  load max/mean {balance:.2f}")
                bar.write(msg) if progress else log(msg)
            if step % cfg.checkpoint_interval == 0 or step == max_steps:
                saved, saved_step = save(), step
            if interrupt.requested:
                interrupted = True
                break
    bar.close()
    if saved_step != step:  # interrupted between checkpoints
        saved = save()
    summary = {
        "config": model_cfg.name, "steps": step, "max_steps": max_steps, "tokens": step * tokens_per_step,
        "train_time_s": round(train_time, 2), "tokens_per_s": round(step * tokens_per_step / max(train_time, 1e-9)),
        "final_val_loss": hist.val_loss[-1] if hist.val_loss else None, "interrupted": interrupted,
        "checkpoint": str(saved), "history": vars(hist),
        "expert_tokens": expert_tokens.tolist(), "device": str(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if plot and not interrupted:
        from moe.plots import plot_training

        plot_training(summary, out_dir / "training.png")
    log(f"{'interrupted' if interrupted else 'done'}: step {step}, checkpoint {saved}")
    return summary
