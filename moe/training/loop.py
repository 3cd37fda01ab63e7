"""The training loop, one for a single process and for every parallel layout.

    train(model_cfg, train_cfg, out_dir)                         one process (moe/training/local.py)
    train(model_cfg, train_cfg, out_dir, build=...)              any Trainer (moe/training/protocol.py);
                                                                 moe.parallel.train_distributed passes one

The loop owns everything the two have in common: the data sampler (the same global batch on every
process), the learning-rate schedule and the time budget, the evaluation and checkpoint cadence,
the history, interruption, the final save, the summary and the plot. The trainer owns the step,
the checkpoint format, and who logs.

Wall-clock accounting: `train_time_s` counts time spent in training steps only (not validation,
checkpoints or plotting); the loss curves are plotted against it. With `time_budget_s`, max_steps
(the end of the cosine schedule) is fitted so training ends at the budget: first from the step time
over steps 10-30, then every 10 steps from the steps since the last fit, because a shared
machine's speed drifts (and a slow first window must not cut the run short). The main process's
clock decides and every process follows it. A time-budgeted schedule therefore depends on measured
time; with time_budget_s = 0 the schedule is fixed by max_steps and a resumed run repeats a
straight one exactly.

Stops: max_steps reached; Ctrl-C or SIGTERM (finishes the step, writes a checkpoint, returns with
summary["interrupted"] set; a second signal aborts at once); a loss or weights that are not finite
(raises TrainingError: writes nothing, names the step and the last good checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from moe import devices
from moe.config import ModelConfig, TrainConfig
from moe.data import tokenizer as tokenizers
from moe.training import checkpoint, run_dir
from moe.training.local import LocalTrainer
from moe.training.optim import lr_at
from moe.training.protocol import Dataset, NonFiniteLoss, Trainer, TrainingError
from moe.training.task import task_for

FIRST_FIT = (10, 30)  # time_budget_s: measure steps 10-30 (after warm-up), fit max_steps at step 30
REFIT_EVERY = 10  # then re-fit this often (and at the schedule's end) from the steps since the last fit
_clock = time.perf_counter  # the step timer; tests replace it with a fake clock


@dataclass
class History:
    step: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    train_time_s: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    # what a captioning task's evaluation adds (Task.eval_extras, moe/training/task.py):
    gates: list = field(default_factory=list)  # (tanh attn, tanh mlp) per gated cross-attention block
    cer: list = field(default_factory=list)  # character error rate on held-out rendered lines
    val_by_source: list = field(default_factory=list)  # a mixture's: {source: val loss} per evaluation

    def add(
        self,
        step: int,
        tokens: int,
        train_time_s: float,
        train_loss: float,
        val_loss: float,
        gates: list | None = None,
        cer: float | None = None,
        val_by_source: dict | None = None,
    ) -> None:
        """One evaluation point (gates and cer: where the trainer's eval_extras gives them)."""
        if val_by_source is not None:
            self.val_by_source.append(val_by_source)
        if gates is not None:
            self.gates.append(gates)
        if cer is not None:
            self.cer.append(cer)
        self.step.append(step)
        self.tokens.append(tokens)
        self.train_time_s.append(round(train_time_s, 3))
        self.train_loss.append(train_loss)
        self.val_loss.append(val_loss)


class _Interrupt:
    """First Ctrl-C or SIGTERM (what `timeout`, containers and schedulers send): finish the step,
    checkpoint, exit. A second one interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.previous: dict = {}

    def __enter__(self):
        try:
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave the signals alone
            pass
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt(
                f"a second {signal.Signals(signum).name}: stopped at once, without writing a checkpoint "
                "(the last one written is kept; continue with --resume)"
            )
        self.requested = True
        print(
            f"\n{signal.Signals(signum).name}: finishing this step and writing a checkpoint (again to abort)",
            file=sys.stderr,
        )

    def __exit__(self, *exc):
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)


# The training settings the exact-resume promise depends on: all but how often to evaluate and save.
_NOT_RESUME_SETTINGS = ("eval_interval", "eval_batches", "checkpoint_interval")


def changed_settings(saved: dict | None, cfg: TrainConfig) -> dict:
    """{field: (saved, now)} for the training settings a resumed run would change."""
    now = vars(cfg)
    return {
        k: (v, now[k]) for k, v in (saved or {}).items() if k in now and k not in _NOT_RESUME_SETTINGS and v != now[k]
    }


class _Budget:
    """Fits max_steps to time_budget_s from the measured step time (see the module doc)."""

    def __init__(self, cfg: TrainConfig, step: int, train_time: float):
        self.budget = cfg.time_budget_s
        self.mark = (step, train_time) if step >= FIRST_FIT[0] else None  # where the step-time window starts
        self.per_step: float | None = None  # seconds per step at the last fit

    def before_step(self, step: int, train_time: float) -> None:
        if step == FIRST_FIT[0]:
            self.mark = (step, train_time)

    def refit(self, step: int, train_time: float, max_steps: int) -> int | None:
        """The new max_steps if this step re-fits it (the same steps on every process), else None."""
        due = step == FIRST_FIT[1] or (step > FIRST_FIT[1] and (step % REFIT_EVERY == 0 or step == max_steps))
        if not (self.budget and due and self.mark is not None and step > self.mark[0]):
            return None
        per_step = (train_time - self.mark[1]) / (step - self.mark[0])
        self.mark = (step, train_time)
        self.per_step = per_step
        return max(step, step + int((self.budget - train_time) / per_step))


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    out_dir,
    *,
    resume: bool | str = False,
    overwrite: bool = False,
    allow_changes: bool = False,
    init_from=None,
    device: str | None = None,
    data=None,
    progress: bool | None = None,
    plot: bool = True,
    log=print,
    build=None,
) -> dict:
    """Train, checkpointing to out_dir. Returns a summary dict (also written to out_dir/summary.json).

    Before anything is built, the main process makes sure out_dir is a writable directory, locks it for
    the whole run (moe/training/run_dir.py) and removes dead writers' scratch directories. A fresh run
    refuses an out_dir that already holds checkpoints unless overwrite=True (resume="auto" continues
    from them when there are some, else starts afresh: a job that restarts itself); a resumed one refuses
    changed training settings (they break "continues as if never stopped") unless allow_changes=True.
    init_from: a fresh run that starts from a checkpoint's weights (e.g. to extend its context: see
    check_extension); new optimizer, step 0, this run's schedule.
    data: a prepared dataset directory (moe/data/dataset.py), or a TokenDataset; None: the bundled
    corpus, byte-level (or the data of the task model_cfg chooses: moe/training/task.py). Its
    tokenizer is saved in every checkpoint; model_cfg.vocab_size must hold it.
    build(model_cfg, cfg, device, init_from) -> Trainer (default: LocalTrainer, one process)."""
    out_dir = pathlib.Path(out_dir)
    resume, allow_changes = resolve_resume(resume, out_dir, overwrite, init_from, allow_changes)
    devices.resolve(device)  # an unknown device, or one this machine lacks, before anything is created
    check_run(
        model_cfg, cfg, out_dir, resume=resume, overwrite=overwrite, allow_changes=allow_changes, init_from=init_from
    )
    with _own(out_dir):
        return _train(
            model_cfg,
            cfg,
            out_dir,
            resume=resume,
            overwrite=overwrite,
            allow_changes=allow_changes,
            init_from=init_from,
            device=device,
            data=data,
            progress=progress,
            plot=plot,
            log=log,
            build=build,
        )


def resolve_resume(resume, out_dir, overwrite: bool, init_from, allow_changes: bool) -> tuple[bool, bool]:
    """(resume, allow_changes) for `resume` True, False or "auto". "auto" (what a job that torchrun
    --max-restarts reruns passes): continue when out_dir names a checkpoint, else start afresh, with
    nothing to allow changes against. It reruns one command after every failure, so what it is given
    must hold whether or not a checkpoint exists yet: --overwrite and --init-from would mean something
    else on the rerun."""
    if resume != "auto":
        if not isinstance(resume, bool):
            raise ValueError(f"resume must be True, False or 'auto', got {resume!r}")
        return resume, allow_changes
    if overwrite or init_from is not None:
        flag = "--overwrite" if overwrite else "--init-from"
        raise ValueError(
            f"--resume auto with {flag}: on a restart it would resume, on the first run start afresh; "
            f"start the run once with {flag}, then rerun it with --resume auto"
        )
    return (True, allow_changes) if run_dir.latest(out_dir) is not None else (False, False)


def check_run(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    out_dir,
    *,
    resume=False,
    overwrite=False,
    allow_changes=False,
    init_from=None,
) -> None:
    """What a run asks that cannot work, refused (a ValueError naming the flags) before out_dir is touched."""
    if resume and overwrite:
        raise ValueError(
            "--resume continues the run in --out and --overwrite deletes its checkpoints: give one of them"
        )
    if allow_changes and not resume:
        raise ValueError("--allow-changes accepts changed settings when resuming: it needs --resume")
    if init_from is not None and resume:
        raise ValueError(
            "--init-from starts a new run from a checkpoint's weights; --resume continues one: give one of them"
        )
    if cfg.train_language_model and model_cfg.vision is None:
        raise ValueError(
            f"--train-language-model (train_language_model) unfreezes a vision model's language model; "
            f"config {model_cfg.name!r} has no [vision] table"
        )
    if cfg.seq_len > model_cfg.max_seq_len:
        raise ValueError(
            f"seq_len ({cfg.seq_len}) exceeds max_seq_len ({model_cfg.max_seq_len}); raise max_seq_len "
            "(--set max_seq_len=...) with rope_scaling to extend a model's context"
        )
    _refuse_quantized("the config", model_cfg)
    if resume:
        run_dir.resolve(out_dir)  # a FileNotFoundError naming --out when it holds no checkpoint


@contextlib.contextmanager
def _own(out_dir: pathlib.Path):
    """The main process (rank 0 under torchrun) proves out_dir writable, locks it for the run and
    removes dead writers' scratch directories; the other ranks only write their shards into it. A
    run refused before it wrote anything leaves no directory it created behind."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    run_dir.prepare(out_dir)
    try:
        with run_dir.lock(out_dir):
            run_dir.clean_stale(out_dir)
            yield
    except BaseException:
        run_dir.remove_if_unused(created)
        raise


def check_extension(model_cfg: ModelConfig, init_from) -> None:
    """A run that starts from `init_from`'s weights at a longer context must scale RoPE from the length
    the checkpoint was trained at: rope_scaling.original_max_position_embeddings names it."""
    saved, _ = checkpoint.read_config(init_from)
    trained_at = (saved.rope_scaling or {}).get("original_max_position_embeddings", saved.max_seq_len)
    scaling = model_cfg.rope_scaling
    if scaling and scaling.get("original_max_position_embeddings", trained_at) != trained_at:
        raise ValueError(
            f"rope_scaling.original_max_position_embeddings ({scaling['original_max_position_embeddings']}) "
            f"disagrees with --init-from {init_from}, which was trained at max_seq_len {trained_at}"
        )


def check_tokenizer(model_cfg: ModelConfig, dataset: Dataset, checkpoint_dir=None) -> None:
    """The model's vocabulary must hold the data's tokens, and a checkpoint to continue from must
    have been trained with the same tokenizer."""
    tok = dataset.tokenizer
    if model_cfg.vocab_size < tok.vocab_size:
        raise ValueError(
            f"vocab_size {model_cfg.vocab_size} of config {model_cfg.name!r} cannot hold the "
            f"{tok.describe()} tokenizer of dataset {dataset.name}: the CLI sets vocab_size from the "
            f"data; give --set vocab_size={tok.vocab_size} (or larger, to pad)"
        )
    if checkpoint_dir is not None:
        saved = tokenizers.load(run_dir.resolve(checkpoint_dir))
        if saved.fingerprint != tok.fingerprint:
            raise ValueError(
                f"{checkpoint_dir} was trained with the {saved.describe()} tokenizer, dataset "
                f"{dataset.name} uses {tok.describe()}: its token ids mean different text"
            )


def _refuse_quantized(what: str, model_cfg: ModelConfig) -> None:
    if model_cfg.expert_quant != "none":
        raise ValueError(
            f"{what} is quantized ({model_cfg.expert_quant} experts): quantized checkpoints are for "
            "serving; train from the unquantized checkpoint"
        )


def _train(
    model_cfg, cfg, out_dir, *, resume, overwrite, allow_changes, init_from, device, data, progress, plot, log, build
):
    dataset = task_for(model_cfg, cfg).dataset(data)
    dataset.check_seq_len(cfg.seq_len)
    check_tokenizer(model_cfg, dataset, init_from)
    if init_from is not None:
        _refuse_quantized(f"--init-from {init_from}", checkpoint.read_config(init_from)[0])
        check_extension(model_cfg, init_from)
    stale = not resume and run_dir.check_fresh(out_dir, overwrite)
    if resume:
        step_dir = run_dir.resolve(out_dir)
        check_tokenizer(model_cfg, dataset, step_dir)
        saved_cfg, saved_train = checkpoint.read_config(step_dir)
        changed = changed_settings(saved_train, cfg)
        shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
        if changed and not allow_changes:
            raise ValueError(
                f"--resume with changed training settings ({shown}): the run would no longer "
                "continue as if never stopped (the schedule, batches or updates differ from a "
                "straight run). Resume with the saved settings, or pass --allow-changes."
            )
    trainer: Trainer = (build or LocalTrainer)(model_cfg, cfg, device, init_from)
    say = log if trainer.is_main else (lambda *a, **k: None)
    if stale and trainer.is_main:
        run_dir.remove_checkpoints(out_dir)
    tokenizer_file = {tokenizers.FILE: dataset.tokenizer.to_bytes()}  # saved beside the weights
    per_token = dataset.tokenizer.kind != "bytes"  # then also log bits per byte (bytes: nats/token = nats/byte)
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1)  # the same validation windows every time
    rows = trainer.batch_rows(cfg.batch_size)  # this process's rows of every global batch (None: all)
    rows_at = {b: trainer.batch_rows(b) for b in cfg.batch_sizes()}  # the same, for each size of a ramp
    eval_sets = dataset.eval_sets(cfg.batch_size, cfg.seq_len, eval_gen, rows, cfg.eval_batches)
    mixture = bool(dataset.progress())  # named sources, even one: each reported by name
    data_gen = torch.Generator().manual_seed(cfg.seed)
    hist, step, tokens, train_time, max_steps = History(), 0, 0, 0.0, cfg.run_steps()
    expert_tokens = torch.zeros(model_cfg.n_layers, model_cfg.n_experts, dtype=torch.int64)

    if resume:
        if changed:
            say(f"warning: resuming with changed training settings ({shown}); the run differs from a straight one")
        if saved_cfg != model_cfg:
            diff = {k: (v, getattr(model_cfg, k)) for k, v in saved_cfg.to_dict().items() if getattr(model_cfg, k) != v}
            say(f"warning: resuming with a different model config; differing fields (saved, now): {diff}")
        state, note = trainer.load(step_dir)
        data_gen.set_state(state["data_rng"])
        dataset.load_state(state.get("data_state", {}))
        step, train_time, hist = state["step"], state["train_time_s"], History(**state["history"])
        tokens = state.get("tokens", step * cfg.batch_size * cfg.seq_len)  # checkpoints before ramps: fixed batches
        if cfg.time_budget_s and step > FIRST_FIT[1]:  # keep the schedule fitted so far; else obey max_steps
            max_steps = state.get("max_steps", max_steps)
        # distributed checkpoints written before the loops were one kept neither of these
        expert_tokens = state.get("expert_tokens", expert_tokens)
        say(f"resumed from {step_dir} at step {step}{note}")

    def save() -> pathlib.Path:
        # A finite loss can still be followed by an update that made the weights inf/NaN: never let
        # such weights replace the last good checkpoint.
        bad = trainer.nonfinite_weights()
        if bad:
            raise TrainingError(
                f"weights became non-finite at step {step} ({', '.join(bad[:3])}...); stopped "
                f"without saving. Last good checkpoint: {last_good()}"
            )
        state = dict(
            step=step,
            train_time_s=train_time,
            max_steps=max_steps,
            tokens=tokens,
            history=vars(hist),
            data_rng=data_gen.get_state(),
            data_state=dataset.state(),
            expert_tokens=expert_tokens,
        )
        return trainer.save(out_dir, state, step, tokenizer_file)

    def last_good() -> str:
        held = run_dir.latest(out_dir)
        return str(held) if held is not None else "none (nothing was saved yet)"

    progress = sys.stderr.isatty() if progress is None else progress
    show_bar = progress and trainer.is_main
    bar = tqdm(total=max_steps, initial=step, disable=not show_bar, dynamic_ncols=True)
    tokens_per_step = cfg.batch_size * cfg.seq_len
    budget = _Budget(cfg, step, train_time)
    running, n_running, balance, norm = 0.0, 0, None, None
    interrupted, saved, saved_step, compile_said = False, None, None, False
    with _Interrupt() as interrupt:
        while step < max_steps:
            budget.before_step(step, train_time)
            t0 = _clock()
            batch = cfg.batch_size_at(tokens)
            x, y = dataset.batch("train", batch, cfg.seq_len, data_gen, rows_at[batch])
            # with a ramp the schedule runs over tokens, in full batches' worth (a smaller batch moves it less)
            at = (tokens / tokens_per_step, cfg.max_steps) if cfg.ramp else (step, max_steps)
            try:
                result = trainer.step(x, y, lr_at(at[0], cfg, at[1]))
            except NonFiniteLoss as e:
                bar.close()
                raise TrainingError(
                    f"loss became {e.loss} at step {step}; stopped without saving. Last good checkpoint: {last_good()}"
                ) from None
            step, tokens = step + 1, tokens + batch * cfg.seq_len
            dt = _clock() - t0
            train_time += dt
            if trainer.compile_s is not None and not compile_said:
                compile_said = True
                say(f"compiled the training step in {trainer.compile_s:.1f} s (its first step; inside the time budget)")
            running, n_running, norm = running + result.loss, n_running + 1, result.grad_norm
            if result.expert_tokens_LE is not None:
                counts = result.expert_tokens_LE
                expert_tokens += counts
                balance = (counts.max(dim=1).values.float() / counts.float().mean(dim=1)).mean().item()

            fitted = budget.refit(step, train_time, max_steps)
            if fitted is not None:
                fitted = trainer.agree(fitted)
                if step == FIRST_FIT[1]:  # later re-fits show in the progress line's step/max_steps
                    say(
                        f"time budget {cfg.time_budget_s:.0f}s at {budget.per_step * 1e3:.1f} ms/step: "
                        f"max_steps = {fitted}"
                    )
                max_steps = bar.total = fitted

            postfix = dict(loss=f"{result.loss:.3f}", tok_s=f"{batch * cfg.seq_len / dt:,.0f}")
            if balance is not None:
                postfix["load_max_mean"] = f"{balance:.2f}"
            bar.set_postfix(postfix)
            bar.update(1)

            if step % cfg.eval_interval == 0 or step == max_steps:
                by_source = {name: trainer.evaluate(batches) for name, (_, batches) in eval_sets.items()}
                val = sum(weight * by_source[name] for name, (weight, _) in eval_sets.items())
                extras = trainer.eval_extras()
                if mixture:
                    extras["val_by_source"] = by_source
                hist.add(step, tokens, train_time, running / n_running, val, **extras)
                running, n_running = 0.0, 0
                msg = (
                    f"step {step}/{max_steps}  train {hist.train_loss[-1]:.4f}  val {val:.4f}  "
                    + (f"({dataset.bits_per_byte(val):.3f} bits/byte)  " if per_token else "")
                    + (f"grad norm {norm:.3f}  " if norm is not None else "")
                    + (f"CER {extras['cer']:.3f}  " if "cer" in extras else "")
                    + (f"batch {batch}  " if cfg.ramp else "")
                    + f"{train_time:.0f}s  {tokens / train_time:,.0f} tok/s"
                    + (f"  load max/mean {balance:.2f}" if balance is not None else "")
                    + (_sources_line(by_source, dataset.progress()) if mixture else "")
                )
                bar.write(msg) if show_bar else say(msg)
            if step % cfg.checkpoint_interval == 0 or step == max_steps:
                saved, saved_step = save(), step
            if trainer.any(interrupt.requested):
                interrupted = True
                break
    bar.close()
    if saved_step != step and step > 0:  # interrupted between checkpoints
        saved = save()
    summary = {
        "config": model_cfg.name,
        "steps": step,
        "max_steps": max_steps,
        "tokens": tokens,
        "train_time_s": round(train_time, 2),
        "tokens_per_s": round(tokens / max(train_time, 1e-9)),
        "final_val_loss": hist.val_loss[-1] if hist.val_loss else None,
        "final_val_bits_per_byte": dataset.bits_per_byte(hist.val_loss[-1]) if hist.val_loss else None,
        "data": dataset.name,
        **({"sources": _sources_summary(hist, dataset.progress())} if dataset.progress() else {}),
        "tokenizer": dataset.tokenizer.describe(),
        "interrupted": interrupted,
        "checkpoint": str(saved),
        "history": vars(hist),
        "expert_tokens": expert_tokens.tolist(),
        **trainer.describe(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    if trainer.is_main:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        if plot and not interrupted:
            from moe.training.plots import plot_training

            plot_training(summary, out_dir / "training.png")
    say(f"{'interrupted' if interrupted else 'done'}: step {step}, checkpoint {saved}")
    return summary


def _sources_line(val_by_source: dict, progress: dict) -> str:
    """A mixture's part of an evaluation's log line: each source's validation loss and epochs drawn."""
    return "".join(
        f"\n    {name}: val {val_by_source[name]:.4f}  {p['tokens']:,} tokens  {p['epochs']:.3f} epochs"
        for name, p in progress.items()
    )


def _sources_summary(hist: History, progress: dict) -> dict:
    """summary.json's "sources": per source, tokens and epochs drawn, and the last validation loss."""
    last = hist.val_by_source[-1] if hist.val_by_source else {}
    return {name: {**p, "final_val_loss": last.get(name)} for name, p in progress.items()}
