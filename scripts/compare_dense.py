"""MoE versus its dense twin: validation loss against wall-clock time and tokens, plus where the MoE's
step time goes. Reads two finished runs' summary.json (from `python -m moe train`), writes a PNG, a
JSON and a markdown table under --out.

    python -m moe train --config tiny --out runs/tiny
    python -m moe train --config tiny --dense --out runs/tiny-dense
    python scripts/compare_dense.py runs/tiny runs/tiny-dense --out bench/results/cpu-2core
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from moe.config import load_config, load_train_config
from moe.data import get_batch, load_corpus
from moe.model import MoETransformer
from moe.plots import plot_comparison
from moe.train import make_optimizer

# Buckets of the MoE step, by the ops that implement them (CPU op names from torch.profiler).
PHASES = {
    "router (gate, softmax, sort, aux losses)": ("router",),
    "permutation (sort by expert, gather, combine)": ("permute",),
    "expert grouped matmuls + activation": ("experts",),
}


def val_at(summary: dict, seconds: float) -> float | None:
    """Validation loss at the last evaluation no later than `seconds` of training."""
    h = summary["history"]
    vals = [v for t, v in zip(h["train_time_s"], h["val_loss"]) if t <= seconds + 1e-9]
    return vals[-1] if vals else None


def profile_step(config: str, steps: int = 10) -> dict:
    """Split one training step of the tiny MoE into router, permutation, experts and the rest."""
    import kernels
    from moe import moe_layer, router

    cfg, tcfg = load_config(config), load_train_config(config)
    torch.manual_seed(0)
    model = MoETransformer(cfg)
    opt = make_optimizer(model, tcfg)
    data = load_corpus()
    gen = torch.Generator().manual_seed(0)

    def labelled(fn, label):
        def wrapper(*a, **k):
            with record_function(label):
                return fn(*a, **k)
        return wrapper

    patches = [(router.TopKRouter, "forward", "router"), (kernels, "sort_by_expert", "permute"),
               (kernels, "combine", "permute"), (moe_layer.MoELayer, "_expert_mlp", "experts")]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, label in patches:
        setattr(obj, name, labelled(getattr(obj, name), label))
    try:
        def step():
            x, y = get_batch(data, tcfg.batch_size, tcfg.seq_len, gen)
            out = model(x, targets=y)
            (out.loss + out.aux_loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                with record_function("step"):
                    step()
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
    # Forward time by label (record_function ranges); backward ops are attributed by autograd's
    # sequence numbers only loosely, so we report forward shares plus the whole-step time.
    totals = {e.key: e.cpu_time_total / steps / 1e3 for e in prof.key_averages() if e.key in
              ("step", "router", "permute", "experts", "Optimizer.step#AdamW.step")}
    return {k: round(v, 2) for k, v in totals.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("moe_run")
    ap.add_argument("dense_run")
    ap.add_argument("--out", default="bench/results/cpu-2core")
    ap.add_argument("--config", default="tiny", help="preset of the MoE run, for the step profile")
    args = ap.parse_args()
    runs = [json.loads((pathlib.Path(r) / "summary.json").read_text()) for r in (args.moe_run, args.dense_run)]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_comparison(runs, out / "moe_vs_dense.png", f"{runs[0]['config']} vs {runs[1]['config']}, "
                    f"{runs[0]['threads']} CPU threads, {runs[0]['date']}")
    budget = min(r["train_time_s"] for r in runs)
    rows = []
    for r in runs:
        rows.append({
            "run": r["config"], "steps": r["steps"], "tokens": r["tokens"], "train_time_s": r["train_time_s"],
            "tokens_per_s": r["tokens_per_s"], "final_val_loss": round(r["final_val_loss"], 4),
            f"val_loss_at_{budget:.0f}s": round(val_at(r, budget), 4),
        })
    tokens = min(r["tokens"] for r in runs)
    for row, r in zip(rows, runs):
        h = r["history"]
        row[f"val_loss_at_{tokens / 1e6:.2f}M_tokens"] = round(
            [v for t, v in zip(h["tokens"], h["val_loss"]) if t <= tokens][-1], 4)
    step_profile = profile_step(args.config)
    result = {"runs": rows, "moe_step_profile_ms": step_profile, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
              "date": time.strftime("%Y-%m-%d")}
    (out / "moe_vs_dense.json").write_text(json.dumps(result, indent=1))
    keys = list(rows[0])
    table = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    table += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    prof = ["| part of one MoE training step | ms |", "|---|---|"]
    names = {"step": "whole step (forward, backward, clip, AdamW)", "router": "router forward",
             "permute": "permutation forward (sort, combine)", "experts": "expert MLPs forward (grouped matmuls)",
             "Optimizer.step#AdamW.step": "AdamW step"}
    prof += [f"| {names[k]} | {v} |" for k, v in step_profile.items()]
    text = "\n".join(table) + "\n\n" + "\n".join(prof) + "\n"
    (out / "moe_vs_dense.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
