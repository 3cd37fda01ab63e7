"""Time every clean launch configuration of every kernel mode on this GPU and write the pinned table
the measurements choose (kernels.tuning.pin_configs chooses from the compiled code alone, without one).

    python -m kernels.tuning.tune_configs                   # on a GPU: bench/results/<device>/tuned_configs.{py,json}
    python -m kernels.tuning.tune_configs --reps 5 --quick  # fewer repeats, one shape per row class

For each mode key of the shipped table (kernels/pinned_configs.py) and each row class, the
candidates are the configs the compile report (bench/results/compile-sm<arch>/check_compile.json)
found clean (no spill, HGMMA, TMA and asynchronous copies where expected); each is launched through
kernels.triton.launch.launch_rows with its meta-parameters forced, on inputs built from the
mode's flags, and timed as the median of --reps runs (CUDA events, after warm-up). The shapes, E = 16
experts, balanced: memory-bound (decode) m = 32 rows, compute-bound m = 8192 rows, K = N = 4096
(--quick) or also K = 10752, N = 5376 (GPT-4's expert shard at tp 8). The fastest config, summed over
the shapes, is written to a table beside the timings; it replaces kernels/pinned_configs.py's rows
for this architecture only after review (copy its ROWS into the shipped file). The dW kernel and the
split-K reduction keep their pinned configs.

On a CPU (tests, --interpret) it runs the same plumbing through Triton's interpreter at toy sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

# The kernels load inside the functions: --interpret decides, before triton loads, whether they compile
ROOT = pathlib.Path(__file__).resolve().parents[2]


def inputs(flags: dict, m: int, e: int, k: int, n: int, device, dtype, gen):
    """The arguments of one launch_rows call in the mode `flags` (the pinned table's key)."""
    import torch

    import kernels
    from kernels.triton.launch import dscale_buffer
    from kernels.triton.modes import EPI_GELU, EPI_GELU_BWD, EPI_PARTIAL, EPI_STORE, EPI_SWIGLU, EPI_SWIGLU_BWD, WQ_8BIT

    offsets = torch.tensor([(g + 1) * m // e for g in range(e)], dtype=torch.int32, device=device)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).to(dtype)

    def weight():
        if flags["TRANSPOSED_W"]:
            return randn(e, n, k).transpose(1, 2)
        return randn(e, k, n) / k**0.5

    kw = dict(m=m)
    epi = flags["EPI"]
    if flags["GATHER"]:
        kw["src"] = torch.randint(0, max(m // 2, 1), (m,), generator=gen, device=device, dtype=torch.int32)
        a = randn(max(m // 2, 1), k)
    else:
        a = randn(m, k)
    w = weight()
    if flags["WQ"]:
        scheme = "int8" if flags["WQ"] == WQ_8BIT else "int4"
        q = [kernels.quantize(w, scheme)]
        if flags["DUAL"]:
            q.append(kernels.quantize(weight(), scheme))
        w = q[0].q
        kw.update(ws=q[0].scale, wq=flags["WQ"], qgroup=q[0].group)
        if flags["DUAL"]:
            kw.update(w2=q[1].q, ws2=q[1].scale, dual=True)
    elif flags["DUAL"]:
        kw.update(w2=weight(), dual=True)
    if flags["PAIR2"]:
        kw.update(a2=randn(m, k), w2=weight())
    if epi == EPI_PARTIAL:  # timed as the partial pass of a forced split (the down-projection's mode)
        kw["split"] = 2
        epi = EPI_SWIGLU if flags["DUAL"] else EPI_GELU if flags["GATHER"] else EPI_STORE
    kw["epi"] = epi
    if flags["SAVE_PRE"] or epi in (EPI_GELU_BWD, EPI_SWIGLU_BWD):
        kw["pre"] = randn(m, n)
        if epi in (EPI_SWIGLU, EPI_SWIGLU_BWD):
            kw["pre2"] = randn(m, n)
    if epi == EPI_SWIGLU_BWD:
        kw["out2"] = randn(m, n)
    if epi in (EPI_GELU_BWD, EPI_SWIGLU_BWD):
        kw["dscale"] = dscale_buffer(m, n, device)
    if flags["SCALE"]:
        kw["scale"] = torch.rand(m, generator=gen, device=device)
    if flags["SCATTER"]:
        kw["dst"] = torch.randperm(m, generator=gen, device=device).to(torch.int32)
    out = randn(m, n)
    return a, w, offsets, out, kw


def candidates(report: dict | None, key: str, bound: str, interpret: bool) -> list[dict]:
    """Meta-parameters of the configs the compile report found clean for every mode sharing `key`."""
    from kernels.triton.configs import row_configs
    from kernels.tuning.variants import ROW_MODES, ROWS_KERNEL, label, variant_key

    configs = row_configs()
    if interpret or report is None:
        return [dict(c.kwargs, num_stages=c.num_stages, num_warps=c.num_warps) for c in configs]
    modes = [mode for mode, f in ROW_MODES.items() if variant_key(ROWS_KERNEL, f) == key]
    rows = [r for r in report["results"] if r["kernel"] == ROWS_KERNEL and r["mode"] in modes]
    out = []
    for c in configs:
        if (c.kwargs["BLOCK_M"] <= 32) != (bound == "memory"):
            continue
        mine = [r for r in rows if r["config"] == label(c)]
        if mine and all(r["ok"] and r["status"] != "skip" and not r["findings"] for r in mine):
            out.append(dict(c.kwargs, num_stages=c.num_stages, num_warps=c.num_warps))
    return out


def tune(shapes: dict, reps: int, interpret: bool, device, dtype, report: dict | None, arch: int):
    import torch
    from triton.runtime.errors import OutOfResources

    from kernels.measure import median_ms
    from kernels.pinned_configs import ROWS
    from kernels.triton.launch import launch_rows

    table, timings = {}, []
    for key, by_bound in ROWS[arch].items():
        flags = {x: int(v) for x, v in (kv.split("=") for kv in key.split())}
        for bound in by_bound:
            best = None
            for meta in candidates(report, key, bound, interpret):
                total = 0.0
                for shape in shapes[bound]:
                    gen = torch.Generator(device).manual_seed(0)
                    a, w, offsets, out, kw = inputs(flags, *shape, device, dtype, gen)
                    try:
                        ms = median_ms(
                            lambda _: launch_rows(a, w, offsets, out, meta=meta, **kw),
                            [None],
                            reps,
                            device.type == "cuda",
                        )
                    except OutOfResources as e:  # more shared memory or registers than this device has
                        timings.append(dict(key=key, bound=bound, meta=meta, shape=shape, error=str(e)[:200]))
                        total = float("inf")
                        break
                    timings.append(dict(key=key, bound=bound, meta=meta, shape=shape, ms=ms))
                    total += ms
                if best is None or total < best[0]:
                    best = (total, meta)
            if best is not None and best[0] < float("inf"):
                table.setdefault(key, {})[bound] = best[1]
    return table, timings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="one shape per row class")
    p.add_argument("--interpret", action="store_true", help="no GPU: Triton's interpreter at toy sizes (a test)")
    p.add_argument("--out", type=pathlib.Path, help="directory (default: bench/results/<device>/)")
    args = p.parse_args(argv)
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton loads
    import torch

    from kernels.measure import device_slug, environment
    from kernels.triton import configs, launch

    if configs.INTERPRET != args.interpret:
        raise SystemExit("tune_configs: TRITON_INTERPRET must be set exactly when --interpret is given")
    cuda = not args.interpret
    if cuda and not torch.cuda.is_available():
        raise SystemExit("tune_configs: needs a CUDA GPU (or --interpret for a dry run on the CPU)")
    device = torch.device("cuda" if cuda else "cpu")
    arch = launch.arch(0) if cuda else 90
    if args.interpret:
        shapes = {"memory": [(6, 3, 32, 32)], "compute": [(80, 2, 32, 32)]}
    else:
        shapes = {"memory": [(32, 16, 4096, 4096)], "compute": [(8192, 16, 4096, 4096)]}
        if not args.quick:
            shapes["memory"].append((32, 16, 10752, 5376))
            shapes["compute"].append((8192, 16, 10752, 5376))
    report_path = ROOT / "bench" / "results" / f"compile-sm{arch}" / "check_compile.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    start = time.time()
    dtype = torch.float32 if args.interpret else torch.bfloat16
    table, timings = tune(shapes, args.reps, args.interpret, device, dtype, report, arch)
    out = args.out or ROOT / "bench" / "results" / device_slug(cuda)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tuned_configs.json").write_text(
        json.dumps(
            dict(
                arch=arch,
                environment=environment(cuda),
                shapes=shapes,
                seconds=round(time.time() - start, 1),
                timings=timings,
            ),
            indent=1,
        )
    )
    lines = (
        [
            f'"""Measured on {device_slug(cuda)} by kernels.tuning.tune_configs: the fastest clean config per',
            f"mode key and row class (sm_{arch}). To ship it, copy ROWS into kernels/pinned_configs.py under "
            f'{arch}."""',
            "",
            "ROWS = {",
        ]
        + [f"    {k!r}: {v!r}," for k, v in table.items()]
        + ["}", ""]
    )
    (out / "tuned_configs.py").write_text("\n".join(lines))
    print(
        f"tuned {sum(len(v) for v in table.values())} (mode, row class) pairs in {time.time() - start:.0f} s; "
        f"wrote {out / 'tuned_configs.py'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
