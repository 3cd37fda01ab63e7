"""serve-bench: Poisson arrivals replayed through the continuous-batching engine (moe/serving/replay.py)."""

from __future__ import annotations

from moe.cli import serving
from moe.cli.common import (
    EXIT_OK,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SEED,
    add_draft,
    add_runtime,
    add_sampling,
    add_set,
    check_device,
    overrides,
)


def add_parser(sub) -> None:
    s = sub.add_parser("serve-bench", help="replay Poisson arrivals through the continuous-batching engine")
    s.add_argument("--config", default="tiny", help="preset with random weights (ignored with --checkpoint)")
    s.add_argument("--checkpoint", help="serve this trained model instead")
    add_draft(s)
    s.add_argument("--rate", type=POSITIVE_FLOAT, default=4.0, help="mean arrivals per second (Poisson)")
    s.add_argument("--requests", type=POSITIVE_INT, default=32, help="requests to replay")
    s.add_argument("--prompt-len", type=POSITIVE_INT, default=32, help="prompt tokens (slices of the held-out text)")
    s.add_argument("--max-new-tokens", type=POSITIVE_INT, default=64, help="new tokens per request")
    s.add_argument("--kv-budget-mb", type=POSITIVE_FLOAT, default=16.0, help="KV cache memory (MiB) for all sequences")
    s.add_argument("--page-size", type=POSITIVE_INT, default=16, help="positions per KV page")
    s.add_argument("--max-batch", type=POSITIVE_INT, default=64, help="most sequences in one step")
    add_sampling(s)
    s.add_argument("--seed", type=SEED, default=0, help="arrivals, prompts, random weights and request seeds")
    add_runtime(
        s, compile_help="torch.compile the model's forward; the compile time lands in the first requests' latency"
    )
    s.add_argument("--out", help="write <name>.json and <name>.png (per-expert batch sizes over steps) here")
    s.add_argument("--name", help="file name stem (default serve-<config>)")
    add_set(s)
    s.set_defaults(func=run)


def run(args) -> int:
    import sys

    import torch

    from moe.files import check_plain_name
    from moe.profiling.timing import environment
    from moe.serving import Engine, replay
    from moe.training.run_dir import prepare

    sampling = serving.sampling(args)
    check_device(args)
    if args.name is not None:
        check_plain_name(args.name, "--name")  # the files go in --out
    if args.out:
        prepare(args.out)  # an unwritable --out fails now, not after the replay
    tok = None
    if args.checkpoint:
        tok = serving.tokenizer(args.checkpoint, args.draft_checkpoint)
        model = serving.load(args.checkpoint, args)
    else:
        from moe.config import load_config
        from moe.model import MoETransformer

        torch.manual_seed(args.seed)
        model = MoETransformer(load_config(args.config, **overrides(args.set))).to(serving.device(args))
    draft = serving.load(args.draft_checkpoint, args) if args.draft_checkpoint else None
    engine = Engine(
        model,
        kv_budget_bytes=int(args.kv_budget_mb * 2**20),
        page_size=args.page_size,
        max_batch=args.max_batch,
        draft=draft,
        draft_tokens=args.draft_tokens,
        compile=args.compile,
    )
    requests = replay.make_requests(args.requests, args.prompt_len, args.max_new_tokens, sampling, args.seed, tok)
    progress = lambda line: print(f"serve-bench: {line}", file=sys.stderr, flush=True)
    summary = replay.replay(engine, requests, args.rate, args.seed, log=progress)
    if engine.compile_s is not None:
        summary["compile_s"] = round(engine.compile_s, 2)  # inside the replay: early requests waited for it
    summary["setup"] = {
        **environment(torch.cuda.is_available()),
        "config": model.cfg.name,
        "checkpoint": args.checkpoint,
        "draft": args.draft_checkpoint,
        "draft_tokens": args.draft_tokens if draft else None,
        "rate": args.rate,
        "prompt_len": args.prompt_len,
        "max_new_tokens": args.max_new_tokens,
        "kv_pages": engine.n_pages,
        "page_size": args.page_size,
        "max_batch": args.max_batch,
        "sampling": sampling,
    }
    header = (
        f"serve-bench {model.cfg.name}{' + draft' if draft else ''}: {args.requests} requests at "
        f"{args.rate}/s, prompt {args.prompt_len}, {args.max_new_tokens} new tokens, "
        f"{engine.n_pages} pages of {args.page_size}"
    )
    if engine.compile_s is not None:
        header += f"; compiled ({engine.compile_s:.1f} s in forwards that compiled, inside the latencies)"
    replay.print_summary(summary, header)
    if args.out:
        out = replay.write(summary, args.out, args.name or f"serve-{model.cfg.name}", header)
        print(f"wrote {out}")
    return EXIT_OK
