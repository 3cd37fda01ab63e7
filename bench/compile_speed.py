"""Training-step throughput with and without torch.compile, for a preset and its dense twin, on this
machine: the same LocalTrainer step (forward, backward, clip, AdamW) on random batches, in
interleaved blocks (eager MoE, compiled MoE, eager dense, compiled dense, repeated) so that machine
drift hits every variant alike; the median step of each. The compile time is the first compiled
step, with an empty inductor cache (TORCHINDUCTOR_CACHE_DIR is pointed at a fresh directory). On the
CPU, profiled passes also report the time per step in matrix products and attention
(matmul_attention_ms: kernels inductor calls as they are); the speedup compiling would reach were
everything else to cost nothing (speedup_bound = eager step / that time, the mean of the model's two
passes: eager and compiled run the same products, and one pass on a shared machine varies by 10% or
more); and the products' rate in GFLOP/s beside one large square product's on the same cores
(blas_gflops): how near the BLAS's best they already run.

    python -m bench.compile_speed --config tiny --rounds 5 --steps 20          # --out bench/results/<device>
    python -m bench.compile_speed --config small --device cuda --rounds 3 --steps 10
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))  # before torch compiles

import torch  # noqa: E402

from bench import harness  # noqa: E402
from moe.config import load_config, load_train_config  # noqa: E402
from moe.profiling.timing import device_ceilings  # noqa: E402
from moe.training.local import LocalTrainer  # noqa: E402

# ATen kernels inductor calls as they are (extern kernels), compiled or not: matrix products and
# attention, forward and backward, the grouped matmul's per-expert products included.
UNTOUCHED = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product")


def untouched(trainer, batch, lr: float, steps: int = 10) -> tuple[float, float]:
    """Per step, the milliseconds spent in the UNTOUCHED kernels (self CPU time under torch.profiler):
    what torch.compile cannot make faster, so eager step time over it bounds the compiled speedup;
    and the rate of the matrix products among them in GFLOP/s, to hold against blas_gflops. The FLOPs
    are counted in a second pass: counting them records every call's shapes, which inflates the
    self time of the MoE's hundreds of small products."""
    products = ("aten::mm", "aten::addmm", "aten::bmm")
    passes = []
    for with_flops in (False, True):
        with torch.profiler.profile(with_flops=with_flops) as prof:
            for _ in range(steps):
                x = batch()
                trainer.step(x[:, :-1], x[:, 1:], lr)
        passes.append([e for e in prof.key_averages() if e.key.startswith(UNTOUCHED)])
    timed, counted = passes
    product_us = sum(e.self_cpu_time_total for e in timed if e.key in products)
    gflops = sum(e.flops for e in counted if e.key in products) / product_us / 1e3
    return sum(e.self_cpu_time_total for e in timed) / 1e3 / steps, gflops


def blas_gflops() -> float:
    """This machine's float32 rate on a 1024 x 1024 x 1024 product (the median of 20): about the most
    the BLAS gets out of these cores."""
    return device_ceilings("cpu", torch.float32, False, 20)[0] * 1e3


def main(argv=None) -> dict:
    ap = harness.parser(__doc__)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="steps per block")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast there, as in training)")
    ap.add_argument("--batch-size", type=int, help="sequences per step (default: the preset's)")
    ap.add_argument("--seq-len", type=int, help="tokens per sequence (default: the preset's)")
    args = ap.parse_args(argv)
    moe_cfg = load_config(args.config)
    shape = {k: v for k, v in (("batch_size", args.batch_size), ("seq_len", args.seq_len)) if v is not None}
    train_cfg = load_train_config(args.config, **shape)
    B, T = train_cfg.batch_size, train_cfg.seq_len
    variants = {}
    for name, cfg in (("moe", moe_cfg), ("dense twin", moe_cfg.dense_twin())):
        for compiled in (False, True):
            tc = load_train_config(args.config, compile=compiled, **shape)
            variants[(name, compiled)] = LocalTrainer(cfg, tc, args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    batch = lambda: torch.randint(0, moe_cfg.vocab_size, (B, T + 1), generator=gen)  # noqa: E731
    times = {k: [] for k in variants}
    for trainer in variants.values():  # warm-up: compiles, and the allocator settles
        for _ in range(3):
            x = batch()
            trainer.step(x[:, :-1], x[:, 1:], train_cfg.lr)
    for _ in range(args.rounds):
        for key, trainer in variants.items():
            for _ in range(args.steps):
                x = batch()
                sync()
                start = time.perf_counter()
                trainer.step(x[:, :-1], x[:, 1:], train_cfg.lr)
                sync()  # the step returns after the loss's .item(); its backward and update may still run
                times[key].append(time.perf_counter() - start)
    profiled, blas = {}, None
    if not args.device.startswith("cuda"):  # (a GPU's kernels run asynchronously: CPU times say nothing)
        for key, trainer in variants.items():
            profiled[key] = untouched(trainer, batch, train_cfg.lr)
        blas = round(blas_gflops())
    rows = []
    for (name, compiled), trainer in variants.items():
        ms = statistics.median(times[name, compiled]) * 1e3
        rows.append(
            {
                "model": name,
                "compiled": compiled,
                "median_step_ms": round(ms, 1),
                "tokens_per_s": round(B * T / ms * 1e3),
                "compile_s": trainer.compile_s and round(trainer.compile_s, 1),
            }
        )
        if profiled:
            rows[-1]["matmul_attention_ms"] = round(profiled[name, compiled][0], 1)
            rows[-1]["matmul_gflops"] = round(profiled[name, compiled][1])
    for row in rows:
        eager = next(r for r in rows if r["model"] == row["model"] and not r["compiled"])
        row["speedup"] = round(eager["median_step_ms"] / row["median_step_ms"], 2)
        if profiled:  # were everything else compiled away, the step would still take the matmuls' time
            floor = statistics.mean(r["matmul_attention_ms"] for r in rows if r["model"] == row["model"])
            row["speedup_bound"] = round(eager["median_step_ms"] / floor, 2)
    result = {
        "config": args.config,
        "device": args.device,
        "batch": [B, T],
        "rounds": args.rounds,
        "steps_per_block": args.steps,
        "rows": rows,
        "blas_gflops": blas,
        **harness.host(),
    }
    text = markdown(result)
    print(text)
    harness.write_result(
        args.out,
        "compile_speed",
        result,
        text,
        by="bench.compile_speed",
        title=f"torch.compile on the training step: {args.config}",
    )
    return result


def markdown(result: dict) -> str:
    rows = [{k: str(v) for k, v in r.items()} for r in result["rows"]]  # as rounded, never re-rounded
    text = f"{result['config']} on {result['device']}, batch {result['batch']}\n\n" + harness.markdown_table(rows)
    if result["blas_gflops"]:
        text += f"\nblas_gflops (float32, 1024 x 1024 x 1024): {result['blas_gflops']}\n"
    return text


if __name__ == "__main__":
    main()
