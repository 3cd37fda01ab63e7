"""serve-bench in each serving layout against one process, and where every rank's time goes.

    python -m bench.serve_layouts [--rounds 3] [--requests 32] [--rate 64]

Setup: the `tiny` preset with random weights (seed 0) saved as a checkpoint; every layout reads
the same one. Each run is a fresh `python -m moe serve-bench` (under `torchrun --nproc-per-node 2`
for a layout) replaying the same Poisson arrivals, greedy, --prompt-len prompt tokens and
--max-new-tokens new ones each. The layouts' order rotates every round, so a machine's drift falls
on all alike; medians over rounds are reported (every round in the JSON).
  one process      the Engine alone
  tp2              attention heads and expert d_ff split over 2 ranks
  pp2, 1 micro     2 pipeline stages, each step one microbatch
  pp2, 2 micro     the same, each step's rows cut into 2 microbatches
  ep2              experts and rows split over 2 expert-parallel groups
Per rank (from the engine's rank report, over all target forwards): the share of their wall time
spent computing, inside the layers' collectives (tp all-reduces of attention and the experts, the
all-gather of a stage's input slices, ep all-to-all; peers' lateness included), waiting
for the stage's input or the last stage's logits, and idle; and the bytes it sent per step in
those collectives and its pipeline sends. On 2 cores two ranks share the cores one process had,
so a layout is expected to be slower here: the communication counted beside the compute says
what it costs.
Writes bench/results/<device>/serve_layouts.{json,md}.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile

import torch

from bench import harness

LAYOUTS = {
    "one process": [],
    "tp2": ["--tp", "2"],
    "pp2, 1 micro": ["--pp", "2", "--microbatches", "1"],
    "pp2, 2 micro": ["--pp", "2", "--microbatches", "2"],
    "ep2": ["--ep", "2"],
}


def run(name: str, checkpoint: str, args, tmp: str) -> dict:
    flags = LAYOUTS[name]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = (launcher if flags else [sys.executable]) + ["-m", "moe", "serve-bench", "--checkpoint", checkpoint]
    cmd += [*flags, "--requests", str(args.requests), "--rate", str(args.rate), "--greedy"]
    cmd += ["--prompt-len", str(args.prompt_len), "--max-new-tokens", str(args.max_new_tokens)]
    cmd += ["--seed", str(args.seed), "--out", tmp, "--name", "run"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{name}: serve-bench failed:\n{done.stderr[-3000:]}")
    with open(f"{tmp}/run.json") as f:
        s = json.load(f)
    return {
        "throughput_tok_s": s["throughput_tok_s"],
        "ttft_p50_s": s["ttft_s"]["p50"],
        "itl_p50_s": s["itl_s"]["p50"],
        "steps": s["steps"],
        "ranks": s.get("ranks", {}).get("per_rank"),
    }


def markdown(result: dict) -> str:
    rows = result["rows"]
    table = harness.markdown_table(rows, ["layout", "throughput_tok_s", "ttft_p50_s", "itl_p50_s"])
    ranks = [r for r in rows if "r0 compute" in r]
    table += "\nShares of the target forwards' wall time, per rank (r0 is rank 0), and bytes sent per step:\n\n"
    return table + harness.markdown_table(ranks, ["layout"] + [k for k in ranks[0] if k.startswith("r")])


def main(argv=None) -> None:
    p = harness.parser(__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--rate", type=float, default=64.0)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from moe.config import load_config
    from moe.model import MoETransformer
    from moe.training.checkpoint import save_checkpoint

    runs = {name: [] for name in LAYOUTS}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("tiny")
        torch.manual_seed(args.seed)
        checkpoint = str(save_checkpoint(f"{tmp}/ck", MoETransformer(cfg), cfg))
        names = list(LAYOUTS)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                runs[name].append(run(name, checkpoint, args, tmp))
                print(f"round {r} {name:13} {runs[name][-1]['throughput_tok_s']:7.1f} tok/s", flush=True)
    rows = []
    for name, got in runs.items():
        row = {"layout": name}
        for key in ("throughput_tok_s", "ttft_p50_s", "itl_p50_s"):
            row[key] = statistics.median(g[key] for g in got)
        for rank in range(2 if got[0]["ranks"] else 0):
            for part in ("compute", "collectives", "pipeline_wait", "idle"):
                row[f"r{rank} {part}"] = statistics.median(g["ranks"][rank][part] for g in got)
            row[f"r{rank} bytes/step"] = statistics.median(g["ranks"][rank]["bytes_sent_per_step"] for g in got)
        rows.append(row)
    result = {"setup": {k: v for k, v in vars(args).items() if k != "out"}, "rows": rows, "runs": runs}
    harness.write_result(
        args.out,
        "serve_layouts",
        result,
        markdown(result),
        by="bench.serve_layouts",
        title=f"serve-bench by layout: {args.requests} requests at {args.rate}/s, "
        f"{args.prompt_len} + {args.max_new_tokens} tokens, median of {args.rounds} rounds",
    )


if __name__ == "__main__":
    main()
