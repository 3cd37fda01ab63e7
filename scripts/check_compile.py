"""Compile every variant of the Triton kernels for a GPU architecture, without a GPU, and hold the
machine code to account: per variant, shared memory, registers per thread, occupancy, the stack
frame and local stores/loads (spills), and the instructions that matter, read back from the SASS
with the cuobjdump shipped in the triton wheel: HGMMA (Hopper's warp-group MMA), UTMALDG (TMA
loads), LDGSTS (asynchronous copies).

    python scripts/check_compile.py --quick          # what CI runs: the configs the runtime launches
    python scripts/check_compile.py --json bench/results/compile-sm90/check_compile.json   # every config
    python scripts/check_compile.py --arch 80        # the pre-Hopper path (no TMA, no HGMMA)

It specializes arguments the way Triton's JIT does at a real launch on contiguous tensors: unit
strides become the constant 1, pointers and the other integers are taken as multiples of 16. (Without
that the compiler cannot prove the loads contiguous and does not pipeline them.) Needs triton's
bundled ptxas, no GPU and no CUDA driver.

Exits 1 if any variant fails to compile, or if a shipped variant (one kernels/pinned_configs.py makes
the runtime launch, marked *) overflows shared memory, spills, or on sm_90 lacks HGMMA in a
compute-bound tile, TMA loads in a non-gathered compute-bound tile (int4's packed weights excepted),
or asynchronous copies in a memory-bound one (see findings). Other variants with findings are
reported as `note`: the autotuner (MOE_AUTOTUNE=1) may still pick them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import sys
import time

os.environ["TRITON_INTERPRET"] = "0"  # must precede importing triton: we want the compiler
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import kernels.triton_grouped_mm as tg  # noqa: E402

SHARED_LIMIT = tg.SHARED_LIMIT  # bytes of shared memory one program may use, by compute capability
UNIT_STRIDES = {"stride_ak", "stride_wn", "stride_on", "stride_bn", "stride_dn"}  # 1 on contiguous row-major tensors
INDEX_PTRS = {"src_ptr", "dst_ptr", "offsets_ptr", "a_src_ptr", "b_src_ptr"}
FP32_PTRS = {"scale_ptr", "dscale_ptr", "ws_ptr", "ws2_ptr", "part_ptr", "part2_ptr"}
W_PTRS = {"w_ptr", "w2_ptr"}  # a quantized variant's weights: W_TYPE below

ROW_MODES = {  # name: the rows kernel's flags, as the launchers in kernels/ set them
    "grouped_mm": dict(),
    "grouped_mm dX (w transposed)": dict(TRANSPOSED_W=True),
    "up + GELU, gathered, saving pre": dict(GATHER=True, EPI=tg.EPI_GELU, SAVE_PRE=True),
    "up + gate + SwiGLU, gathered": dict(GATHER=True, DUAL=True, EPI=tg.EPI_SWIGLU, SAVE_PRE=True),
    "up + GELU, gathered (inference)": dict(GATHER=True, EPI=tg.EPI_GELU),
    "up + gate + SwiGLU, gathered (inference)": dict(GATHER=True, DUAL=True, EPI=tg.EPI_SWIGLU),
    "down, weighted scatter": dict(SCALE=True, SCATTER=True),
    # the backward epilogues read the saved pre-activations: SAVE_PRE is set at launch (pre is passed)
    "GELU backward epilogue": dict(GATHER=True, EPI=tg.EPI_GELU_BWD, SCALE=True, SAVE_PRE=True, TRANSPOSED_W=True),
    "SwiGLU backward epilogue": dict(GATHER=True, EPI=tg.EPI_SWIGLU_BWD, SCALE=True, SAVE_PRE=True,
                                     TRANSPOSED_W=True),
    "GELU dX, scatter": dict(SCATTER=True, TRANSPOSED_W=True),
    "SwiGLU dX, two pairs, scatter": dict(PAIR2=True, SCATTER=True, TRANSPOSED_W=True),
    # serving quantized experts (kernels/quantized.py): weights widened in the loads, scales in the epilogue
    "up + GELU, int8 W": dict(GATHER=True, EPI=tg.EPI_GELU, WQ=1, W_TYPE="i8"),
    "up + gate + SwiGLU, fp8 W": dict(GATHER=True, DUAL=True, EPI=tg.EPI_SWIGLU, WQ=1, W_TYPE="fp8e4nv"),
    "up + gate + SwiGLU, int8 W": dict(GATHER=True, DUAL=True, EPI=tg.EPI_SWIGLU, WQ=1, W_TYPE="i8"),
    "down, weighted scatter, int8 W": dict(SCALE=True, SCATTER=True, WQ=1, W_TYPE="i8"),
    "down, weighted scatter, fp8 W": dict(SCALE=True, SCATTER=True, WQ=1, W_TYPE="fp8e4nv"),
    "up + gate + SwiGLU, int4 W": dict(GATHER=True, DUAL=True, EPI=tg.EPI_SWIGLU, WQ=2, W_TYPE="u8"),
    "up + GELU, int4 W": dict(GATHER=True, EPI=tg.EPI_GELU, WQ=2, W_TYPE="u8"),
    "down, weighted scatter, int4 W": dict(SCALE=True, SCATTER=True, WQ=2, W_TYPE="u8"),
    # decode's split-K first pass (memory-bound tiles only): raw fp32 sums of one K slice; scale, scatter
    # and activation come in the second pass (_reduce_splits_kernel, REDUCE_MODES below)
    "split-K partials: up, gathered": dict(GATHER=True, EPI=tg.EPI_PARTIAL),
    "split-K partials: up + gate, gathered": dict(GATHER=True, DUAL=True, EPI=tg.EPI_PARTIAL),
    "split-K partials: down": dict(EPI=tg.EPI_PARTIAL),
    "split-K partials: dX (w transposed)": dict(EPI=tg.EPI_PARTIAL, TRANSPOSED_W=True),
    "split-K partials: up, int8 W": dict(GATHER=True, EPI=tg.EPI_PARTIAL, WQ=1, W_TYPE="i8"),
    "split-K partials: up + gate, fp8 W": dict(GATHER=True, DUAL=True, EPI=tg.EPI_PARTIAL, WQ=1, W_TYPE="fp8e4nv"),
    "split-K partials: up + gate, int8 W": dict(GATHER=True, DUAL=True, EPI=tg.EPI_PARTIAL, WQ=1, W_TYPE="i8"),
    "split-K partials: down, int8 W": dict(EPI=tg.EPI_PARTIAL, WQ=1, W_TYPE="i8"),
    "split-K partials: up, int4 W": dict(GATHER=True, EPI=tg.EPI_PARTIAL, WQ=2, W_TYPE="u8"),
    "split-K partials: up + gate, int4 W": dict(GATHER=True, DUAL=True, EPI=tg.EPI_PARTIAL, WQ=2, W_TYPE="u8"),
    "split-K partials: down, int4 W": dict(EPI=tg.EPI_PARTIAL, WQ=2, W_TYPE="u8"),
}
REDUCE_MODES = {  # split-K's second pass, at the one launch configuration the runtime uses (8 slices: the most)
    "split-K reduce: GELU": dict(EPI=tg.EPI_GELU),
    "split-K reduce: SwiGLU": dict(EPI=tg.EPI_SWIGLU, DUAL=True),
    "split-K reduce: weighted scatter": dict(EPI=tg.EPI_STORE, SCALE=True, SCATTER=True),
}
DW_MODES = {
    "dW plain": dict(),
    "dW gathered A": dict(GATHER_A=True),
    "dW scaled A, gathered B": dict(GATHER_B=True, SCALE_A=True),
}


def signature(fn, consts: dict, dtype: str, dynamic_unit: set[str], w_type: str | None = None) -> tuple[dict, dict]:
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = ("*i32" if name in INDEX_PTRS else "*fp32" if name in FP32_PTRS
                         else f"*{w_type}" if w_type and name in W_PTRS else f"*{dtype}")
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "i32"
            if name not in dynamic_unit:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def compile_variant(fn, flags: dict, config: triton.Config, dtype: str, arch: int) -> dict:
    flags = dict(flags)
    transposed = flags.pop("TRANSPOSED_W", False)
    w_type = flags.pop("W_TYPE", None)
    consts = {**flags, **config.kwargs}
    if fn is tg._reduce_splits_kernel:
        consts = {**dict(DUAL=False, SCALE=False, SCATTER=False, SPLIT_K=8), **consts}
    elif fn is tg._rows_kernel.fn:
        consts = {**dict(GATHER=False, DUAL=False, PAIR2=False, EPI=tg.EPI_STORE, SAVE_PRE=False, SCALE=False,
                         SCATTER=False, E_POW2=16, WQ=0, QGROUP=128), **consts}
        # as the runtime decides (tg._use_tma, on the contiguous layouts assumed here): TMA from sm_90 on
        tma = arch >= 90 and consts["WQ"] != 2
        consts.update(TMA=tma, TMA_STORE=tma, W_T=transposed, SPLIT_K=1)
    else:
        consts = {**dict(GATHER_A=False, GATHER_B=False, SCALE_A=False), **consts}
    if fn is not tg._reduce_splits_kernel:
        consts.update(DOT_FP32=False, PRECISION="ieee")  # what the runtime passes (tg._dot_args; TF32 is off by default)
    units = UNIT_STRIDES - {"stride_wn"} | {"stride_wk"} if transposed else UNIT_STRIDES
    consts.update({n: 1 for n in units if n in fn.arg_names})
    sig, attrs = signature(fn, consts, dtype, set(), w_type)
    if consts.get("EPI") == tg.EPI_PARTIAL and fn is tg._rows_kernel.fn:
        sig.update(out_ptr="*fp32", out2_ptr="*fp32")  # split-K's fp32 workspace
    start = time.time()
    try:
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                           target=GPUTarget("cuda", arch, 32),
                           options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    except Exception as e:  # a compile error of any kind is the finding
        return dict(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    ttgir = k.asm["ttgir"]
    return dict(ok=True, seconds=round(time.time() - start, 1), shared=k.metadata.shared, warps=config.num_warps,
                pipelined="async_copy" in ttgir or "async_tma" in ttgir, wgmma="warp_group_dot" in ttgir,
                **machine_code(k.asm["cubin"]))


def label(config: triton.Config) -> str:
    """A config as the report names it: '128x128x64 s4 w8' (BLOCK_M x BLOCK_N x BLOCK_K, stages, warps)."""
    tiles = "x".join(str(config.kwargs[b]) for b in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if b in config.kwargs)
    return f"{tiles} s{config.num_stages} w{config.num_warps}"


def jit_of(kernel):
    """The JITFunction of a kernel, autotuned or not."""
    return kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel


def compile_named(kernel: str, flags: dict, config: tuple, dtype: str, arch: int) -> dict:
    """compile_variant for a worker process: the kernel by name, the config as (kwargs, stages, warps)."""
    kwargs, stages, warps = config
    return compile_variant(jit_of(getattr(tg, kernel)), flags, triton.Config(kwargs, num_stages=stages, num_warps=warps),
                           dtype, arch)


CUOBJDUMP = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def machine_code(cubin: bytes) -> dict:
    """What the SASS says (cuobjdump, shipped in the triton wheel): registers per thread, the stack
    frame (where spilled registers go), local stores/loads (the spills themselves), HGMMA instructions."""
    import re
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([str(CUOBJDUMP), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([str(CUOBJDUMP), "--dump-sass", f.name], capture_output=True, text=True).stdout
    field = lambda name: int(m.group(1)) if (m := re.search(rf"{name}:(\d+)", usage)) else None  # noqa: E731
    count = lambda op: len(re.findall(rf"\b{op}\b", sass))  # noqa: E731
    return dict(registers=field("REG"), stack=field("STACK"), spill_stores=count("STL"), spill_loads=count("LDL"),
                hgmma=count("HGMMA"), tma_loads=count("UTMALDG"), async_copies=count("LDGSTS"))


def pinned_configs(kernel, flags: dict, arch: int) -> list[triton.Config]:
    """The configurations kernels/pinned_configs.py makes the runtime launch for this mode on `arch`."""
    from kernels import pinned_configs as pc

    ROWS, DW = pc.ROWS.get(arch, {}), pc.DW.get(arch, {})

    rows = kernel is tg._rows_kernel
    key = tg.mode_key({k: v for k, v in flags.items() if k != "W_TYPE"}, tg.ROW_FLAGS if rows else tg.DW_FLAGS)
    out = []
    for meta in (ROWS if rows else DW).get(key, {}).values():
        meta = dict(meta)
        stages, warps = meta.pop("num_stages"), meta.pop("num_warps")
        out.append(triton.Config(meta, num_stages=stages, num_warps=warps))
    return out


def kept_by_autotuner(config: triton.Config, flags: dict, arch: int) -> bool:
    """The autotuner's pruning that does not depend on the row count (tg.fits)."""
    return tg.fits(config, flags, SHARED_LIMIT.get(arch, SHARED_LIMIT[80]))


SM = {90: dict(regs=65536, shared=233472, warps=64), 80: dict(regs=65536, shared=167936, warps=64)}  # per SM


def occupancy(r: dict, arch: int) -> dict:
    """Programs resident per SM and the fraction of warp slots they fill, from registers (allocated
    per warp in units of 256), shared memory (plus 1 KiB the system reserves per program) and warps."""
    sm = SM.get(arch, SM[80])
    regs_per_warp = -(-r["registers"] * 32 // 256) * 256
    ctas = min(sm["regs"] // (regs_per_warp * r["warps"]), sm["shared"] // (r["shared"] + 1024),
               sm["warps"] // r["warps"])
    return dict(programs_per_sm=ctas, occupancy=round(ctas * r["warps"] / sm["warps"], 3))


def findings(r: dict, kernel, flags: dict, config: triton.Config, arch: int) -> list[str]:
    """What a shipped (pinned) variant must not show: spills (a stack frame or local loads/stores),
    compute-bound tiles without warp-group MMA, non-gathered compute-bound tiles without TMA loads,
    memory-bound (decode) tiles without asynchronous copies (cp.async or TMA) feeding the K loop."""
    out = []
    if r["stack"] or r["spill_stores"] or r["spill_loads"]:
        out.append(f"spills (stack {r['stack']} B, {r['spill_stores']} STL, {r['spill_loads']} LDL)")
    if kernel is tg._reduce_splits_kernel or arch < 90:
        return out
    compute = config.kwargs["BLOCK_M"] >= 64
    if compute and not r["hgmma"]:
        out.append("no HGMMA in a compute-bound tile")
    gathered = flags.get("GATHER") or flags.get("GATHER_A")
    if kernel is tg._rows_kernel and compute and not gathered and flags.get("WQ", 0) != 2 and not r["tma_loads"]:
        out.append("no TMA load (UTMALDG) in a non-gathered compute-bound tile")
    if not compute and not (r["async_copies"] or r["tma_loads"]):
        out.append("no asynchronous copies in a memory-bound tile")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100, 80: A100)")
    p.add_argument("--all-dtypes", action="store_true", help="also fp16 and fp32 (default: bf16 only)")
    p.add_argument("--json", type=pathlib.Path, help="write the results here")
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="compiles in parallel (default: one per core)")
    p.add_argument("--quick", action="store_true", help="per mode, only the configs the runtime launches "
                   "(kernels/pinned_configs.py; what the test suite runs)")
    args = p.parse_args(argv)
    if tg.INTERPRET:
        raise SystemExit("check_compile: TRITON_INTERPRET is set; run this in a fresh process")
    dtypes = ["bf16", "fp16", "fp32"] if args.all_dtypes else ["bf16"]
    reduce_config = [triton.Config(dict(BLOCK_M=16, BLOCK_N=128), num_warps=4, num_stages=1)]  # tg._launch_rows
    kernels = {jit_of(k).fn.__name__: k for k in (tg._rows_kernel, tg._dw_kernel, tg._reduce_splits_kernel)}
    plan = []  # (kernel name, mode, flags, config, shipped, dtype), in report order
    for kernel, modes, configs in ((tg._rows_kernel, ROW_MODES, tg._row_configs()),
                                   (tg._dw_kernel, DW_MODES, tg._dw_configs()),
                                   (tg._reduce_splits_kernel, REDUCE_MODES, reduce_config)):
        for mode, flags in modes.items():
            shipped = pinned_configs(kernel, flags, args.arch) if kernel is not tg._reduce_splits_kernel else reduce_config
            kept = shipped if args.quick else [c for c in configs if kernel is not tg._rows_kernel
                                               or kept_by_autotuner(c, flags, args.arch)]
            if flags.get("EPI") == tg.EPI_PARTIAL and kernel is tg._rows_kernel:
                kept = [c for c in kept if c.kwargs["BLOCK_M"] <= 32]  # split-K is for decode only
            if flags.get("W_TYPE") == "fp8e4nv" and args.arch < 89:
                print(f"skip {mode:<32} fp8 needs sm_89 or newer")
                continue
            for config in kept:
                is_shipped = any(config.kwargs == c.kwargs and config.num_warps == c.num_warps
                                 and config.num_stages == c.num_stages for c in shipped)
                plan += [(jit_of(kernel).fn.__name__, mode, flags, config, is_shipped, dtype) for dtype in dtypes]
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:  # ptxas is single-threaded
        compiled = pool.map(compile_named, [p[0] for p in plan], [p[2] for p in plan],
                            [(p[3].kwargs, p[3].num_stages, p[3].num_warps) for p in plan], [p[5] for p in plan],
                            [args.arch] * len(plan))
        results, failed = [], 0
        for (name, mode, flags, config, is_shipped, dtype), r in zip(plan, compiled):
            kernel = kernels[name]
            found = []
            if not r["ok"]:
                status = "FAIL"
            elif r["shared"] > SHARED_LIMIT.get(args.arch, SHARED_LIMIT[80]):
                status = "FAIL" if is_shipped else "skip"  # the autotuner drops it (OutOfResources)
                found = ["exceeds shared memory"]
            else:
                r.update(occupancy(r, args.arch))
                found = findings(r, kernel, flags, config, args.arch)
                status = "FAIL" if found and is_shipped else "note" if found else "ok"
            failed += status == "FAIL"
            cfg = label(config)
            results.append(dict(kernel=name, mode=mode, config=cfg, dtype=dtype, **r, shipped=is_shipped,
                                findings=found, status=status))
            row = results[-1]
            detail = row.get("error") or (f"shared {row['shared'] / 1024:6.1f} KiB  regs {row['registers']:3}  "
                                          f"occ {row.get('occupancy', 0):.2f}  stack {row['stack']:4}  "
                                          f"HGMMA {row['hgmma']:2}  TMA {row['tma_loads']:2}  "
                                          f"cp.async {row['async_copies']:2}")
            print(f"{status:4} {'*' if is_shipped else ' '} {mode[:40]:<40} {cfg:<18} {dtype:<4} {detail}"
                  + (f"  [{'; '.join(found)}]" if found else ""), flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(arch=args.arch, triton=triton.__version__, results=results), indent=1))
    shipped = [r for r in results if r["shipped"]]
    print(f"sm_{args.arch}: {len(results)} variants, {sum(r['status'] == 'FAIL' for r in results)} failing; "
          f"shipped (* = pinned, what the runtime launches): {len(shipped)}, of which "
          f"{sum(bool(r['stack']) for r in shipped if r['ok'])} spill")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
