"""The leak's "64 to 128 experts achieve better loss than 16", at tiny scale: the same active and
total expert parameters split into 8, 16, 64 and 128 experts, with and without a shared expert, routed
by softmax with a balance loss or by sigmoid with DeepSeek-V3's auxiliary-loss-free bias; equal tokens,
three seeds each.

    python -m bench.granularity                 # 42 runs, about 25 minutes on 2 cores
    python -m bench.granularity --steps 20 --seeds 1 --out /tmp/g    # a quick look

Every run is the tiny preset cut to 2 layers (d_model 128, GELU experts), batch 16 x 128 tokens:
    experts E x width F, top-k      8 x 512 k1 | 16 x 256 k2 | 64 x 64 k8 | 128 x 32 k16
so E * F = 4,096 and k * F = 512 throughout (DeepSeekMoE's fine-grained split). "shared" turns one of
the k active experts into a shared one (width F, every token) and drops one routed expert: the same
active and total parameters again; at top-1 that would leave no routing, so 8 experts run unshared only.
    softmax   softmax top-k, renormalized (Mixtral), balance loss 0.01, z-loss 0.001
    sigmoid   sigmoid top-k, renormalized above top-1 (DeepSeek-V3), no balance loss, the score bias
              learned at 0.001 per step from the load
Reported per variant: held-out loss at the end (nats per byte, the run's own validation windows),
expert load on a held-out batch (max over mean tokens per expert, averaged over layers: 1 is perfect
balance; shared experts not counted), and training tokens/s. Runs go one at a time.
"""

from __future__ import annotations

import pathlib
import statistics
import tempfile

import torch

from bench.harness import host, markdown_table, parser, pyplot, save_figure, stamp, write_result
from moe.config import load_config, load_train_config
from moe.data import TokenDataset, get_batch
from moe.training import load_model, train

SHAPES = [(8, 512, 1), (16, 256, 2), (64, 64, 8), (128, 32, 16)]  # (experts, width, top-k)
ROUTERS = {
    "softmax": dict(router_rule="softmax_topk", router_aux_loss_coef=0.01, router_z_loss_coef=0.001),
    "sigmoid": dict(
        router_rule="sigmoid_topk",
        router_aux_loss_coef=0.0,
        router_z_loss_coef=0.0,
        router_score_bias=True,
        router_bias_update_rate=1e-3,
    ),
}


def variants() -> list[dict]:
    out = []
    for E, F_, k in SHAPES:
        for shared in (False, True):
            if shared and k == 1:
                continue
            for router, fields in ROUTERS.items():
                model = dict(n_layers=2, n_experts=E - shared, d_ff=F_, top_k=k - shared, **fields)
                if router == "sigmoid":
                    model["router_renormalize"] = k - shared > 1
                if shared:
                    model["shared_d_ff"] = F_
                out.append(dict(experts=E, width=F_, top_k=k, shared=shared, router=router, model=model))
    return out


def held_out_load(run_dir) -> float:
    """max / mean tokens per routed expert on one held-out batch, averaged over the layers."""
    model = load_model(run_dir).eval()
    val = TokenDataset.bundled(0.05).val
    x, _ = get_batch(val, 16, 128, torch.Generator().manual_seed(11))
    with torch.no_grad():
        routing = model(x).routing
    return statistics.mean(float(r.tokens_per_expert.max() / r.tokens_per_expert.float().mean()) for r in routing)


def run(variant: dict, seed: int, steps: int, root) -> dict:
    cfg = load_config("tiny", **variant["model"])
    tc = load_train_config(
        "tiny",
        batch_size=16,
        seq_len=128,
        max_steps=steps,
        warmup_steps=max(1, steps // 10),
        eval_interval=steps,
        eval_batches=8,
        checkpoint_interval=steps,
        seed=seed,
    )
    out = root / f"{variant['experts']}-{variant['router']}-{int(variant['shared'])}-{seed}"
    s = train(cfg, tc, out, progress=False, plot=False, log=lambda *_: None)
    return {
        "val_loss": s["final_val_loss"],
        "load_max_mean": round(held_out_load(out), 3),
        "tokens_per_s": s["tokens_per_s"],
        "tokens": s["tokens"],
    }


def summarize(variant: dict, runs: list[dict]) -> dict:
    losses = [r["val_loss"] for r in runs]
    return {
        "experts": variant["experts"],
        "width": variant["width"],
        "top_k": variant["top_k"],
        "shared": "yes" if variant["shared"] else "no",
        "router": variant["router"],
        "val_loss_mean": round(statistics.mean(losses), 4),
        "val_loss_min": round(min(losses), 4),
        "val_loss_max": round(max(losses), 4),
        "load_max_mean": round(statistics.mean(r["load_max_mean"] for r in runs), 3),
        "tokens_per_s": round(statistics.mean(r["tokens_per_s"] for r in runs)),
    }


def markdown(result: dict) -> str:
    return markdown_table(result["table"]) + "\n![held-out loss by number of experts](granularity.png)\n"


def plot(rows: list[dict], path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for router in ROUTERS:
        for shared in ("no", "yes"):
            pts = [r for r in rows if r["router"] == router and r["shared"] == shared]
            xs = [r["experts"] for r in pts]
            ys = [r["val_loss_mean"] for r in pts]
            err = [[y - r["val_loss_min"] for y, r in zip(ys, pts)], [r["val_loss_max"] - y for y, r in zip(ys, pts)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{router}, shared expert: {shared}")
    ax.set_xscale("log", base=2)
    ax.set_xticks([e for e, _, _ in SHAPES], [str(e) for e, _, _ in SHAPES])
    ax.set_xlabel("experts (same total and active parameters)")
    ax.set_ylabel("held-out loss, nats per byte (mean, min-max of seeds)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--steps", type=int, default=300, help="training steps of every run (2,048 tokens each)")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    rows, raw = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        for variant in variants():
            runs = []
            for seed in range(1, args.seeds + 1):
                r = run(variant, seed, args.steps, root)
                print(variant["experts"], variant["router"], variant["shared"], seed, r, flush=True)
                runs.append({"seed": seed, **r})
            raw.append({**{k: v for k, v in variant.items() if k != "model"}, "config": variant["model"], "runs": runs})
            rows.append(summarize(variant, runs))
    result = {"host": host(), "steps": args.steps, "tokens_per_step": 16 * 128, "variants": raw, "table": rows}
    js, md = write_result(
        args.out,
        "granularity",
        result,
        markdown(result),
        by="bench.granularity",
        title="Expert granularity at equal active and total parameters",
        env=stamp(),
    )
    plot(rows, args.out / "granularity.png")
    print(md.read_text())


if __name__ == "__main__":
    main()
