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
    add_serving_layout,
    add_set,
    check_device,
    overrides,
)


def add_parser(sub) -> None:
    s = sub.add_parser("serve-bench", help="replay Poisson arrivals through the engine, or over HTTP (--url)")
    s.add_argument("--config", default="tiny", help="preset with random weights (ignored with --checkpoint)")
    s.add_argument("--checkpoint", help="serve this trained model instead (with --url: only its tokenizer is read)")
    s.add_argument(
        "--url",
        help="drive this OpenAI-compatible server (http://host:port) over HTTP with the same arrivals "
        "and prompts, instead of an engine in this process",
    )
    s.add_argument("--model", help="with --url: the model name to send (default: none, the server's own)")
    s.add_argument(
        "--text-prompts",
        action="store_true",
        help="with --url: send prompts as text (the checkpoint's tokenizer decodes them), for servers "
        "that take only strings (transformers serve)",
    )
    s.add_argument(
        "--no-ignore-eos", action="store_true", help="with --url: leave ignore_eos out (servers that refuse it)"
    )
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
    add_serving_layout(s)
    s.set_defaults(func=run)


def run(args) -> int:
    import torch

    from moe.files import check_plain_name
    from moe.serving import Engine
    from moe.training.run_dir import prepare

    sampling = serving.sampling(args)
    check_device(args)
    if args.name is not None:
        check_plain_name(args.name, "--name")  # the files go in --out
    if args.out:
        prepare(args.out)  # an unwritable --out fails now, not after the replay
    if args.url:
        return _over_http(args, sampling)
    settings = dict(
        kv_budget_bytes=int(args.kv_budget_mb * 2**20),
        page_size=args.page_size,
        max_batch=args.max_batch,
        draft_tokens=args.draft_tokens,
        compile=args.compile,
    )
    if serving.distributed(args):
        return _across_ranks(args, sampling, settings)
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
    return _report(args, sampling, Engine(model, draft=draft, **settings), tok)


def _across_ranks(args, sampling: dict, settings: dict) -> int:
    """--tp/--pp/--ep under torchrun: rank 0 replays through the DistributedEngine, the others compute."""
    if not args.checkpoint:
        raise ValueError("--tp/--pp/--ep need --checkpoint: every rank reads its own slices of one")
    serving.check_layout_flags(args)
    tok = serving.tokenizer(args.checkpoint, args.draft_checkpoint)
    draft = serving.load(args.draft_checkpoint, args) if args.draft_checkpoint and serving.is_main() else None
    engine = serving.engine(args, draft, **settings)
    try:
        if engine is not None:
            _report(args, sampling, engine, tok)
    finally:
        if engine is not None:
            engine.close()
        serving.finish(args)
    return EXIT_OK


def _report(args, sampling: dict, engine, tok) -> int:
    """Replay the arrivals through `engine`; print the summary and, with --out, write it."""
    import sys

    import torch

    from moe.profiling.timing import environment
    from moe.serving import replay

    model, draft = engine.model, engine.draft
    requests = replay.make_requests(args.requests, args.prompt_len, args.max_new_tokens, sampling, args.seed, tok)
    progress = lambda line: print(f"serve-bench: {line}", file=sys.stderr, flush=True)
    summary = replay.replay(engine, requests, args.rate, args.seed, log=progress)
    layout = f"tp={args.tp},pp={args.pp},ep={args.ep}"
    if hasattr(engine, "rank_report"):  # across ranks: where their time went
        summary["ranks"] = {
            "layout": layout,
            "microbatches": engine.microbatches,
            "target_forward_s": round(engine.target_s, 3),
            "per_rank": engine.rank_report(),
        }
    if engine.compile_s is not None:
        summary["compile_s"] = round(engine.compile_s, 2)  # inside the replay: early requests waited for it
    summary["setup"] = {
        **environment(torch.cuda.is_available()),
        "config": model.cfg.name,
        "layout": layout,
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


def _over_http(args, sampling: dict) -> int:
    """--url: the arrivals sent as streamed completions; the summary printed and, with --out, written."""
    import json
    import pathlib

    from moe.profiling.timing import environment
    from moe.serving import http_replay, replay

    if not args.url.startswith(("http://", "https://")):
        raise ValueError(f"--url must start with http:// or https://, got {args.url!r}")
    tok = serving.tokenizer(args.checkpoint) if args.checkpoint else None
    requests = replay.make_requests(args.requests, args.prompt_len, args.max_new_tokens, sampling, args.seed, tok)
    from moe.data.tokenizer import ByteTokenizer

    text = (tok or ByteTokenizer()).decode if args.text_prompts else None
    summary = http_replay.replay_http(
        args.url, requests, args.rate, args.seed, args.model, text=text, ignore_eos=not args.no_ignore_eos
    )
    summary["setup"] = {
        **environment(False),
        "rate": args.rate,
        "prompt_len": args.prompt_len,
        "max_new_tokens": args.max_new_tokens,
        "sampling": sampling,
    }
    header = (
        f"serve-bench --url {args.url}: {args.requests} requests at {args.rate}/s, prompt {args.prompt_len}, "
        f"{args.max_new_tokens} new tokens"
    )
    http_replay.print_summary(summary, header)
    if args.out:
        path = pathlib.Path(args.out) / f"{args.name or 'serve-http'}.json"
        path.write_text(json.dumps(summary, indent=1))
        print(f"wrote {path}")
    return EXIT_OK
