"""Compile every variant of the Triton kernels for a GPU architecture, without a GPU, and hold the
machine code to account: per variant, shared memory, registers per thread, occupancy, the stack
frame and local stores/loads (spills), and the instructions that matter, read back from the SASS
with the cuobjdump shipped in the triton wheel: HGMMA (Hopper's warp-group MMA), UTMALDG (TMA
loads), LDGSTS (asynchronous copies).

    python -m kernels.tuning.check_compile --quick     # what CI runs: the configs the runtime launches
    python -m kernels.tuning.check_compile --json bench/results/compile-sm90/check_compile.json   # every config
    python -m kernels.tuning.check_compile --arch 80   # the pre-Hopper path (no TMA, no HGMMA)

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
import re
import subprocess
import sys
import tempfile
import time

os.environ["TRITON_INTERPRET"] = "0"  # before the kernels load: we want the compiler, not the interpreter

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import pinned_configs as pinned_tables  # noqa: E402
from kernels.triton import configs  # noqa: E402
from kernels.triton.jit import dw_kernel, reduce_splits_kernel, rows_kernel  # noqa: E402
from kernels.triton.modes import EPI_PARTIAL, EPI_STORE, WQ_INT4, WQ_NONE  # noqa: E402
from kernels.tuning.variants import (
    DW_KERNEL,
    DW_MODES,
    REDUCE_KERNEL,
    REDUCE_MODES,
    ROW_MODES,  # noqa: E402
    ROWS_KERNEL,
    label,
    variant_key,
)

SHARED_LIMIT = configs.SHARED_LIMIT  # bytes of shared memory one program may use, by compute capability
JIT = {ROWS_KERNEL: rows_kernel.fn, DW_KERNEL: dw_kernel.fn, REDUCE_KERNEL: reduce_splits_kernel}  # by report name
UNIT_STRIDES = {"stride_ak", "stride_wn", "stride_on", "stride_bn", "stride_dn"}  # 1 on contiguous row-major tensors
INDEX_PTRS = {"src_ptr", "dst_ptr", "offsets_ptr", "a_src_ptr", "b_src_ptr"}
FP32_PTRS = {"scale_ptr", "dscale_ptr", "ws_ptr", "ws2_ptr", "part_ptr", "part2_ptr"}
W_PTRS = {"w_ptr", "w2_ptr"}  # a quantized variant's weights: W_TYPE (kernels.tuning.variants)
CUOBJDUMP = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
SM = {90: dict(regs=65536, shared=233472, warps=64), 80: dict(regs=65536, shared=167936, warps=64)}  # per SM


def signature(fn, consts: dict, dtype: str, dynamic_unit: set[str], w_type: str | None = None) -> tuple[dict, dict]:
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = (
                "*i32"
                if name in INDEX_PTRS
                else "*fp32"
                if name in FP32_PTRS
                else f"*{w_type}"
                if w_type and name in W_PTRS
                else f"*{dtype}"
            )
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "i32"
            if name not in dynamic_unit:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def launch_constants(kernel: str, flags: dict, config: triton.Config, arch: int) -> dict:
    """The compile-time arguments a launch of this variant passes (kernels/triton/launch.py), with the
    unit strides of contiguous tensors as constants, as the JIT specializes them."""
    fn = JIT[kernel]
    flags = dict(flags)
    transposed = flags.pop("TRANSPOSED_W", False)
    flags.pop("W_TYPE", None)
    consts = {**flags, **config.kwargs}
    if kernel == REDUCE_KERNEL:
        consts = {**dict(DUAL=False, SCALE=False, SCATTER=False, SPLIT_K=8), **consts}
    elif kernel == ROWS_KERNEL:
        consts = {
            **dict(
                GATHER=False,
                DUAL=False,
                PAIR2=False,
                EPI=EPI_STORE,
                SAVE_PRE=False,
                SCALE=False,
                SCATTER=False,
                E_POW2=16,
                WQ=WQ_NONE,
                QGROUP=128,
            ),
            **consts,
        }
        # as the runtime decides (launch.use_tma, on the contiguous layouts assumed here): TMA from sm_90 on
        tma = arch >= 90 and bool(consts["WQ"] != WQ_INT4)
        consts.update(TMA=tma, TMA_STORE=tma, W_T=transposed, SPLIT_K=1)
    else:
        consts = {**dict(GATHER_A=False, GATHER_B=False, SCALE_A=False), **consts}
    if kernel != REDUCE_KERNEL:
        consts.update(DOT_FP32=False, PRECISION="ieee")  # what the runtime passes (TF32 is off by default)
    units = UNIT_STRIDES - {"stride_wn"} | {"stride_wk"} if transposed else UNIT_STRIDES
    consts.update({n: 1 for n in units if n in fn.arg_names})
    return {k: v.value if isinstance(v, tl.constexpr) else v for k, v in consts.items()}  # plain, as launched


def compile_variant(kernel: str, flags: dict, config: triton.Config, dtype: str, arch: int) -> dict:
    fn = JIT[kernel]
    consts = launch_constants(kernel, flags, config, arch)
    sig, attrs = signature(fn, consts, dtype, set(), flags.get("W_TYPE"))
    if kernel == ROWS_KERNEL and consts.get("EPI") == EPI_PARTIAL:
        sig.update(out_ptr="*fp32", out2_ptr="*fp32")  # split-K's fp32 workspace
    start = time.time()
    try:
        k = triton.compile(
            ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
            target=GPUTarget("cuda", arch, 32),
            options=dict(num_warps=config.num_warps, num_stages=config.num_stages),
        )
    except Exception as e:  # a compile error of any kind is the finding
        return dict(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    ttgir = k.asm["ttgir"]
    return dict(
        ok=True,
        seconds=round(time.time() - start, 1),
        shared=k.metadata.shared,
        warps=config.num_warps,
        pipelined="async_copy" in ttgir or "async_tma" in ttgir,
        wgmma="warp_group_dot" in ttgir,
        **machine_code(k.asm["cubin"]),
    )


def compile_named(kernel: str, flags: dict, config: tuple, dtype: str, arch: int) -> dict:
    """compile_variant for a worker process: the config as (kwargs, stages, warps)."""
    kwargs, stages, warps = config
    return compile_variant(kernel, flags, triton.Config(kwargs, num_stages=stages, num_warps=warps), dtype, arch)


def machine_code(cubin: bytes) -> dict:
    """What the SASS says (cuobjdump, shipped in the triton wheel): registers per thread, the stack
    frame (where spilled registers go), local stores/loads (the spills themselves), HGMMA instructions."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([str(CUOBJDUMP), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([str(CUOBJDUMP), "--dump-sass", f.name], capture_output=True, text=True).stdout
    field = lambda name: int(m.group(1)) if (m := re.search(rf"{name}:(\d+)", usage)) else None  # noqa: E731
    count = lambda op: len(re.findall(rf"\b{op}\b", sass))  # noqa: E731
    return dict(
        registers=field("REG"),
        stack=field("STACK"),
        spill_stores=count("STL"),
        spill_loads=count("LDL"),
        hgmma=count("HGMMA"),
        tma_loads=count("UTMALDG"),
        async_copies=count("LDGSTS"),
    )


def shipped_configs(kernel: str, flags: dict, arch: int) -> list[triton.Config]:
    """The configurations kernels/pinned_configs.py makes the runtime launch for this mode on `arch`."""
    if kernel == REDUCE_KERNEL:
        return [configs.reduce_config()]
    table = (pinned_tables.ROWS if kernel == ROWS_KERNEL else pinned_tables.DW).get(arch, {})
    out = []
    for meta in table.get(variant_key(kernel, flags), {}).values():
        meta = dict(meta)
        stages, warps = meta.pop("num_stages"), meta.pop("num_warps")
        out.append(triton.Config(meta, num_stages=stages, num_warps=warps))
    return out


def kept_by_autotuner(config: triton.Config, flags: dict, arch: int) -> bool:
    """The autotuner's pruning that does not depend on the row count (configs.fits)."""
    return configs.fits(config, flags, SHARED_LIMIT.get(arch, SHARED_LIMIT[80]))


def occupancy(r: dict, arch: int) -> dict:
    """Programs resident per SM and the fraction of warp slots they fill, from registers (allocated
    per warp in units of 256), shared memory (plus 1 KiB the system reserves per program) and warps."""
    sm = SM.get(arch, SM[80])
    regs_per_warp = -(-r["registers"] * 32 // 256) * 256
    ctas = min(
        sm["regs"] // (regs_per_warp * r["warps"]), sm["shared"] // (r["shared"] + 1024), sm["warps"] // r["warps"]
    )
    return dict(programs_per_sm=ctas, occupancy=round(ctas * r["warps"] / sm["warps"], 3))


def findings(r: dict, kernel: str, flags: dict, config: triton.Config, arch: int) -> list[str]:
    """What a shipped (pinned) variant must not show: spills (a stack frame or local loads/stores),
    compute-bound tiles without warp-group MMA, non-gathered compute-bound tiles without TMA loads,
    memory-bound (decode) tiles without asynchronous copies (cp.async or TMA) feeding the K loop."""
    out = []
    if r["stack"] or r["spill_stores"] or r["spill_loads"]:
        out.append(f"spills (stack {r['stack']} B, {r['spill_stores']} STL, {r['spill_loads']} LDL)")
    if kernel == REDUCE_KERNEL or arch < 90:
        return out
    compute = config.kwargs["BLOCK_M"] >= 64
    if compute and not r["hgmma"]:
        out.append("no HGMMA in a compute-bound tile")
    gathered = flags.get("GATHER") or flags.get("GATHER_A")
    int4 = flags.get("WQ", WQ_NONE) == WQ_INT4
    if kernel == ROWS_KERNEL and compute and not gathered and not int4 and not r["tma_loads"]:
        out.append("no TMA load (UTMALDG) in a non-gathered compute-bound tile")
    if not compute and not (r["async_copies"] or r["tma_loads"]):
        out.append("no asynchronous copies in a memory-bound tile")
    return out


def plan_variants(arch: int, quick: bool, dtypes: list[str]) -> list[tuple]:
    """(kernel, mode, flags, config, shipped, dtype) for every variant to compile, in report order."""
    plan = []
    for kernel, modes, candidates in (
        (ROWS_KERNEL, ROW_MODES, configs.row_configs()),
        (DW_KERNEL, DW_MODES, configs.dw_configs()),
        (REDUCE_KERNEL, REDUCE_MODES, [configs.reduce_config()]),
    ):
        for mode, flags in modes.items():
            shipped = shipped_configs(kernel, flags, arch)
            kept = (
                shipped
                if quick
                else [c for c in candidates if kernel != ROWS_KERNEL or kept_by_autotuner(c, flags, arch)]
            )
            if kernel == ROWS_KERNEL and flags.get("EPI") == EPI_PARTIAL:
                kept = [c for c in kept if c.kwargs["BLOCK_M"] <= 32]  # split-K is for decode only
            if flags.get("W_TYPE") == "fp8e4nv" and arch < 89:
                print(f"skip {mode:<32} fp8 needs sm_89 or newer")
                continue
            for config in kept:
                is_shipped = any(
                    config.kwargs == c.kwargs and config.num_warps == c.num_warps and config.num_stages == c.num_stages
                    for c in shipped
                )
                plan += [(kernel, mode, flags, config, is_shipped, dtype) for dtype in dtypes]
    return plan


def judge(r: dict, kernel: str, flags: dict, config: triton.Config, is_shipped: bool, arch: int) -> tuple:
    """(status, findings) of one compiled variant: FAIL (a shipped variant with findings, or no
    compile), skip (over shared memory: the autotuner drops it), note (findings, not shipped), ok."""
    if not r["ok"]:
        return "FAIL", []
    if r["shared"] > SHARED_LIMIT.get(arch, SHARED_LIMIT[80]):
        return ("FAIL" if is_shipped else "skip"), ["exceeds shared memory"]  # (the autotuner: OutOfResources)
    r.update(occupancy(r, arch))
    found = findings(r, kernel, flags, config, arch)
    return ("FAIL" if found and is_shipped else "note" if found else "ok"), found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100, 80: A100)")
    p.add_argument("--all-dtypes", action="store_true", help="also fp16 and fp32 (default: bf16 only)")
    p.add_argument("--json", type=pathlib.Path, help="write the results here")
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="compiles in parallel (default: one per core)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="per mode, only the configs the runtime launches (kernels/pinned_configs.py; what the test suite runs)",
    )
    args = p.parse_args(argv)
    if configs.INTERPRET:
        raise SystemExit("check_compile: TRITON_INTERPRET is set; run this in a fresh process")
    plan = plan_variants(args.arch, args.quick, ["bf16", "fp16", "fp32"] if args.all_dtypes else ["bf16"])
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:  # ptxas is single-threaded
        compiled = pool.map(
            compile_named,
            [p[0] for p in plan],
            [p[2] for p in plan],
            [(p[3].kwargs, p[3].num_stages, p[3].num_warps) for p in plan],
            [p[5] for p in plan],
            [args.arch] * len(plan),
        )
        results = []
        for (kernel, mode, flags, config, is_shipped, dtype), r in zip(plan, compiled):
            status, found = judge(r, kernel, flags, config, is_shipped, args.arch)
            cfg = label(config)
            results.append(
                dict(
                    kernel=kernel,
                    mode=mode,
                    config=cfg,
                    dtype=dtype,
                    **r,
                    shipped=is_shipped,
                    findings=found,
                    status=status,
                )
            )
            row = results[-1]
            detail = row.get("error") or (
                f"shared {row['shared'] / 1024:6.1f} KiB  regs {row['registers']:3}  "
                f"occ {row.get('occupancy', 0):.2f}  stack {row['stack']:4}  "
                f"HGMMA {row['hgmma']:2}  TMA {row['tma_loads']:2}  "
                f"cp.async {row['async_copies']:2}"
            )
            print(
                f"{status:4} {'*' if is_shipped else ' '} {mode[:40]:<40} {cfg:<18} {dtype:<4} {detail}"
                + (f"  [{'; '.join(found)}]" if found else ""),
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(dict(arch=args.arch, triton=triton.__version__, results=results), indent=1))
    shipped = [r for r in results if r["shipped"]]
    failed = sum(r["status"] == "FAIL" for r in results)
    print(
        f"sm_{args.arch}: {len(results)} variants, {failed} failing; "
        f"shipped (* = pinned, what the runtime launches): {len(shipped)}, of which "
        f"{sum(bool(r['stack']) for r in shipped if r['ok'])} spill"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
