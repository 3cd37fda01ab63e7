"""Peak host memory per rank of a distributed layout, on CPU processes (gloo): after building the
trainer and after a few training steps. Peak RSS (the kernel's high-water mark of resident memory,
`ru_maxrss`) includes the Python and torch runtime, so compare runs with each other, not with
parameter arithmetic. Writes dist_memory_<config>_<layout>.{json,md} (layout dp=2,ep=2: dp2-ep2).

    python -m bench.dist_memory --config small --layout dp=2,ep=2 --steps 2 --batch-size 8 --seq-len 128
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sys
import tempfile

import torch
import torch.multiprocessing as mp

from bench import harness

STAGES = ("before build", "after build", "after steps")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rank(rank, world, port, args, out):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from moe.config import load_config, load_train_config
    from moe.layout import parse_layout
    from moe.parallel import trainer as dist_trainer

    device = dist_trainer.init_process_group("cpu")
    cfg = load_config(args.config)
    train_cfg = load_train_config(args.config, batch_size=args.batch_size, seq_len=args.seq_len)
    built_from = _peak_mib()
    trainer = dist_trainer.DistributedTrainer.build(cfg, train_cfg, parse_layout(args.layout), device)
    built = _peak_mib()
    gen = torch.Generator().manual_seed(0)
    rows = trainer.batch_rows(args.batch_size)
    for _ in range(args.steps):
        x = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len), generator=gen)
        trainer.step(x[rows], x[rows], train_cfg.lr)
    stepped = _peak_mib()
    with open(os.path.join(out, f"{rank}.json"), "w") as f:
        json.dump(dict(zip(STAGES, (built_from, built, stepped))), f)
    dist_trainer.close_process_group()


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--config", default="small")
    p.add_argument("--layout", default="dp=2,ep=2")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    args = p.parse_args(argv)
    from moe.layout import parse_layout

    world = parse_layout(args.layout).world_size
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_rank, args=(world, port, args, out), nprocs=world)
        per_rank = [json.load(open(os.path.join(out, f"{r}.json"))) for r in range(world)]
    print(
        f"{args.config} in {args.layout}, {args.steps} steps of {args.batch_size} x {args.seq_len}, "
        f"torch {torch.__version__}: peak RSS per rank, MiB"
    )
    print("rank  before build  after build  after steps")
    for r, m in enumerate(per_rank):
        print(f"{r:>4}  {m['before build']:>12,.0f}  {m['after build']:>11,.0f}  {m['after steps']:>11,.0f}")
    result = {
        "config": args.config,
        "layout": args.layout,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "peak_rss_mib": per_rank,
    }
    rows = [{"rank": r, **{s: f"{m[s]:,.0f}" for s in STAGES}} for r, m in enumerate(per_rank)]
    text = (
        f"{args.config} in {args.layout}, {args.steps} steps of {args.batch_size} x {args.seq_len}: "
        "peak RSS per rank, MiB\n\n" + harness.markdown_table(rows)
    )
    name = f"dist_memory_{args.config}_{args.layout.replace('=', '').replace(',', '-')}"
    harness.write_result(args.out, name, result, text, by="bench.dist_memory", title="Peak host memory per rank")
    return 0


if __name__ == "__main__":
    sys.exit(main())
