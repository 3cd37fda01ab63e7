"""The pipeline bubble of each schedule, measured on gloo beside its formula.

Two CPU processes (pp=2, one thread each) train the same model with GPipe, 1F1B, interleaved 1F1B
and zero bubble (two chunks a rank). Each rank times every forward and backward chunk the schedule
runs (PipelineStage.forward_one_chunk, backward_one_chunk and backward_weight_one_chunk, wrapped);
idle is the rest of the schedule's step (schedule.step, not the optimizer): waiting for a
neighbour's activations or gradients, and the sends themselves. The formula counts only the first:
(p - 1) / (m + p - 1) for GPipe and 1F1B, (p - 1) / (v m + p - 1) interleaved (for zero bubble an
upper bound: it runs weight gradients in that bubble). Writes pipeline_bubble.{json,md}.

    python -m bench.pipeline_bubble --microbatches 4 --steps 5
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp

from bench import harness

SCHEDULES = (("gpipe", 1), ("1f1b", 1), ("interleaved-1f1b", 2), ("zero-bubble", 2))


def _timed(method, spans: list):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            spans.append(time.perf_counter() - start)

    return wrapper


def _rank(rank, world, port, args, schedule, virtual, out):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from torch.distributed.pipelining.stage import _PipelineStageBase

    from moe.config import load_config, load_train_config
    from moe.layout import Layout
    from moe.parallel import trainer as dist_trainer

    spans: list[float] = []
    for name in ("forward_one_chunk", "backward_one_chunk", "backward_weight_one_chunk"):
        setattr(_PipelineStageBase, name, _timed(getattr(_PipelineStageBase, name), spans))
    device = dist_trainer.init_process_group("cpu")
    cfg = load_config(args.config, n_layers=args.layers)
    train_cfg = load_train_config(args.config, batch_size=args.batch_size, seq_len=args.seq_len)
    layout = Layout(pp=2, microbatches=args.microbatches, schedule=schedule, virtual_stages=virtual)
    trainer = dist_trainer.DistributedTrainer.build(cfg, train_cfg, layout, device)
    walls: list[float] = []  # the schedule's step alone: not the optimizer, clipping or loss broadcast
    trainer.schedule.step = _timed(trainer.schedule.step, walls)
    gen = torch.Generator().manual_seed(0)
    steps = []
    for i in range(1 + args.steps):  # the first warms up
        x = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len), generator=gen)
        torch.distributed.barrier()
        spans.clear()
        walls.clear()
        trainer.step(x, x, train_cfg.lr)
        if i:
            steps.append({"wall_s": sum(walls), "busy_s": sum(spans)})
    with open(os.path.join(out, f"{rank}.json"), "w") as f:
        json.dump(steps, f)
    dist_trainer.close_process_group()


def measure(args) -> list[dict]:
    from moe.layout import bubble_fraction

    rows = []
    for schedule, virtual in SCHEDULES:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with tempfile.TemporaryDirectory() as out:
            mp.spawn(_rank, args=(2, port, args, schedule, virtual, out), nprocs=2)
            per_rank = [json.load(open(os.path.join(out, f"{r}.json"))) for r in range(2)]
        idle = [sum(1 - s["busy_s"] / s["wall_s"] for s in steps) / len(steps) for steps in per_rank]
        rows.append(
            {
                "schedule": schedule,
                "virtual_stages": virtual,
                "formula": round(bubble_fraction(2, args.microbatches, virtual), 4),
                "idle_rank0": round(idle[0], 4),
                "idle_rank1": round(idle[1], 4),
                "step_ms": round(1e3 * sum(s["wall_s"] for s in per_rank[0]) / len(per_rank[0]), 1),
            }
        )
    return rows


def markdown(result: dict) -> str:
    return (
        f"{result['config']} with {result['layers']} layers, pp=2 on gloo (2 CPU processes, one thread each), "
        f"{result['microbatches']} microbatches of {result['batch_size'] // result['microbatches']} x "
        f"{result['seq_len']}, mean of {result['steps']} steps: each rank's idle share of the step beside "
        "the bubble formula (idle also holds the sends, which the formula does not count)\n\n"
        + harness.markdown_table(result["rows"])
    )


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--config", default="tiny")
    p.add_argument("--layers", type=int, default=4, help="n_layers (interleaved: 2 ranks x 2 chunks)")
    p.add_argument("--microbatches", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    args = p.parse_args(argv)
    result = {
        "config": args.config,
        "layers": args.layers,
        "microbatches": args.microbatches,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "rows": measure(args),
        **harness.host(),
    }
    text = markdown(result)
    print(text)
    harness.write_result(args.out, "pipeline_bubble", result, text, by="bench.pipeline_bubble", title="Pipeline bubble")
    return 0


if __name__ == "__main__":
    sys.exit(main())
