"""MoE versus its dense twin: validation loss against wall-clock time and tokens, plus where the MoE's
layer time goes (router, permutation, grouped matmuls) beside the dense MLP it replaces. Reads two
finished runs' summary.json (from `python -m moe train`), writes a PNG, a JSON and a markdown table
under --out.

    python -m moe train --config tiny --out runs/tiny
    python -m moe train --config tiny --dense --out runs/tiny-dense
    python scripts/compare_dense.py runs/tiny runs/tiny-dense --out bench/results/cpu-2core
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import kernels  # noqa: E402
from moe.config import load_config  # noqa: E402
from moe.model import MoELayer  # noqa: E402
from moe.training.plots import plot_comparison  # noqa: E402


def val_at(summary: dict, key: str, at: float) -> float:
    """Validation loss at history[key] (train_time_s or tokens) = at, linearly interpolated between
    evaluations (never extrapolated: `at` is at most the run's last evaluation)."""
    h = summary["history"]
    return float(np.interp(at, h[key], h["val_loss"]))


def _median_ms(fn, n: int = 40) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1e3, 3)


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
        return kernels.sorted_mlp(x, offsets, layer.w_up, layer.w_gate, layer.w_down, activation_name=cfg.activation,
                                  backend="torch")

    def experts_part():
        expert_mlp(moe, x_MD, offsets_E).sum().backward()

    def dense_part():  # what the twin's layer runs: one expert holding every token
        expert_mlp(dense, x_TD, all_rows).sum().backward()

    parts = {"router": router_part, "permutation": permutation_part,
             "experts (grouped matmuls + activation)": experts_part,
             "dense MLP of the twin (same FLOPs)": dense_part}
    return {name: _median_ms(fn) for name, fn in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("moe_run")
    ap.add_argument("dense_run")
    ap.add_argument("--out", default="bench/results/cpu-2core")
    ap.add_argument("--config", default="tiny", help="preset of the MoE run, for the layer breakdown")
    ap.add_argument("--name", default="moe_vs_dense", help="file name stem of the outputs")
    args = ap.parse_args()
    runs = [json.loads((pathlib.Path(r) / "summary.json").read_text()) for r in (args.moe_run, args.dense_run)]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_comparison(runs, out / f"{args.name}.png", f"{runs[0]['config']} vs {runs[1]['config']}, "
                    f"{runs[0]['threads']} CPU threads, {runs[0]['date']}")
    budget = min(r["history"]["train_time_s"][-1] for r in runs)
    rows = []
    for r in runs:
        rows.append({
            "run": r["config"], "steps": r["steps"], "tokens": r["tokens"], "train_time_s": r["train_time_s"],
            "tokens_per_s": r["tokens_per_s"], "final_val_loss": round(r["final_val_loss"], 4),
            f"val_loss_at_{budget:.0f}s": round(val_at(r, "train_time_s", budget), 4),
        })
    tokens = min(r["tokens"] for r in runs)
    for row, r in zip(rows, runs):
        row[f"val_loss_at_{tokens / 1e6:.2f}M_tokens"] = round(val_at(r, "tokens", tokens), 4)
    tokens_per_step = runs[0]["tokens"] // runs[0]["steps"]
    breakdown = layer_breakdown(args.config, tokens_per_step)
    result = {"runs": rows, "layer_breakdown_ms": breakdown, "tokens_per_step": tokens_per_step,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d")}
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    keys = list(rows[0])
    table = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    table += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    moe_layer_ms = sum(v for k, v in breakdown.items() if not k.startswith("dense"))
    prof = [f"| one layer, forward + backward, {tokens_per_step} tokens | ms |", "|---|---|"]
    prof += [f"| {k} | {v} |" for k, v in breakdown.items()]
    prof += [f"| MoE layer total (router + permutation + experts) | {moe_layer_ms:.3f} |"]
    text = "\n".join(table) + "\n\n" + "\n".join(prof) + "\n"
    (out / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
