"""Benchmark the grouped expert matmul and the fused expert MLP against PyTorch, in one process.

    python -m bench.kernels                  # on a GPU: every shape, Triton and PyTorch
    python -m bench.kernels --scale 8        # on a CPU: PyTorch paths only, shapes / 8

Shapes (A-E): A trains T=16384 tokens at d=2048, f=8192; B prefills one 8k prompt through
one GPT-4 layer as one GPU of 8-way tensor parallelism holds it (d=10752, f=5376); C decodes 8 and 64
tokens through that shard; D is B forward+backward; E is B with skewed routing (the hottest expert 4x
the mean, three experts empty). All use E=16 experts and top-2, bf16 on a GPU (fp32 on a CPU).

Two ops per shape, each on the same routed inputs for every implementation:
  gmm: the up-projection alone, rows sorted by expert: [T*k, d] x [E, d, f]
       triton (kernels.grouped_mm) | torch._grouped_mm (F.grouped_mm) | a loop of torch.matmul per
       expert | one dense torch.mm of the same rows (the ceiling, not an MoE).
  mlp: the whole expert MLP (GELU, the gpt4 preset's), token rows in, token rows out
       triton (kernels.expert_mlp, fused gather/epilogues) | torch (gather, two F.grouped_mm, combine)
       | the dense MLP of the same rows with torch.mm (ceiling, no gather or combine).
  qmlp (shapes B and C, forward): the same MLP over weight-only quantized experts (kernels/quantized.py)
       triton int8 | fp8 (sm_89+) | int4, dequantized in the loads | torch: dequantize each active expert
       and matmul (the CPU path) | torch._weight_int8pack_mm per expert (the alternative it was chosen over).
       Checked against the fp32 MLP of the dequantized weights; decode bandwidth counts the quantized
       bytes (values and scales) of the experts that received tokens.

Method (bench/README.md): every implementation is checked against an fp32 reference
first; timing is CUDA events around each call after warm-up (which also runs Triton's autotuner),
the median of --reps runs, cycling through input sets that together exceed the L2 cache. Useful
FLOPs are 2*K*N*rows per matmul (padding never counted), forward+backward is 3x forward; decode
bandwidth counts the weight bytes of the experts that received tokens (one matrix per op for the
dense ceiling). The dense-matmul peak
(8192^3 bf16) and the device-to-device copy bandwidth (bytes read + written) are measured in the
same run, and percentages are of those.

Written to bench/results/<device>/: kernels.json (meta, rows, targets; with the stamp under
environment) and kernels.md through bench.harness, and kernels.csv and kernels.png beside them.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import pathlib
import sys

import torch
import torch.nn.functional as F

import kernels
from bench.harness import default_out, markdown_table, stamp, write_result
from kernels.expert_mlp import apply_expert_mlp
from kernels.grouped_matmul import apply_grouped_mm, torch_grouped_mm
from kernels.quantized import dequantize, fp8_supported, quantize, quantized_mlp
from moe.profiling.timing import device_ceilings, median_ms

L2_BYTES = 50 * 2**20  # H100: 50 MB


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    T: int
    d: int
    f: int
    backward: bool = False
    skewed: bool = False
    E: int = 16
    k: int = 2

    def scaled(self, s: int) -> Shape:
        return dataclasses.replace(
            self, T=max(1, self.T // s) if self.T > 64 else self.T, d=max(16, self.d // s), f=max(16, self.f // s)
        )


SHAPES = [
    Shape("A train fwd", 16384, 2048, 8192),
    Shape("A train fwd+bwd", 16384, 2048, 8192, backward=True),
    Shape("B prefill 8k", 8192, 10752, 5376),
    Shape("C decode 8", 8, 10752, 5376),
    Shape("C decode 64", 64, 10752, 5376),
    Shape("D prefill fwd+bwd", 8192, 10752, 5376, backward=True),
    Shape("E prefill skewed", 8192, 10752, 5376, skewed=True),
]


def expert_counts(shape: Shape) -> list[int]:
    """Rows per expert. Balanced: as even as possible. Skewed: the hottest 4x the mean, three empty."""
    A, E = shape.T * shape.k, shape.E
    if not shape.skewed:
        return [A // E + (g < A % E) for g in range(E)]
    hot = min(A, 4 * A // E)
    rest, n_rest = A - hot, E - 4
    return [hot] + [0, 0, 0] + [rest // n_rest + (g < rest % n_rest) for g in range(n_rest)]


def routed_inputs(shape: Shape, device, dtype, seed: int) -> dict:
    """Tokens, routing with the given per-expert counts (assignments shuffled), and expert weights."""
    gen = torch.Generator().manual_seed(seed)
    counts = expert_counts(shape)
    experts_A = torch.repeat_interleave(torch.arange(shape.E), torch.tensor(counts))
    experts_A = experts_A[torch.randperm(experts_A.numel(), generator=gen)]
    order_M, offsets_E = kernels.sort_by_expert(experts_A, shape.E)
    weights_TK = torch.rand(shape.T, shape.k, generator=gen)
    weights_TK = weights_TK / weights_TK.sum(-1, keepdim=True)

    def rand(*size, fan_in):
        return (torch.randn(*size, generator=gen) / fan_in**0.5).to(device, dtype)

    x_TD = rand(shape.T, shape.d, fan_in=1)
    return dict(
        x_TD=x_TD,
        x_MD=x_TD[order_M.to(device) // shape.k].contiguous(),
        order_M=order_M.to(device),
        experts_TK=experts_A.view(shape.T, shape.k).to(device),
        offsets_E=offsets_E.to(device),
        weights_TK=weights_TK.to(device),
        counts=counts,
        w_up=rand(shape.E, shape.d, shape.f, fan_in=shape.d),
        w_down=rand(shape.E, shape.f, shape.d, fan_in=shape.f),
    )


# --- the implementations: each takes one input set and returns the output -------------------------


def gmm_triton(s):
    # no checks: the correctness pass runs the checked reference
    return apply_grouped_mm(s["x_MD"], s["w_up"], s["offsets_E"], "triton")


def gmm_torch(s):
    return torch_grouped_mm(s["x_MD"], s["w_up"], offs=s["offsets_E"])


def gmm_loop(s):
    ends = s["ends"]  # host-side row ends, computed once outside the timing
    return torch.cat([s["x_MD"][a:b] @ s["w_up"][g] for g, (a, b) in enumerate(zip([0] + ends[:-1], ends))])


def gmm_dense(s):
    return s["x_MD"] @ s["w_up"][0]


def mlp_triton(s):
    return apply_expert_mlp(
        s["x_TD"], s["weights_TK"], s["order_M"], s["offsets_E"], s["w_up"], None, s["w_down"], "gelu", "triton"
    )


def mlp_torch(s):
    return apply_expert_mlp(
        s["x_TD"], s["weights_TK"], s["order_M"], s["offsets_E"], s["w_up"], None, s["w_down"], "gelu", "torch"
    )


def mlp_dense(s):
    return F.gelu(s["x_MD"] @ s["w_up"][0]) @ s["w_down"][0]


def gmm_reference(s):
    return kernels.grouped_mm_reference(s["x_MD"].float(), s["w_up"].float(), s["offsets_E"])


def mlp_reference(s):
    return kernels.expert_mlp_reference(
        s["x_TD"].float(),
        s["weights_TK"],
        s["order_M"],
        s["offsets_E"],
        s["w_up"].float(),
        None,
        s["w_down"].float(),
        activation_name="gelu",
    )


def qmlp(scheme, backend):
    def run(s):
        return quantized_mlp(
            s["x_TD"],
            s["weights_TK"],
            s["experts_TK"],
            s["q"][scheme][0],
            None,
            s["q"][scheme][1],
            activation_name="gelu",
            backend=backend,
        )

    return run


def qmlp_int8pack(s):
    """The alternative CPU path: torch._weight_int8pack_mm (int8 weights [N, K], a scale per output) per expert."""
    up, down = s["int8pack"]
    x_MD = s["x_TD"][s["order_M"] // s["weights_TK"].shape[1]]
    ends = s["ends"]
    y = torch.cat(
        [
            torch._weight_int8pack_mm(F.gelu(torch._weight_int8pack_mm(x_MD[a:b], *up[g])), *down[g])
            for g, (a, b) in enumerate(zip([0] + ends[:-1], ends))
        ]
    )
    return kernels.combine(y, s["order_M"], s["weights_TK"])


def qmlp_reference(scheme):
    def run(s):
        up, down = (dequantize(w, torch.float32) for w in s["q"][scheme])
        return kernels.expert_mlp_reference(
            s["x_TD"].float(), s["weights_TK"], s["order_M"], s["offsets_E"], up, None, down, activation_name="gelu"
        )

    return run


def quantize_set(s, schemes):
    s["q"] = {sc: (quantize(s["w_up"], sc), quantize(s["w_down"], sc)) for sc in schemes}
    if "int8" in schemes:  # _weight_int8pack_mm's layout: [N, K] int8 and [N] scales, per expert
        s["int8pack"] = tuple(
            [(w.q[g].T.contiguous(), w.scale[g].to(s["x_TD"].dtype)) for g in range(w.q.shape[0])]
            for w in s["q"]["int8"]
        )


QUANT_IMPLS = [
    ("triton int8", "int8", qmlp("int8", "triton")),
    ("triton fp8", "fp8", qmlp("fp8", "triton")),
    ("triton int4", "int4", qmlp("int4", "triton")),
    ("torch int8 dequantize", "int8", qmlp("int8", "torch")),
    ("torch int8 _weight_int8pack_mm", "int8", qmlp_int8pack),
    ("torch int4 dequantize", "int4", qmlp("int4", "torch")),
]


IMPLS = {
    "gmm": [
        ("triton", gmm_triton),
        ("torch._grouped_mm", gmm_torch),
        ("torch.matmul loop", gmm_loop),
        ("dense torch.mm", gmm_dense),
    ],
    "mlp": [("triton fused", mlp_triton), ("torch grouped_mm", mlp_torch), ("dense torch.mm", mlp_dense)],
}
REFERENCES = {"gmm": gmm_reference, "mlp": mlp_reference}
LEAVES = {"gmm": ("x_MD", "w_up"), "mlp": ("x_TD", "weights_TK", "w_up", "w_down")}


def with_backward(fn, op):
    """fn's forward and the backward of <fn(s), dy> for every input of the op, as one call."""

    def run(s):
        leaves = {n: s[n].detach().requires_grad_() for n in LEAVES[op]}
        y = fn({**s, **leaves})
        used = [t for n, t in leaves.items() if not (n == "weights_TK" and fn is mlp_dense)]
        dy = s["dy"] if s["dy"].shape == y.shape else s["dy_MD"]  # the dense MLP's rows are not summed per token
        return torch.autograd.grad(y, used, dy, allow_unused=True)

    return run


# --- timing -----------------------------------------------------------------------------------------


def max_rel_error(got, want) -> float:
    got = got if isinstance(got, (tuple, list)) else [got]
    want = want if isinstance(want, (tuple, list)) else [want]
    errs = [
        ((g.float() - w.float()).abs().max() / w.float().abs().max().clamp(min=1e-6)).item()
        for g, w in zip(got, want)
        if g is not None and w is not None
    ]
    return max(errs)


def bench_shape(shape: Shape, device, dtype, reps: int, use_triton: bool, cuda: bool, ceilings) -> list[dict]:
    one = routed_inputs(shape, device, dtype, seed=0)
    set_bytes = sum(t.numel() * t.element_size() for t in one.values() if isinstance(t, torch.Tensor))
    n_sets = max(2, min(8, -(-2 * L2_BYTES // set_bytes))) if cuda else 1
    sets = [one] + [routed_inputs(shape, device, dtype, seed=i) for i in range(1, n_sets)]
    for s in sets:
        s["ends"] = s["offsets_E"].tolist()
    touched = sum(c > 0 for c in one["counts"])
    M, itemsize = shape.T * shape.k, one["w_up"].element_size()
    rows = []
    for op, impls in IMPLS.items():
        flops = 2 * M * shape.d * shape.f * (1 if op == "gmm" else 2) * (3 if shape.backward else 1)
        matrix_bytes = shape.d * shape.f * itemsize * (1 if op == "gmm" else 2)  # one expert's weights for this op
        reference = REFERENCES[op]
        if shape.backward:
            out_shape = (M, shape.f) if op == "gmm" else (shape.T, shape.d)
            for s in sets:
                s["dy"] = torch.randn(out_shape, device=device, dtype=dtype)
                s["dy_MD"] = torch.randn(M, shape.d, device=device, dtype=dtype)
            reference = with_backward(REFERENCES[op], op)
        want = reference({**one, **({"dy": one["dy"].float()} if shape.backward else {})})
        for name, fn in impls:
            if name.startswith("triton") and not use_triton:
                continue
            if fn is gmm_torch and torch_grouped_mm is None:
                continue
            run = with_backward(fn, op) if shape.backward else fn
            row = describe(shape, op, name, touched)
            try:
                err = max_rel_error(run(one), want) if "dense" not in name else 0.0
            except (RuntimeError, ValueError) as e:  # e.g. an op this PyTorch lacks for these operands
                rows.append({**row, "error": str(e).splitlines()[0][:120]})
                continue
            if err > (3e-2 if dtype != torch.float32 else 1e-3):
                rows.append({**row, "error": f"wrong: max relative error {err:.2e} against the fp32 reference"})
                continue
            ms = median_ms(run, sets, reps, cuda)
            weight_gbps = matrix_bytes * (1 if "dense" in name else touched) / ms / 1e6
            rows.append(
                {
                    **row,
                    "ms": round(ms, 4),
                    "tflops": round(flops / ms / 1e9, 4),
                    "max_rel_err": err,
                    "pct_peak": round(100 * flops / ms / 1e9 / ceilings[0], 1),
                    "weight_gbps": round(weight_gbps, 1),
                    "pct_copy": round(100 * weight_gbps / ceilings[1], 1),
                }
            )
    if not shape.backward and shape.name[0] in "BC":
        rows += bench_quantized(shape, sets, one, reps, use_triton, cuda, ceilings, touched)
    return rows


def describe(shape, op: str, impl: str, touched: int) -> dict:
    """The columns that say what a row measured."""
    return dict(
        shape=shape.name,
        op=op,
        impl=impl,
        T=shape.T,
        d=shape.d,
        f=shape.f,
        E=shape.E,
        k=shape.k,
        backward=shape.backward,
        skewed=shape.skewed,
        experts_touched=touched,
    )


def bench_quantized(shape, sets, one, reps, use_triton, cuda, ceilings, touched) -> list[dict]:
    schemes = ["int8", "int4"] + (["fp8"] if cuda and fp8_supported(torch.cuda.get_device_capability()) else [])
    for s in sets:
        quantize_set(s, schemes)
    flops, rows = 2 * shape.T * shape.k * shape.d * shape.f * 2, []
    for name, scheme, fn in QUANT_IMPLS:
        if scheme not in schemes or (name.startswith("triton") and not use_triton):
            continue
        row = describe(shape, "qmlp", name, touched)
        try:
            err = max_rel_error(fn(one), qmlp_reference(scheme)(one))
        except (RuntimeError, ValueError) as e:
            rows.append({**row, "error": str(e).splitlines()[0][:120]})
            continue
        if err > (3e-2 if one["x_TD"].dtype != torch.float32 else 1e-3):
            rows.append({**row, "error": f"wrong: max relative error {err:.2e} against the fp32 reference"})
            continue
        ms = median_ms(fn, sets, reps, cuda)
        w_up = one["q"][scheme][0]
        matrix_bytes = 2 * (w_up.nbytes / shape.E)  # one expert's up and down matrices, values and scales
        weight_gbps = matrix_bytes * touched / ms / 1e6
        rows.append(
            {
                **row,
                "ms": round(ms, 4),
                "tflops": round(flops / ms / 1e9, 4),
                "max_rel_err": err,
                "pct_peak": round(100 * flops / ms / 1e9 / ceilings[0], 1),
                "weight_gbps": round(weight_gbps, 1),
                "pct_copy": round(100 * weight_gbps / ceilings[1], 1),
            }
        )
    return rows


# --- reporting ----------------------------------------------------------------------------------------


def targets(rows: list[dict]) -> list[dict]:
    """The H100 targets, evaluated on this run's numbers."""
    get = {(r["shape"], r["op"], r["impl"]): r.get("ms") for r in rows}
    checks = []

    def check(what, value, goal, ok):
        checks.append(
            dict(
                target=what,
                measured=None if value is None else round(value, 3),
                goal=goal,
                met=None if value is None else bool(ok(value)),
            )
        )

    for shape in ("A train fwd", "B prefill 8k", "D prefill fwd+bwd"):
        tri, ref, dense = (get.get((shape, "gmm", i)) for i in ("triton", "torch._grouped_mm", "dense torch.mm"))
        check(
            f"{shape}: gmm speedup over torch._grouped_mm",
            ref / tri if tri and ref else None,
            ">= 1.05",
            lambda v: v >= 1.05,
        )
        check(
            f"{shape}: gmm speed vs dense torch.mm",
            dense / tri if tri and dense else None,
            ">= 0.90",
            lambda v: v >= 0.90,
        )
    by = {(r["shape"], r["op"], r["impl"]): r for r in rows}
    for shape, goal in (("A train fwd", 500), ("A train fwd+bwd", 420)):
        r = by.get((shape, "mlp", "triton fused"), {})
        check(f"{shape}: fused expert MLP TFLOP/s", r.get("tflops"), f">= {goal}", lambda v, g=goal: v >= g)
    for shape in ("C decode 8", "C decode 64"):
        r = by.get((shape, "gmm", "triton"), {})
        check(f"{shape}: gmm weight bandwidth, % of copy", r.get("pct_copy"), ">= 80", lambda v: v >= 80)
    b, e = get.get(("B prefill 8k", "gmm", "triton")), get.get(("E prefill skewed", "gmm", "triton"))
    check("E skewed / B balanced time, gmm", e / b if b and e else None, "<= 1.10", lambda v: v <= 1.10)
    return checks


def print_table(rows, ceilings):
    print(f"dense matmul peak {ceilings[0]:.1f} TFLOP/s, copy {ceilings[1]:.0f} GB/s (measured in this run)")
    head = f"{'shape':<20}{'op':<6}{'impl':<32}{'ms':>10}{'TFLOP/s':>10}{'% peak':>8}{'GB/s w':>9}{'% copy':>8}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['shape']:<20}{r['op']:<6}{r['impl']:<32}  {r['error']}")
        else:
            print(
                f"{r['shape']:<20}{r['op']:<6}{r['impl']:<32}{r['ms']:>10.3f}{r['tflops']:>10.3f}"
                f"{r['pct_peak']:>8.1f}{r['weight_gbps']:>9.0f}{r['pct_copy']:>8.1f}"
            )


def plot(rows, path: pathlib.Path, title: str):
    """Compute-bound shapes as % of the dense-matmul peak (one panel per op); decode as % of copy bandwidth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if "ms" in r]
    decode = [r for r in timed if r["shape"].startswith("C")]
    panels = [
        (f"{op}: {what}, % of dense-matmul peak", "pct_peak", [r for r in timed if r["op"] == op and r not in decode])
        for op, what in (("gmm", "grouped up-projection"), ("mlp", "expert MLP, tokens in and out"))
    ]
    panels.append(
        (
            "decode: weight bytes, % of copy bandwidth",
            "pct_copy",
            [{**r, "shape": f"{r['shape']} {r['op']}"} for r in decode],
        )
    )
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    for ax, (heading, metric, sub) in zip(axes, panels):
        shapes = list(dict.fromkeys(r["shape"] for r in sub))
        impls = list(dict.fromkeys(r["impl"] for r in sub))
        width = 0.8 / max(1, len(impls))
        for i, impl in enumerate(impls):
            vals = [next((r[metric] for r in sub if r["shape"] == s and r["impl"] == impl), 0) for s in shapes]
            ax.bar([j + i * width for j in range(len(shapes))], vals, width, label=impl)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, rotation=30, ha="right", fontsize=8)
        ax.set_title(heading, fontsize=9)
        if impls:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--scale", type=int, default=None, help="divide T (above 64), d and f by this (default 1 on a GPU, 8 on a CPU)"
    )
    p.add_argument("--reps", type=int, default=None, help="timed runs per implementation (default 50 GPU, 5 CPU)")
    p.add_argument("--shapes", default="", help="comma-separated shape letters to run, e.g. A,C (default all)")
    p.add_argument("--out", type=pathlib.Path, default=None, help="default bench/results/<device>")
    p.add_argument(
        "--interpret",
        action="store_true",
        help="run the Triton kernels on the CPU through Triton's "
        "interpreter (a test of this script, not a measurement)",
    )
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    use_triton = cuda or args.interpret
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    scale = args.scale or (1 if cuda else 8)
    reps = args.reps or (50 if cuda else 5)
    out = args.out or default_out(cuda)
    shapes = [s.scaled(scale) for s in SHAPES if not args.shapes or s.name[0] in args.shapes.split(",")]

    torch.manual_seed(0)
    ceilings = device_ceilings(device, dtype, cuda, reps)
    rows = []
    for shape in shapes:
        print(f"... {shape.name}: T={shape.T} d={shape.d} f={shape.f}", file=sys.stderr, flush=True)
        rows += bench_shape(shape, device, dtype, reps, use_triton, cuda, ceilings)
        if cuda:
            torch.cuda.empty_cache()
    env = stamp(cuda)
    meta = dict(
        env,
        dtype=str(dtype).removeprefix("torch."),
        scale=scale,
        reps=reps,
        triton_measured=cuda,
        dense_peak_tflops=round(ceilings[0], 2),
        copy_gbps=round(ceilings[1], 1),
    )
    triton_version = meta["triton"]
    print_table(rows, ceilings)
    if not cuda:
        print(
            f"\nNo GPU: these are the PyTorch paths on the CPU at shapes / {scale}. The Triton figures and the "
            "targets need a CUDA GPU"
            + (" (the Triton rows above ran in the interpreter: a test, not a measurement)" if args.interpret else "")
            + "."
        )
    checks = targets(rows) if cuda else []
    for c in checks:
        state = "n/a" if c["met"] is None else "met" if c["met"] else "MISSED"
        print(f"target {c['target']}: {c['measured']} (goal {c['goal']}) {state}")

    columns = ["shape", "op", "impl", "ms", "tflops", "pct_peak", "weight_gbps", "pct_copy", "error"]
    table = markdown_table(rows, columns) + ("\n" + markdown_table(checks) if checks else "")
    write_result(
        out,
        "kernels",
        dict(meta=meta, rows=rows, targets=checks),
        table,
        by="bench.kernels",
        title="Grouped expert matmul and expert MLP",
        env=env,
    )
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "kernels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    plot(
        rows,
        out / "kernels.png",
        f"{meta['device']}, torch {meta['torch']}, triton {triton_version}, "
        f"{meta['date']}, {meta['dtype']}, shapes / {scale}",
    )
    print(f"wrote {out}/kernels.{{json,md,csv,png}}")
    return rows


if __name__ == "__main__":
    main()
