"""MoE versus its dense twin on the clock: train both, eagerly and compiled, in interleaved pairs, and
compare validation loss at equal wall-clock (the time budget) and at equal tokens; plus where the
MoE's layer time goes (router, permutation, grouped matmuls) beside the dense MLP it replaces.

    python -m bench.compare_dense --config tiny --pairs 3            # 12 runs of 240 s
    python -m bench.compare_dense --config tiny --pairs 3 --reuse    # re-read those runs

How it is run, so that the figures can be believed on a shared machine:
- Pair p trains the MoE and its twin with the same seed (p + 1: weights and data order), one after the
  other, once per mode (eager, then compiled); odd pairs train the twin first, so a drift in the
  machine's speed does not always favour the same model. Runs go one at a time, never side by side.
- Every run is `python -m moe train` as a user runs it, with `--time-budget` (--budget, 240 s): its cosine schedule is
  fitted to the budget from its own step time, and a compiled run compiles inside the budget. Before
  the first pair, each compiled variant trains two steps to fill inductor's on-disk cache, so every
  measured compile is a warm one (reported as compile_s).
- Loss at the budget is interpolated between evaluations (never extrapolated); at equal tokens, at the
  smaller of the pair's token counts. The tables give every pair and the medians over pairs.
Arguments this script does not know (e.g. --set n_layers=2 --max-steps 10) go to every `train`.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import subprocess
import sys

import numpy as np
import torch

import kernels
from bench import harness
from moe.config import load_config
from moe.model import MoELayer
from moe.profiling.timing import median_ms
from moe.training.plots import plot_comparison

ROOT = pathlib.Path(__file__).resolve().parent.parent


def val_at(summary: dict, key: str, at: float) -> float:
    """Validation loss at history[key] (train_time_s or tokens) = at, linearly interpolated between
    evaluations (never extrapolated: `at` is at most the run's last evaluation)."""
    h = summary["history"]
    return float(np.interp(at, h[key], h["val_loss"]))


def layer_breakdown(config: str, batch_tokens: int) -> dict:
    """Forward+backward milliseconds of the parts of one MoE layer of `config`, beside the expert MLP of
    its dense twin's layer (the same active width and FLOPs), on the same T tokens (median of 40 runs).
    Both run the model's own modules, so the activation (GELU or SwiGLU) is the preset's."""
    cfg = load_config(config)
    T, K = batch_tokens, cfg.top_k
    torch.manual_seed(0)
    moe, dense = MoELayer(cfg), MoELayer(cfg.dense_twin())
    x_TD = torch.randn(T, cfg.d_model, requires_grad=True)
    r = moe.router(x_TD)
    weights_TK, experts_TK = r.weights.detach().requires_grad_(), r.experts
    order_M, offsets_E = kernels.sort_by_expert(experts_TK.reshape(-1), cfg.n_experts)
    x_MD = x_TD.detach()[order_M // K].requires_grad_()
    all_rows = torch.tensor([T], dtype=torch.int32)

    def router_part():
        out = moe.router(x_TD)
        (out.aux_loss + out.weights.sum()).backward()

    def permutation_part():  # sort, gather rows, combine; the experts replaced by the identity
        order, _ = kernels.sort_by_expert(experts_TK.reshape(-1), cfg.n_experts)
        kernels.combine(kernels.gather_rows(x_TD, order, K), order, weights_TK).sum().backward()

    def expert_mlp(layer, x, offsets):
        return kernels.sorted_mlp(
            x, offsets, layer.w_up, layer.w_gate, layer.w_down, activation_name=cfg.activation, backend="torch"
        )

    def experts_part():
        expert_mlp(moe, x_MD, offsets_E).sum().backward()

    def dense_part():  # what the twin's layer runs: one expert holding every token
        expert_mlp(dense, x_TD, all_rows).sum().backward()

    parts = {
        "router": router_part,
        "permutation": permutation_part,
        "experts (grouped matmuls + activation)": experts_part,
        "dense MLP of the twin (same FLOPs)": dense_part,
    }
    return {name: round(median_ms(lambda _, fn=fn: fn(), [None], 40, cuda=False), 3) for name, fn in parts.items()}


def run_name(model: str, mode: str, pair: int) -> str:
    return f"{model}-{mode}-{pair}"


def train(config: str, model: str, mode: str, seed: int, out: pathlib.Path, extra: list[str], budget: float) -> None:
    cmd = [
        sys.executable,
        "-m",
        "moe",
        "train",
        "--config",
        config,
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--overwrite",
        "--no-progress",
        "--time-budget",
        str(budget),
        *(["--dense"] if model == "dense" else []),
        *(["--compile"] if mode == "compiled" else []),
        *extra,
    ]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def pair_rows(moe: dict, dense: dict) -> dict:
    """One pair's figures: loss at the budget both reached, and at the tokens both saw."""
    budget = min(r["history"]["train_time_s"][-1] for r in (moe, dense))
    tokens = min(r["tokens"] for r in (moe, dense))
    row = {"budget_s": round(budget, 1), "tokens": tokens}
    for name, r in (("moe", moe), ("dense", dense)):
        row.update(
            {
                f"{name}_steps": r["steps"],
                f"{name}_tokens_per_s": r["tokens_per_s"],
                f"{name}_compile_s": r.get("compile_s"),
                f"{name}_val_at_budget": round(val_at(r, "train_time_s", budget), 4),
                f"{name}_val_at_tokens": round(val_at(r, "tokens", tokens), 4),
            }
        )
    row["lead_at_budget"] = round(row["dense_val_at_budget"] - row["moe_val_at_budget"], 4)
    row["lead_at_tokens"] = round(row["dense_val_at_tokens"] - row["moe_val_at_tokens"], 4)
    return row


def markdown(result: dict) -> str:
    lines = []
    for mode, block in result["modes"].items():
        lines += [
            f"**{mode}** (dense minus MoE: a positive lead is the MoE ahead)",
            "",
            "| pair | seed | MoE at budget | dense at budget | lead | MoE tokens/s | dense tokens/s "
            "| MoE compile s | dense compile s | lead at equal tokens (M) |",
            "|" + "---|" * 10,
        ]
        for i, row in enumerate(block["pairs"]):
            lines.append(
                f"| {i + 1} | {i + 1} | {row['moe_val_at_budget']} | {row['dense_val_at_budget']} | "
                f"{row['lead_at_budget']:+.4f} | {row['moe_tokens_per_s']} | {row['dense_tokens_per_s']} | "
                f"{row['moe_compile_s']} | {row['dense_compile_s']} | "
                f"{row['lead_at_tokens']:+.4f} ({row['tokens'] / 1e6:.2f}) |"
            )
        m = block["median"]
        lines += [
            f"| median | | {m['moe_val_at_budget']} | {m['dense_val_at_budget']} | {m['lead_at_budget']:+.4f} | "
            f"{m['moe_tokens_per_s']} | {m['dense_tokens_per_s']} | | | {m['lead_at_tokens']:+.4f} |",
            "",
        ]
    b = result["layer_breakdown_ms"]
    lines += [f"| one layer, forward + backward, {result['tokens_per_step']} tokens, eager | ms |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in b.items()]
    lines += [
        f"| MoE layer total (router + permutation + experts) | "
        f"{sum(v for k, v in b.items() if not k.startswith('dense')):.3f} |"
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--config", default="tiny", help="the MoE preset (its twin is --dense)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--budget", type=float, default=240.0, help="seconds each run trains (its --time-budget)")
    ap.add_argument("--modes", default="eager,compiled", help="comma-separated: eager, compiled")
    ap.add_argument("--runs", default="runs/compare", help="where the runs are written")
    ap.add_argument("--reuse", action="store_true", help="train nothing: read the runs already under --runs")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="train only the runs that have no summary.json yet "
        "(finish an interrupted comparison; the kept runs must have had the same arguments)",
    )
    ap.add_argument("--name", default="moe_vs_dense", help="file name stem of the outputs")
    args, extra = ap.parse_known_args()
    modes = args.modes.split(",")
    if not set(modes) <= {"eager", "compiled"} or args.pairs < 1:
        ap.error(f"--modes takes eager and/or compiled, --pairs at least 1; got {args.modes!r}, {args.pairs}")
    runs_dir = pathlib.Path(args.runs)
    if not args.reuse:
        if "compiled" in modes:  # fill inductor's cache: the measured runs then compile warm
            for model in ("moe", "dense"):
                train(args.config, model, "compiled", 0, runs_dir / f"warm-{model}", [*extra, "--max-steps", "2"], 0)
        for pair in range(args.pairs):
            for mode in modes:
                for model in ("moe", "dense") if pair % 2 == 0 else ("dense", "moe"):
                    run_dir = runs_dir / run_name(model, mode, pair)
                    if not (args.keep and (run_dir / "summary.json").exists()):
                        train(args.config, model, mode, pair + 1, run_dir, extra, args.budget)
    summaries = {
        (m, mode, p): json.loads((runs_dir / run_name(m, mode, p) / "summary.json").read_text())
        for m in ("moe", "dense")
        for mode in modes
        for p in range(args.pairs)
    }
    out = args.out
    out.mkdir(parents=True, exist_ok=True)  # the plot goes first
    result = {"config": args.config, "pairs": args.pairs, "train_args": extra, "modes": {}}
    for mode in modes:
        rows = [pair_rows(summaries["moe", mode, p], summaries["dense", mode, p]) for p in range(args.pairs)]
        median = {k: statistics.median(r[k] for r in rows) for k in rows[0] if all(r[k] is not None for r in rows)}
        median = {
            k: round(v) if k == "tokens" or k.endswith(("_steps", "_tokens_per_s")) else round(v, 4)
            for k, v in median.items()
        }
        result["modes"][mode] = {"pairs": rows, "median": median}
    first = summaries["moe", modes[0], 0]
    curves = [summaries[m, mode, 0] for mode in modes for m in ("moe", "dense")]
    plot_comparison(
        curves,
        out / f"{args.name}.png",
        f"{args.config}: MoE and dense twin, pair 1 of {args.pairs}, {first['threads']} CPU threads, {first['date']}",
        labels=[f"{m} {mode}" for mode in modes for m in ("MoE", "dense")],
    )
    result["tokens_per_step"] = first["tokens"] // first["steps"]
    result["layer_breakdown_ms"] = layer_breakdown(args.config, result["tokens_per_step"])
    result.update(harness.host())
    text = markdown(result)
    harness.write_result(out, args.name, result, text, by="bench.compare_dense", title="MoE against its dense twin")
    print(text)


if __name__ == "__main__":
    main()
