"""Profile GPT-4-shape layers on one GPU, as one GPU of an 8-way tensor-parallel group holds them,
and carry the measurements to the leaked inference and training clusters.

    python -m bench.profile_model --config gpt4 --layers 2 --tp 8            # every mode, on a GPU
    python -m bench.profile_model --config gpt4 --layers 1 --mode decode --context 8192 --batches 1,8,64
    python -m bench.profile_model                                            # on a CPU: width / 32
    python -m bench.profile_model --checkpoint runs/mixtral --mode decode    # a checkpoint's real shape

What runs (moe/profiling/steps.py): N layers of the config's 1/tp shard (query heads and every expert's
d_ff split; the K/V head, norms and router whole), random bf16 weights, the model's own Block code
(Triton expert kernels on a GPU). Modes: prefill of one --tokens prompt; decode of one token per
sequence against a K/V cache filled to each --context, at batch 1, 2, 4, ... until the GPU is full
(or --batches); train: forward and backward of --tokens tokens in sequences of --seq-len.

The tensor-parallel all-reduces that would join the shards are NOT issued or timed (one GPU has no
partner): the cluster model in moe/estimates/cluster.py adds them, with the assumptions it prints.

Method (bench/README.md): CUDA events around each step after warm-up, the median of
--reps; the dense bf16 matmul peak and the copy bandwidth measured in the same process, and
percentages of those. FLOPs are useful FLOPs (moe.estimates.cluster.layer_costs: 2 per weight per token
of the experts each token uses, attention scores over the attended positions, causal prefill at
half the prompt; training 3x forward). Decode bytes are the compulsory ones: the weights of the
experts that received tokens, the attention and router weights, the K/V cache read, activations.
torch.profiler sums device time per named range (attention, norm, router, permutation, expert
matmuls, combine, other) over --profile-steps more steps.

Outputs under --out (default bench/results/<device>/): profile_<config>_L<N>.json (every number
printed, plus device, versions and date), profile_<config>_L<N>.md (what was printed),
profile_<config>_L<N>.png, and Chrome traces
trace_<config>_L<N>_<mode>.json.gz (open in https://ui.perfetto.dev or chrome://tracing).
On a CPU the same code runs at width / --scale in float32 and says that real figures need a GPU.
With --checkpoint (e.g. a converted Mixtral), the layers take that checkpoint's shape and, whole
(tp 1, scale 1: the defaults then), its first --layers layers' weights, so routing is the trained one;
prompt and contexts default to its max_seq_len.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from bench import harness
from moe.config import load_config
from moe.estimates import cluster as X
from moe.estimates.units import format_table
from moe.profiling.breakdown import CATEGORIES, breakdown
from moe.profiling.steps import Steps, build_layers
from moe.profiling.timing import device_ceilings, median_ms

PREDICTED_BATCHES = [2**i for i in range(13)]  # 1 .. 4096 sequences per microbatch


def scaled_config(cfg, scale: int, max_len: int):
    """The config at width / scale (d_model, d_ff, head_dim; at least 16 wide per head), the same
    heads, experts and top-k, so the shard has the same structure."""
    if scale == 1:
        return dataclasses.replace(cfg, max_seq_len=max(cfg.max_seq_len, max_len))
    return dataclasses.replace(
        cfg,
        d_model=cfg.d_model // scale,
        d_ff=cfg.d_ff // scale,
        head_dim=max(16, cfg.head_dim // scale // 2 * 2),
        max_seq_len=max_len,
    )


def label(p: dict) -> str:
    return f"decode C={p['context']} B={p['batch']}" if p["mode"] == "decode" else f"{p['mode']} T={p['tokens']}"


def measure_point(
    mode: str,
    fn,
    sizes: dict,
    attended: float,
    kv_rows: int,
    shard,
    n_layers: int,
    here: X.GPU,
    reps: int,
    prof_steps: int,
    cuda: bool,
    trace: pathlib.Path,
) -> dict:
    """Time fn (median of reps), profile prof_steps more calls (written to `trace`), and count its
    FLOPs and bytes. sizes: tokens, batch (and the cache length `context` in decode), to report;
    attended: positions each token attends to on average; kv_rows: sequences whose cache is read."""
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _, routing = fn()
    touched = sum(int((r.tokens_per_expert > 0).sum()) for r in routing) / len(routing)
    ms = median_ms(lambda _: fn(), [None], reps, cuda)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(prof_steps):
            fn()
        if cuda:
            torch.cuda.synchronize()
    parts = breakdown(prof.events(), cuda, prof_steps)
    prof.export_chrome_trace(str(trace))
    tokens = sizes["tokens"]
    costs = X.layer_costs(shard, tokens, attended, kv_rows, touched=touched)
    scale = 3 if mode == "train" else 1
    flops = scale * n_layers * sum(f for f, _ in costs.values())
    bytes_ = scale * n_layers * sum(b for _, b in costs.values())
    roofline_ms = (
        1e3
        * n_layers
        * X.roofline_layer(shard, here, tokens, attended, kv_rows, backward=mode == "train", touched=touched)
    )
    point = dict(
        mode=mode,
        **sizes,
        ms=round(ms, 4),
        ms_per_layer=round(ms / n_layers, 4),
        roofline_ms=round(roofline_ms, 4),
        busy_ms=round(sum(parts.values()), 4),
        breakdown_ms={k: round(v, 4) for k, v in parts.items()},
        experts_touched=touched,
        gflop=round(flops / 1e9, 3),
        gbytes=round(bytes_ / 1e9, 4),
        tflops=round(flops / ms / 1e9, 3),
        pct_peak=round(100 * flops / ms / 1e9 / here.peak_tflops, 1),
        gbps=round(bytes_ / ms / 1e6, 1),
        pct_copy=round(100 * bytes_ / ms / 1e6 / here.bandwidth_gbs, 1),
        peak_mem_gb=round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
    )
    return point


def load_layer_weights(layers, checkpoint) -> None:
    """The checkpoint's blocks.0 .. blocks.N-1 into the N layers (the same shapes: tp 1, scale 1)."""
    from safetensors import safe_open

    from moe.training.run_dir import resolve

    with safe_open(str(resolve(checkpoint) / "model.safetensors"), "pt") as st:
        for i, layer in enumerate(layers):
            prefix = f"blocks.{i}."
            state = {k[len(prefix) :]: st.get_tensor(k) for k in st.keys() if k.startswith(prefix)}
            layer.load_state_dict(state)


def run_modes(args, shard, device, dtype, cuda, here: X.GPU, out: pathlib.Path, tag: str) -> list[dict]:
    layers = build_layers(shard, args.layers, device, dtype)
    if args.checkpoint and args.tp == 1 and args.scale == 1:
        load_layer_weights(layers, args.checkpoint)
    steps = Steps(layers, shard, device, dtype)
    common = dict(
        shard=shard, n_layers=args.layers, here=here, reps=args.reps, prof_steps=args.profile_steps, cuda=cuda
    )
    points = []
    if "prefill" in args.modes:
        print(f"... prefill {args.tokens} tokens", file=sys.stderr, flush=True)
        points.append(
            measure_point(
                "prefill",
                steps.prefill(args.tokens),
                dict(tokens=args.tokens, batch=1),
                (args.tokens + 1) / 2,
                0,
                **common,
                trace=out / f"trace_{tag}_prefill.json.gz",
            )
        )
    if "decode" in args.modes:
        for context in args.contexts:
            for b in args.batches or [2**i for i in range(20) if 2**i <= args.max_batch]:
                print(f"... decode batch {b} at context {context}", file=sys.stderr, flush=True)
                sizes = dict(tokens=b, batch=b, context=context)
                try:  # each batch overwrites the trace: the largest batch that ran keeps it
                    points.append(
                        measure_point(
                            "decode",
                            steps.decode(b, context),
                            sizes,
                            context + 1,
                            b,
                            **common,
                            trace=out / f"trace_{tag}_decode_{context}.json.gz",
                        )
                    )
                except torch.OutOfMemoryError:
                    points.append(dict(mode="decode", **sizes, error="out of memory"))
                    break
                finally:
                    steps.clear_caches()
                    if cuda:
                        torch.cuda.empty_cache()
    if "train" in args.modes:
        print(f"... train {args.tokens} tokens", file=sys.stderr, flush=True)
        sizes = dict(tokens=args.tokens, batch=args.tokens // args.seq_len)
        try:
            points.append(
                measure_point(
                    "train",
                    steps.train(args.tokens, args.seq_len),
                    sizes,
                    (args.seq_len + 1) / 2,
                    0,
                    **common,
                    trace=out / f"trace_{tag}_train.json.gz",
                )
            )
        except torch.OutOfMemoryError:
            points.append(dict(mode="train", **sizes, error="out of memory"))
    return points


# --- from layer times to the clusters ----------------------------------------------------------------


def cluster(cfg, shard, layer_s: dict, measured_on: X.GPU | None, gpus: dict[str, X.GPU], tokens: int) -> dict:
    """Decode, time to first token and training on both leaked clusters, from per-layer seconds
    layer_s = {"decode": {(context, b): s}, "prefill": s, "train": s} on `measured_on` (None: the
    times are already each target GPU's roofline prediction, given as {gpu: layer_s})."""

    def on(gpu_key, seconds, **kw):
        if measured_on is None:
            return seconds[gpu_key]
        return X.rescale(seconds, shard, measured_on, gpus[gpu_key], **kw)

    decode, train, ttft = [], [], []
    for key, gpu in gpus.items():
        for (context, b), s in sorted((layer_s.get("decode") or {}).items()):
            t = on(key, s, tokens=b, context=context + 1, kv_rows=b)
            decode.append(dataclasses.asdict(X.decode_point(cfg, gpu, t, b, context)))
        if layer_s.get("prefill") is not None:
            t = on(key, layer_s["prefill"], tokens=tokens, context=(tokens + 1) / 2)
            ttft.append(dict(gpu=gpu.name, tokens=tokens, ms=round(1e3 * X.prefill_latency_s(cfg, gpu, t, tokens), 1)))
        if layer_s.get("train") is not None:
            t = on(key, layer_s["train"], tokens=tokens, context=(tokens + 1) / 2, backward=True)
            leak = X.LEAK_TRAIN[key]
            est = X.train_estimate(cfg, gpu, leak["gpus"], t, tokens, leak_mfu=leak["mfu"])
            implied = [X.implied_mfu(cfg, gpu, leak["gpus"], d) for d in leak["days"]]
            train.append(
                dict(
                    dataclasses.asdict(est),
                    leak_days=leak["days"],
                    leak_mfu=leak["mfu"],
                    implied_mfu_at_leak_days=implied,
                )
            )
    return dict(decode=decode, ttft=ttft, train=train)


def predicted_layer_times(cfg, shard, gpus, contexts, tokens) -> dict:
    """The roofline prediction of every layer time, per GPU: {gpu key: seconds} in each slot. Decode
    at powers of two and at each GPU's largest batch whose KV cache fits."""

    def per_gpu(**kw):
        return {k: X.roofline_layer(shard, g, **kw) for k, g in gpus.items()}

    fitting = {(c, X.max_microbatch(cfg, g, 8, 16, c)) for c in contexts for g in gpus.values()}
    grid = sorted({(c, b) for c in contexts for b in PREDICTED_BATCHES} | {(c, b) for c, b in fitting if b > 0})
    return dict(
        decode={(c, b): per_gpu(tokens=b, context=c + 1, kv_rows=b) for c, b in grid},
        prefill=per_gpu(tokens=tokens, context=(tokens + 1) / 2),
        train=per_gpu(tokens=tokens, context=(tokens + 1) / 2, backward=True),
    )


def measured_layer_times(points: list[dict]) -> dict:
    times = {"decode": {}}
    for p in points:
        if "ms" not in p:
            continue
        s = p["ms_per_layer"] / 1e3
        if p["mode"] == "decode":
            times["decode"][(p["context"], p["batch"])] = s
        else:
            times[p["mode"]] = s
    return times


def doubling_batch(points: list[dict], context: int) -> int | None:
    """The smallest measured batch whose layer time is twice batch 1's: below it, the fixed weight
    reads are most of the time."""
    rows = sorted(
        (p["batch"], p["ms_per_layer"])
        for p in points
        if p["mode"] == "decode" and "ms" in p and p["context"] == context
    )
    if not rows or rows[0][0] != 1:
        return None
    return next((b for b, ms in rows if ms >= 2 * rows[0][1]), None)


# --- printing ----------------------------------------------------------------------------------------


def points_table(points: list[dict]) -> str:
    rows = []
    for p in points:
        if "error" in p:
            rows.append((label(p), p["error"], "", "", "", "", "", "", "", "", ""))
            continue
        rows.append(
            (
                label(p),
                f"{p['ms']:.4g}",
                f"{p['ms_per_layer']:.4g}",
                f"{p['busy_ms']:.4g}",
                f"{p['roofline_ms']:.4g}",
                f"{p['ms'] / p['roofline_ms']:.2f}",
                f"{p['tflops']:.3g}",
                f"{p['pct_peak']:.1f}",
                f"{p['gbps']:.4g}",
                f"{p['pct_copy']:.1f}",
                "-" if p["peak_mem_gb"] is None else f"{p['peak_mem_gb']:.1f}",
            )
        )
    return format_table(
        rows,
        (
            "step",
            "ms",
            "ms/layer",
            "busy ms",
            "roofline ms",
            "x roofline",
            "TFLOP/s",
            "% peak",
            "GB/s",
            "% copy",
            "peak GB",
        ),
    )


def _shown(points: list[dict]) -> list[dict]:
    """Prefill, train, and decode at batch 1 and at the largest batch that ran, per context."""
    ran = [p for p in points if "ms" in p]
    largest = {}
    for p in ran:
        if p["mode"] == "decode":
            largest[p["context"]] = max(largest.get(p["context"], 0), p["batch"])
    return [p for p in ran if p["mode"] != "decode" or p["batch"] in (1, largest[p["context"]])]


def breakdown_table(points: list[dict]) -> str:
    rows = []
    for p in _shown(points):
        total = sum(p["breakdown_ms"].values()) or 1
        rows.append((label(p), *(f"{100 * p['breakdown_ms'][c] / total:.1f}" for c in CATEGORIES)))
    return format_table(rows, ("% of busy time", *CATEGORIES))


def decode_table(decode: list[dict], batches=(1, 8, 64, 512, 4096)) -> str:
    rows = [
        (
            d["gpu"].split()[0],
            d["context"],
            d["b"],
            d["users"],
            f"{d['latency_ms']:.1f}",
            f"{d['tokens_per_s_user']:.1f}",
            f"{d['tokens_per_s']:,.0f}",
            f"{d['usd_per_1k_tokens']:.4f}",
            "yes" if d["fits"] else "no (KV cache)",
        )
        for d in decode
        if d["b"] in batches or d["b"] == _largest_fitting(decode, d)
    ]
    return format_table(
        rows, ("GPU", "context", "b", "users", "ms/token", "tok/s/user", "cluster tok/s", "$/1k tok", "fits")
    )


def _largest_fitting(decode, d) -> int | None:
    fit = [e["b"] for e in decode if e["gpu"] == d["gpu"] and e["context"] == d["context"] and e["fits"]]
    return max(fit) if fit else None


def versus(value: float, bounds, fmt: str) -> str:
    """'within' a leaked range, or how far outside it, relative to the nearer end."""
    lo, hi = sorted(bounds)
    if lo <= value <= hi:
        return "within the leak's range"
    end = lo if value < lo else hi
    return f"{value / end - 1:+.0%} vs {end:{fmt}}"


def _range(bounds, fmt: str) -> str:
    lo, hi = sorted(bounds)
    return f"{lo:{fmt}}" if lo == hi else f"{lo:{fmt}}-{hi:{fmt}}"


def train_table(train: list[dict]) -> str:
    rows = []
    for t in train:
        leak_mfu = t["leak_mfu"]
        rows.append(
            (
                t["gpu"].split()[0],
                f"{t['gpus']:,} (dp {t['dp']})",
                t["microbatches"],
                "yes" if t["recompute"] else "no",
                f"{t['step_s']:.1f}",
                f"{t['mfu']:.1%}",
                "-" if leak_mfu is None else _range(leak_mfu, ".0%"),
                "-" if leak_mfu is None else versus(t["mfu"], leak_mfu, ".0%"),
                f"{t['days']:.0f}",
                _range(t["leak_days"], "g"),
                versus(t["days"], t["leak_days"], "g"),
                _range(t["implied_mfu_at_leak_days"], ".0%"),
                "-" if t["days_at_leak_mfu"] is None else _range(t["days_at_leak_mfu"], ".0f"),
            )
        )
    return format_table(
        rows,
        (
            "GPU",
            "GPUs used",
            "microbatches",
            "recompute",
            "step s",
            "MFU",
            "leak MFU",
            "MFU vs leak",
            "days",
            "leak days",
            "days vs leak",
            "MFU the leak's days imply",
            "days at leak MFU",
        ),
    )


def plot(report: dict, path: pathlib.Path) -> None:
    fig, axes = harness.pyplot().subplots(1, 3, figsize=(18, 5))
    measured = [p for p in report["points"] if "ms" in p]
    ax = axes[0]
    shown = _shown(measured)
    bottom = [0.0] * len(shown)
    for c in CATEGORIES:
        vals = [p["breakdown_ms"][c] / report["meta"]["layers"] for p in shown]
        ax.bar(range(len(shown)), vals, bottom=bottom, label=c)
        bottom = [a + b for a, b in zip(bottom, vals)]
    ax.set_xticks(range(len(shown)), [label(p).replace(" B=", "\nB=") for p in shown], fontsize=7)
    ax.set(ylabel="ms per layer (device time)", title="where the time goes (measured)")
    ax.legend(fontsize=7)
    ax = axes[1]
    for context in report["meta"]["contexts"]:
        rows = sorted(
            (p["batch"], p["ms_per_layer"], p["roofline_ms"] / report["meta"]["layers"])
            for p in measured
            if p["mode"] == "decode" and p["context"] == context
        )
        if rows:
            batches, ms, roofline = zip(*rows)
            (line,) = ax.plot(batches, ms, "o-", label=f"measured, C={context}")
            ax.plot(
                batches, roofline, "--", color=line.get_color(), label=f"roofline at this run's ceilings, C={context}"
            )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="sequences in the batch",
        ylabel="ms per layer",
        title="decode step, one layer's shard",
    )
    ax.legend(fontsize=7)
    ax = axes[2]
    for source, style in (("measured", "o-"), ("predicted", "--")):
        for d_key in ("H100", "A100"):
            rows = [
                d
                for d in (report["cluster"].get(source) or {}).get("decode", [])
                if d["gpu"].startswith(d_key) and d["context"] == report["meta"]["full_contexts"][0]
            ]
            if rows:
                ax.plot(
                    [d["tokens_per_s_user"] for d in rows],
                    [d["usd_per_1k_tokens"] for d in rows],
                    style,
                    label=f"{d_key}, {source}",
                )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="tokens/s per user",
        ylabel="$ per 1k output tokens",
        title=f"128 GPUs (tp8 x pp16), context {report['meta']['full_contexts'][0]}: batch grows to the left",
    )
    ax.legend(fontsize=7)
    m = report["meta"]
    fig.suptitle(
        f"{m['config']} x{m['layers']} layers, 1/{m['tp']} shard; {m['device']}, torch {m['torch']}, "
        f"triton {m['triton']}, {m['date']}",
        fontsize=9,
    )
    harness.save_figure(fig, path)


def summary(report: dict, cuda: bool) -> str:
    """What a run prints, from its report: the measured points and where their time went, and without
    --checkpoint the device's ceilings before them and the two clusters, the bounds and the assumptions
    after them."""
    m, points = report["meta"], report["points"]
    tables = [points_table(points), "", breakdown_table(points)]
    if "cluster" not in report:
        return "\n".join(tables)
    sh = m["shard"]
    lines = [
        f"{m['device']}: dense matmul {m['dense_peak_tflops']:.1f} TFLOP/s, copy {m['copy_gbps']:.0f} GB/s "
        f"(measured now); torch {m['torch']}, triton {m['triton']}, {m['date']}",
        f"{m['layers']} x {m['config']} layer as one GPU of tp={m['tp']} holds it: d_model {sh['d_model']}, "
        f"{sh['query_heads']} query heads x {sh['head_dim']}, {sh['kv_heads']} K/V head, {sh['experts']} experts "
        f"of d_ff {sh['d_ff']}, {m['dtype']}; {m['collective']}",
        *tables,
    ]
    if not cuda:
        lines += [
            "",
            f"No GPU: the rows above ran on the CPU at width / {m['scale']} in float32, a test of this "
            "script, not a measurement. Real figures need a GPU.",
        ]
    for source, result in (
        ("from this run's measurements", report["cluster"]["measured"]),
        (
            "PREDICTED by the roofline (arithmetic with the assumed ceilings, not measured)",
            report["cluster"]["predicted"],
        ),
    ):
        if result is None:
            continue
        lines += ["", f"{m['config']} on 128 GPUs (tp8 x pp16), decode, {source}:", decode_table(result["decode"])]
        lines += [
            f"  time to first token, one {t['tokens']}-token prompt on {t['gpu']}: {t['ms']} ms" for t in result["ttft"]
        ]
        lines += ["", f"{m['config']} training for 13T tokens, {source}:", train_table(result["train"])]
    lines += ["", "batch per microbatch at which expert weight reads stop dominating a decode layer:"]
    lines += [
        f"  {k}: " + ", ".join(f"{n} {x:,.0f}" if x is not None else f"{n} not reached" for n, x in v.items())
        for k, v in report["cluster"]["weight_bound_batch"].items()
    ]
    lines += [
        "  (compute: rows per expert reach peak/bandwidth; kv: the K/V cache read outgrows the expert weights; "
        "doubling: the measured layer time doubles from batch 1)",
        "",
        "assumptions:",
    ]
    lines += [f"- {a}" for a in report["assumptions"]]
    return "\n".join(lines)


def write(report: dict, cuda: bool, out: pathlib.Path, tag: str) -> None:
    """Print the summary, and write profile_<tag>.json and .md (the summary, as printed)."""
    text = summary(report, cuda)
    print(text)
    harness.write_result(
        out,
        f"profile_{tag}",
        report,
        f"```\n{text}\n```",
        by="bench.profile_model",
        title=f"{report['meta']['config']} layers on one device",
        env=harness.stamp(cuda),
    )


def main(argv=None) -> dict:
    p = harness.parser(__doc__)
    p.add_argument("--config", default="gpt4")
    p.add_argument("--checkpoint", help="profile this checkpoint's shape (and weights) instead of --config")
    p.add_argument("--layers", type=int, default=1, help="layers to materialize (default 1)")
    p.add_argument("--tp", type=int, default=8, help="tensor-parallel degree whose 1/tp shard one GPU holds")
    p.add_argument("--mode", default="all", choices=("all", "prefill", "decode", "train"))
    p.add_argument("--tokens", type=int, default=None, help="prefill prompt and training tokens (default 8192)")
    p.add_argument("--seq-len", type=int, default=None, help="training sequence length (default --tokens)")
    p.add_argument("--context", default=None, help="decode contexts, comma-separated (default 8192,32768)")
    p.add_argument(
        "--batches",
        default="",
        help="decode batch sizes, comma-separated (default 1, 2, 4, ... until out of memory or --max-batch)",
    )
    p.add_argument("--max-batch", type=int, default=None, help="default 4096 on a GPU, 16 on a CPU")
    p.add_argument("--reps", type=int, default=None, help="timed steps per point (default 20 GPU, 3 CPU)")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--scale", type=int, default=None, help="divide the width by this (default 1 GPU, 32 CPU)")
    p.add_argument("--expert-backend", default="auto", choices=("auto", "torch", "triton"))
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    if args.checkpoint:
        from moe.training import read_config

        full, _ = read_config(args.checkpoint)
        args.config, args.tp, args.scale = full.name, args.tp if "--tp" in (argv or sys.argv) else 1, args.scale or 1
        length = full.max_seq_len
    else:
        full, length = load_config(args.config), 8192
    scale = args.scale = args.scale or (1 if cuda else 32)
    args.tokens = args.tokens or length // scale
    args.seq_len = args.seq_len or args.tokens
    default_contexts = [length // 2 - 1, length - 1] if args.checkpoint else [8192 // scale, 32768 // scale]
    args.contexts = [int(c) for c in args.context.split(",")] if args.context else default_contexts
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.max_batch = args.max_batch or (4096 if cuda else 16)
    args.reps = args.reps or (20 if cuda else 3)
    args.modes = ("prefill", "decode", "train") if args.mode == "all" else (args.mode,)
    if args.layers < 1 or args.tp < 1:
        p.error("--layers and --tp must be >= 1")
    max_len = max([args.tokens, args.seq_len, *(c + 1 for c in args.contexts)])
    try:
        cfg = scaled_config(full, scale, max_len)
        shard = dataclasses.replace(
            X.shard_shape(cfg, args.tp), n_layers=args.layers, expert_backend=args.expert_backend
        )
    except ValueError as e:
        p.error(str(e))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.config}_L{args.layers}"

    torch.manual_seed(0)
    ceilings = device_ceilings(device, dtype, cuda, 20 if cuda else 3)
    meta = dict(
        harness.stamp(cuda),
        config=args.config,
        layers=args.layers,
        tp=args.tp,
        scale=scale,
        dtype=str(dtype).removeprefix("torch."),
        expert_backend=args.expert_backend,
        modes=list(args.modes),
        contexts=args.contexts,
        full_contexts=[c * scale for c in args.contexts],
        tokens=args.tokens,
        seq_len=args.seq_len,
        reps=args.reps,
        shard=dict(
            d_model=shard.d_model,
            query_heads=shard.n_heads,
            kv_heads=shard.n_kv_heads,
            head_dim=shard.head_dim,
            experts=shard.n_experts,
            d_ff=shard.d_ff,
            top_k=shard.top_k,
        ),
        dense_peak_tflops=round(ceilings[0], 2),
        copy_gbps=round(ceilings[1], 1),
        collective="tensor-parallel all-reduces not issued or timed; added by the cluster model",
    )
    here = X.GPU(meta["device"], ceilings[0], ceilings[1], 0, 0, 0, 0, matmul_efficiency=1.0, copy_efficiency=1.0)
    points = run_modes(args, shard, device, dtype, cuda, here, out, tag)

    # The cluster, twice: from this run's layer times (a GPU only), and predicted from the roofline.
    # It is the leak's 128-GPU cluster (tp8 x pp16): a checkpoint of another shape only has its layers timed.
    if args.checkpoint:
        report = dict(meta=meta, points=points)
        write(report, cuda, out, tag)
        return report
    full_shard = dataclasses.replace(X.shard_shape(full, args.tp), n_layers=1)
    gpus = dict(X.GPUS)
    measured = None
    if cuda:
        if "H100" in meta["device"]:  # this run's own ceilings replace the assumed fractions
            gpus["H100"] = dataclasses.replace(
                gpus["H100"],
                matmul_efficiency=ceilings[0] / gpus["H100"].peak_tflops,
                copy_efficiency=ceilings[1] / gpus["H100"].bandwidth_gbs,
            )
        measured = cluster(full, full_shard, measured_layer_times(points), here, gpus, args.tokens)
    full_contexts = meta["full_contexts"]
    full_tokens = args.tokens * scale
    predicted = cluster(
        full,
        full_shard,
        predicted_layer_times(full, full_shard, gpus, full_contexts, full_tokens),
        None,
        gpus,
        full_tokens,
    )
    bound = {f"{k} C={c}": X.weight_bound_batch(full_shard, g, c) for k, g in gpus.items() for c in full_contexts}
    if cuda:
        for c in args.contexts:
            bound[f"measured C={c}"] = dict(doubling=doubling_batch(points, c))
    report = dict(
        meta=meta,
        assumptions=X.ASSUMPTIONS,
        points=points,
        cluster=dict(measured=measured, predicted=predicted, weight_bound_batch=bound),
    )

    write(report, cuda, out, tag)
    plot(report, out / f"profile_{tag}.png")
    print(f"\nwrote {out}/profile_{tag}.{{json,md,png}} and trace_{tag}_*.json.gz")
    return report


if __name__ == "__main__":
    main()
