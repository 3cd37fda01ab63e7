"""Extend a model's context 4x by fine-tuning (the leak's 8k -> 32k, at toy scale: 256 -> 1024) and
measure it position by position.

    python -m moe train --config tiny --seq-len 256 --batch-size 8 --out runs/base256     # pretrain at 256
    python -m bench.long_context --base runs/base256 --steps 100                          # this script

For each variant, built from the base checkpoint's weights with max_seq_len = --length:
    none      plain RoPE past the pretraining length (extrapolation)
    linear, dynamic, yarn   rope_scaling with factor length / L0, original_max_position_embeddings L0
it measures, zero-shot and again after --steps steps of fine-tuning at --length (the training
loop's own --init-from; every variant gets the same steps, settings and data):
  - validation loss by position bucket (0-256, 256-512, ...) over fixed held-out windows;
  - a retrieval probe that needs no special training: a held-out passage of P bytes appears twice in
    one sequence, the second copy d positions after the first (the second copy ends the sequence);
    the loss on the second copy against the loss on the first says whether the model reads across d.
    A control at d = 128 with P = 100 fits inside the pretraining window.
Writes bench/results/<device>/long_context.{json,md,png} and prints the tables.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import torch
import torch.nn.functional as F

from bench import harness
from moe.config import load_train_config
from moe.data import bundled_split
from moe.model import MoETransformer
from moe.training import load_weights, read_config, train

VARIANTS = ("none", "linear", "dynamic", "yarn")
PROBES = ((128, 100), (256, 200), (512, 200), (768, 200))  # (distance d, passage bytes P)


def variant_config(base_cfg, kind: str, length: int):
    trained_at = base_cfg.max_seq_len
    scaling = (
        None
        if kind == "none"
        else {"rope_type": kind, "factor": length / trained_at, "original_max_position_embeddings": trained_at}
    )
    return dataclasses.replace(base_cfg, name=f"{base_cfg.name}-{kind}", max_seq_len=length, rope_scaling=scaling)


@torch.no_grad()
def token_losses(model, x_BT: torch.Tensor, y_BT: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every position [B, T] (nats per byte)."""
    model.eval()
    logits = model(x_BT).logits.float()
    return F.cross_entropy(logits.transpose(1, 2), y_BT, reduction="none")


def eval_windows(val: torch.Tensor, length: int, n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(val) - length - 1, (n,), generator=gen).tolist()
    w = torch.stack([val[s : s + length + 1] for s in starts]).long()
    return w[:, :-1], w[:, 1:]


def bucket_losses(model, windows, bucket: int) -> list[float]:
    """Mean loss of positions [0, bucket), [bucket, 2 bucket), ... over the windows."""
    per_pos = token_losses(model, *windows).mean(dim=0)
    return [round(float(per_pos[i : i + bucket].mean()), 4) for i in range(0, per_pos.numel(), bucket)]


def probe_sequence(filler: torch.Tensor, passage: torch.Tensor, d: int, length: int) -> tuple[torch.Tensor, int, int]:
    """filler [length + 1] with `passage` written at first = length - P - d and at second = length - P
    (so the second copy ends the sequence); returns (sequence, first, second)."""
    P = passage.numel()
    if d < P or length - P - d < 0:
        raise ValueError(f"probe: distance {d} must be >= the passage ({P}) and fit in {length} positions")
    seq = filler.clone()
    first, second = length - P - d, length - P
    seq[first : first + P] = passage
    seq[second : second + P] = passage
    return seq, first, second


def retrieval(model, val: torch.Tensor, d: int, P: int, length: int, n: int = 8, seed: int = 1) -> dict:
    """Mean loss on the second copy's bytes and on the first's (each predicted from the byte before
    it, the first byte of a copy excluded), over n probes."""
    gen = torch.Generator().manual_seed(seed)
    seqs, spans = [], None
    for _ in range(n):
        a, b = torch.randint(len(val) - length - 1, (2,), generator=gen).tolist()
        seq, first, second = probe_sequence(val[a : a + length + 1].long(), val[b : b + P].long(), d, length)
        seqs.append(seq)
        spans = (first, second)
    w = torch.stack(seqs)
    losses = token_losses(model, w[:, :-1], w[:, 1:])  # position t predicts byte t + 1
    first, second = spans
    on = lambda start: float(losses[:, start : start + P - 1].mean())  # noqa: E731 (predicts bytes start+1 ..)
    return {
        "d": d,
        "passage": P,
        "first_copy": round(on(first), 4),
        "second_copy": round(on(second), 4),
        "ratio": round(on(second) / on(first), 3),
    }


def measure(model, val, length: int, bucket: int) -> dict:
    return {
        "buckets": bucket_losses(model, eval_windows(val, length, 16), bucket),
        "retrieval": [retrieval(model, val, d, P, length) for d, P in PROBES if d + P <= length],
    }


def main(argv=None) -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--base", required=True, help="checkpoint pretrained at the short length (its max_seq_len)")
    ap.add_argument("--length", type=int, default=1024, help="the extended context")
    ap.add_argument(
        "--steps",
        type=int,
        default=100,
        help="fine-tuning steps per variant, the same for each "
        "(about 2 minutes on 2 CPU cores at the defaults; 0: zero-shot only)",
    )
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--work", default="runs/long_context", help="where the fine-tuned runs go")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    base_cfg, _ = read_config(args.base)
    bucket = base_cfg.max_seq_len
    val = torch.frombuffer(bytearray(bundled_split(load_train_config("tiny").val_fraction)[1]), dtype=torch.uint8)
    results = {
        "base": str(args.base),
        "trained_at": base_cfg.max_seq_len,
        "length": args.length,
        "fine_tune_steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "variants": {},
    }
    short = MoETransformer(base_cfg)
    load_weights(short, args.base)
    results["base_at_its_length"] = measure(short, val, base_cfg.max_seq_len, bucket)
    for kind in args.variants.split(","):
        cfg = variant_config(base_cfg, kind, args.length)
        model = MoETransformer(cfg)
        load_weights(model, args.base)
        row = {"zero_shot": measure(model, val, args.length, bucket)}
        if args.steps > 0:
            t = time.perf_counter()
            tc = load_train_config(
                "tiny",
                seq_len=args.length,
                batch_size=args.batch_size,
                lr=args.lr,
                min_lr=args.lr / 10,
                warmup_steps=10,
                time_budget_s=0,
                max_steps=args.steps,
                eval_interval=args.steps,
                eval_batches=2,
                checkpoint_interval=args.steps,
            )
            summary = train(
                cfg,
                tc,
                pathlib.Path(args.work) / kind,
                init_from=args.base,
                overwrite=True,
                progress=False,
                plot=False,
                log=lambda *a: None,
            )
            load_weights(model, pathlib.Path(args.work) / kind)
            row["fine_tuned"] = measure(model, val, args.length, bucket)
            row["fine_tune"] = {
                "steps": summary["steps"],
                "train_time_s": summary["train_time_s"],
                "wall_s": round(time.perf_counter() - t, 1),
            }
        results["variants"][kind] = row
        print(kind, json.dumps(row))
    text = markdown(results)
    harness.write_result(
        args.out,
        "long_context",
        results,
        text,
        by="bench.long_context",
        title=f"Long context, {base_cfg.max_seq_len} to {args.length}",
    )
    plot(results, args.out / "long_context.png")
    print(text)
    print(f"wrote {args.out}/long_context.{{json,md,png}}")


def markdown(r: dict) -> str:
    n = len(next(iter(r["variants"].values()))["zero_shot"]["buckets"])
    b = r["trained_at"]
    head = (
        "| variant | "
        + " | ".join(f"{i * b}-{(i + 1) * b}" for i in range(n))
        + " | "
        + " | ".join(f"copy d={p['d']} (2nd/1st)" for p in next(iter(r["variants"].values()))["zero_shot"]["retrieval"])
        + " |"
    )
    lines = [head, "|---" * (1 + n + head.count("copy")) + "|"]
    for kind, row in r["variants"].items():
        for stage in ("zero_shot", "fine_tuned"):
            if stage in row:
                m = row[stage]
                copies = [f"{p['second_copy']:.2f}/{p['first_copy']:.2f}" for p in m["retrieval"]]
                lines.append(
                    f"| {kind}, {stage.replace('_', '-')} | "
                    + " | ".join(f"{v:.3f}" for v in m["buckets"])
                    + " | "
                    + " | ".join(copies)
                    + " |"
                )
    base = r["base_at_its_length"]
    lines.append(
        f"\nbase at its own length {b}: loss {base['buckets']}; "
        + ", ".join(
            f"copy d={p['d']} P={p['passage']}: {p['second_copy']:.2f}/{p['first_copy']:.2f}" for p in base["retrieval"]
        )
    )
    return "\n".join(lines)


def plot(r: dict, path) -> None:
    fig, (ax, bx) = harness.pyplot().subplots(1, 2, figsize=(13, 4.5))
    b = r["trained_at"]
    for i, (kind, row) in enumerate(r["variants"].items()):
        for stage, style in (("zero_shot", ":"), ("fine_tuned", "-")):
            if stage in row:
                ys = row[stage]["buckets"]
                ax.plot(
                    [(j + 0.5) * b for j in range(len(ys))],
                    ys,
                    style,
                    marker="o",
                    color=f"C{i}",
                    label=f"{kind}, {stage.replace('_', '-')}",
                )
                ratios = [p["ratio"] for p in row[stage]["retrieval"]]
                ds = [p["d"] for p in row[stage]["retrieval"]]
                bx.plot(ds, ratios, style, marker="o", color=f"C{i}")
    ax.axvline(b, color="grey", lw=0.8)
    ax.set(
        xlabel="position",
        ylabel="validation loss (nats per byte)",
        title=f"loss by position: pretrained at {b}, run at {r['length']}",
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    bx.axhline(1, color="grey", lw=0.8)
    bx.set(
        xlabel="distance d between the copies",
        ylabel="loss on 2nd copy / loss on 1st",
        title="retrieval probe (below 1: reads the first copy)",
    )
    bx.grid(alpha=0.3)
    harness.save_figure(fig, path)


if __name__ == "__main__":
    main()
