"""train: the flags read into a model config, a training config and a layout, then
moe.parallel.launch.train_in_layout, which picks one process or the distributed trainer."""

from __future__ import annotations

from moe.cli.common import EXIT_INTERRUPTED, EXIT_OK, SEED, add_runtime, add_set, check_device, overrides

_TRAIN_FLAGS = ("lr", "batch_size", "seq_len", "max_steps", "time_budget_s", "seed")  # [train] fields by their names
_LAYOUT_FLAGS = ("dp", "tp", "ep", "pp", "microbatches", "schedule", "virtual_stages", "first_stage_layers", "sharding")


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train on the bundled Shakespeare corpus (byte-level) or a prepared dataset")
    t.add_argument("--config", default="tiny", help="preset name or .toml path")
    t.add_argument(
        "--data",
        action="append",
        metavar="PATH | NAME=PATH:epochs=N | NAME=PATH:weight=W",
        help="a dataset written by `prepare` (default: the bundled corpus, byte-level; vocab_size follows "
        "its tokenizer); repeat NAME=PATH:epochs=N (or :weight=W) to train on a mixture of them (the "
        "config's [[data]] tables give the same)",
    )
    t.add_argument("--out", help="run directory for checkpoints and plots (default runs/<config name>)")
    t.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        choices=["auto"],
        help="continue exactly from the latest checkpoint in --out; `--resume auto`: continue if there is "
        "one, else start afresh (for torchrun --max-restarts, which reruns the same command after a failure)",
    )
    t.add_argument(
        "--overwrite", action="store_true", help="start afresh even if --out holds checkpoints (deletes them)"
    )
    t.add_argument(
        "--init-from",
        dest="init_from",
        metavar="CHECKPOINT",
        help="start a new run from this "
        "checkpoint's weights (e.g. extend its context: --seq-len 1024 --set max_seq_len=1024 --set "
        "'rope_scaling={rope_type=\"yarn\", factor=4.0, original_max_position_embeddings=256}')",
    )
    t.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume: accept training settings that differ "
        "from the checkpoint's (the run then no longer continues as if never stopped)",
    )
    t.add_argument(
        "--dense",
        action="store_true",
        help="train the dense twin: one expert, top-1, top_k x d_ff wide (same active parameters)",
    )
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--batch-size", dest="batch_size", type=int, help="sequences per step")
    t.add_argument("--seq-len", dest="seq_len", type=int, help="tokens per sequence")
    t.add_argument(
        "--batch-size-ramp",
        dest="batch_size_ramp",
        type=_ramp,
        metavar="START,INCREMENT,OVER_TOKENS",
        help="Megatron's ramp: start at START sequences, add INCREMENT in even steps over OVER_TOKENS tokens "
        "up to --batch-size; the run and its learning-rate schedule are then counted in tokens",
    )
    t.add_argument("--max-steps", dest="max_steps", type=int, help="steps to train (the end of the cosine schedule)")
    t.add_argument(
        "--max-tokens",
        dest="max_tokens",
        type=int,
        help="tokens to train: max_steps = this / (batch size x seq len) (default for a mixture given in "
        "epochs: the tokens those epochs hold)",
    )
    t.add_argument(
        "--time-budget",
        dest="time_budget_s",
        type=float,
        help="seconds of training: fit max_steps to it after measuring the step time (0: off)",
    )
    t.add_argument("--seed", type=SEED, help="random seed (weights, data order)")
    add_runtime(
        t,
        device_help="cpu or cuda (default: cuda if available)",
        expert_backend_help="expert matmuls: auto (Triton on CUDA, PyTorch elsewhere), torch or triton "
        "(default: the config's expert_backend)",
        compile_help="torch.compile the training step (one process; its first step compiles, inside the time budget)",
    )
    t.add_argument(
        "--train-language-model",
        dest="train_language_model",
        action="store_true",
        help="a vision config: train the language model too (default: frozen, Flamingo's stage 2)",
    )
    t.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    _add_layout(t)
    add_set(t, help="override any model or [train] field, e.g. --set n_layers=2 --set warmup_steps=10")
    t.set_defaults(func=run)


def _add_layout(t) -> None:
    par = t.add_argument_group(
        "parallel layout (launch with torchrun; the product of the degrees is the world "
        "size; defaults from the config's [parallel] table, else 1)"
    )
    par.add_argument("--dp", type=int, help="data parallel replicas")
    par.add_argument("--tp", type=int, help="tensor parallel: split query heads and each expert's d_ff")
    par.add_argument("--ep", type=int, help="expert parallel: split the experts (tokens travel by all-to-all)")
    par.add_argument("--pp", type=int, help="pipeline parallel: split the layers into stages")
    par.add_argument("--microbatches", type=int, help="microbatches per step (pipeline; else gradient accumulation)")
    par.add_argument(
        "--schedule",
        choices=("1f1b", "gpipe", "interleaved-1f1b", "zero-bubble"),
        help="pipeline schedule (default 1f1b; zero-bubble: torch's interleaved zero bubble, backward split "
        "into input and weight gradients)",
    )
    par.add_argument(
        "--virtual-stages",
        dest="virtual_stages",
        type=int,
        help="interleaved-1f1b and zero-bubble: stages a rank runs (every pp-th chunk of layers), cutting the "
        "bubble that many times",
    )
    par.add_argument(
        "--first-stage-layers",
        dest="first_stage_layers",
        type=int,
        help="layers on the first pipeline stage, which also holds the embedding (default: even split)",
    )
    par.add_argument(
        "--sharding",
        choices=("zero1", "fsdp"),
        help="data parallel, both on FSDP2: zero1 (default) gathers the weights once per step, fsdp "
        "re-gathers them for backward (less memory, 1.5x the traffic)",
    )


def run(args) -> int:
    from moe.layout import load_layout
    from moe.parallel.launch import train_in_layout

    check_device(args)
    model_cfg, train_cfg, data = _configs(args)
    layout = load_layout(args.config, **{k: getattr(args, k) for k in _LAYOUT_FLAGS})
    summary = train_in_layout(
        model_cfg,
        train_cfg,
        args.out or f"runs/{model_cfg.name}",
        layout,
        data=data,
        resume=args.resume,
        overwrite=args.overwrite,
        allow_changes=args.allow_changes,
        init_from=args.init_from,
        device=args.device,
        progress=None if not args.no_progress else False,
    )
    return EXIT_INTERRUPTED if summary["interrupted"] else EXIT_OK


def _configs(args):
    """The model config, the training config and the opened dataset (None: the bundled corpus) the
    flags ask for: --set and the named flags over the config file's tables."""
    from moe.config import load_config, load_train_config, split_overrides

    model_over, train_over = split_overrides(overrides(args.set))
    for flag in _TRAIN_FLAGS:
        if getattr(args, flag) is not None:
            train_over[flag] = getattr(args, flag)
    if args.batch_size_ramp:
        train_over.update(zip(("ramp_start_batch", "ramp_increment", "ramp_tokens"), args.batch_size_ramp))
    if args.expert_backend:
        model_over["expert_backend"] = args.expert_backend
    if args.compile:
        train_over["compile"] = True
    if args.train_language_model:
        train_over["train_language_model"] = True
    train_cfg = load_train_config(args.config, **train_over)
    data = _open_data(args.data, args.config, train_cfg)  # opened once: the loop takes it as it is
    if data is not None:
        model_over.setdefault("vocab_size", data.tokenizer.vocab_size)  # follows the data unless --set (checked)
    train_cfg = _run_length(train_cfg, data, args.max_tokens, steps_given="max_steps" in train_over)
    model_cfg = load_config(args.config, **model_over)
    if args.dense:
        model_cfg = model_cfg.dense_twin()
    return model_cfg, train_cfg, data


def _open_data(flags: list[str] | None, config: str, train_cfg):
    """--data as given (else the config's [[data]] tables): None (the bundled corpus), one prepared
    dataset (text or instruction data), or a Mixture of named sources (moe/data/mixture.py)."""
    from moe.config import read_table
    from moe.data.mixture import Mixture, parse_source, source_from_dict
    from moe.training.task import open_dataset

    if not flags:
        tables = read_table(config, "data") or []
        if not tables:
            return None
        return Mixture.open([source_from_dict(t, f"[[data]] of {config!r}") for t in tables], train_cfg.seed)
    sources = [parse_source(f) for f in flags]
    if len(flags) == 1 and sources[0] is None:
        return open_dataset(flags[0], train_cfg.val_fraction, train_cfg.seed)
    plain = [f for f, s in zip(flags, sources) if s is None]
    if plain:
        raise ValueError(
            f"--data {plain[0]}: with several --data, give each as NAME=PATH:epochs=N or NAME=PATH:weight=W"
        )
    return Mixture.open(sources, train_cfg.seed)


def _run_length(train_cfg, data, max_tokens: int | None, steps_given: bool):
    """max_steps from --max-tokens, or from a mixture's epochs when neither length flag is given."""
    import dataclasses
    import os

    from moe.data.mixture import Mixture

    tokens_per_step = train_cfg.batch_size * train_cfg.seq_len
    if max_tokens is not None:
        if steps_given:
            raise ValueError("--max-steps and --max-tokens both give the run's length: give one of them")
        if max_tokens < tokens_per_step:
            raise ValueError(f"--max-tokens {max_tokens} is less than one step ({tokens_per_step} tokens)")
        return dataclasses.replace(train_cfg, max_steps=max_tokens // tokens_per_step)
    if not steps_given and isinstance(data, Mixture):
        data.check_seq_len(train_cfg.seq_len)
        rows = data.epoch_rows()
        if rows is not None and train_cfg.ramp:
            raise ValueError(
                "--batch-size-ramp with a length from the sources' epochs: ramped batches do not end on the "
                "epochs' last row; give --max-tokens or --max-steps"
            )
        if rows is not None:
            if rows < train_cfg.batch_size:
                raise ValueError(f"--data: the sources' epochs hold {rows} rows, less than one batch")
            steps, left = divmod(rows, train_cfg.batch_size)
            if os.environ.get("RANK", "0") == "0":
                print(
                    f"max_steps = {steps}: the sources' epochs hold {rows:,} rows of {train_cfg.seq_len} tokens"
                    + (f" (the last {left} are not drawn: not a whole batch)" if left else "")
                )
            return dataclasses.replace(train_cfg, max_steps=steps)
    return train_cfg


def _ramp(text: str) -> tuple[int, int, int]:
    import argparse

    try:
        start, increment, tokens = (int(float(v)) if "e" in v.lower() else int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give START,INCREMENT,OVER_TOKENS, three integers") from None
    return start, increment, tokens
