"""serve: an OpenAI-compatible HTTP server over the engine (moe/serving/server.py)."""

from __future__ import annotations

import signal
import socket
import sys

from moe.cli import serving
from moe.cli.common import (
    EXIT_OK,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    add_draft,
    add_runtime,
    add_serving_layout,
    check_device,
)


def add_parser(sub) -> None:
    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)")
    s.add_argument("--checkpoint", required=True, help="run directory (uses its latest step) or a step directory")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free one, printed)")
    s.add_argument(
        "--served-model-name",
        action="append",
        help="the model's name in the API (default: the checkpoint's path; repeat for aliases)",
    )
    s.add_argument(
        "--max-queued", type=POSITIVE_INT, default=256, help="requests waiting for a row before new ones get 429"
    )
    s.add_argument(
        "--request-timeout", type=POSITIVE_FLOAT, default=600.0, help="seconds a request may take before a 504"
    )
    s.add_argument("--grace-period", type=float, default=30.0, help="seconds running requests get to finish on SIGTERM")
    s.add_argument("--kv-budget-mb", type=POSITIVE_FLOAT, help="KV pool (default: --max-batch full sequences)")
    s.add_argument("--max-batch", type=POSITIVE_INT, default=32, help="rows in one step")
    s.add_argument("--page-size", type=POSITIVE_INT, default=16, help="positions per KV page")
    s.add_argument(
        "--max-batch-tokens",
        type=POSITIVE_INT,
        default=None,
        help="tokens through one forward: longer prompts are prefilled in chunks beside the decodes",
    )
    s.add_argument(
        "--no-prefix-caching",
        action="store_true",
        help="do not share prompt pages between requests (sharing is off anyway with a draft or a vision model)",
    )
    add_draft(s)
    add_runtime(s, compile_help="torch.compile the model's forward (the first requests compile)")
    add_serving_layout(s)
    s.set_defaults(func=run)


def run(args) -> int:
    import uvicorn

    from moe.serving.server import Settings, build_app

    check_device(args)
    if serving.distributed(args):
        serving.check_layout_flags(args)
    tokenizer = serving.tokenizer(args.checkpoint, args.draft_checkpoint)  # refused now, before binding a port
    from moe.training.checkpoint import read_config

    cfg, _ = read_config(args.checkpoint)
    budget = None if args.kv_budget_mb is None else int(args.kv_budget_mb * 2**20)
    settings = dict(
        kv_budget_bytes=budget,
        page_size=args.page_size,
        max_batch=args.max_batch,
        max_batch_tokens=args.max_batch_tokens,
        draft_tokens=args.draft_tokens,
        compile=args.compile,
        prefix_caching=not args.no_prefix_caching and not args.draft_checkpoint and cfg.vision is None and args.ep == 1,
    )
    if not serving.is_main():  # another rank: compute its part of every step until rank 0 stops
        serving.engine(args, None, **settings)
        serving.finish(args)
        return EXIT_OK

    def load(metrics):
        draft = serving.load(args.draft_checkpoint, args) if args.draft_checkpoint else None
        return serving.engine(args, draft, **settings), tokenizer

    names = args.served_model_name or [str(args.checkpoint)]
    app = build_app(load, Settings(names, args.max_queued, args.request_timeout))
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        raise ValueError(f"--host {args.host} --port {args.port}: cannot listen there ({e.strerror})") from None
    sock.listen(2048)  # clients that connect once the address is printed queue until uvicorn accepts
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=args.grace_period, lifespan="on")
    server = uvicorn.Server(config)
    print(f"serving {names[0]} on http://{host}:{port}/v1 (ready when GET /health is 200)", flush=True)
    # uvicorn raises the SIGTERM it handled again once it has shut down; a handler of ours makes
    # that a normal exit (0) after the graceful shutdown instead of death by the signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=[sock])
    serving.finish(args)
    print("server stopped", file=sys.stderr)
    return EXIT_OK
