"""Compile every variant of the Triton kernels for a GPU architecture, without a GPU, and report how
each compiled: shared memory per program, whether the K loop is software-pipelined (asynchronous
copies into shared memory), and whether the dots use Hopper's warp-group MMA (wgmma).

    python scripts/check_compile.py                  # sm_90 (H100), every autotune config of every mode
    python scripts/check_compile.py --arch 80 --json out.json

It specializes arguments the way Triton's JIT does at a real launch on contiguous tensors: unit
strides become the constant 1, pointers and the other integers are taken as multiples of 16. (Without
that the compiler cannot prove the loads contiguous and does not pipeline them.) Needs triton's
bundled ptxas, no GPU and no CUDA driver. Exits 1 if a variant fails to compile, overflows shared
memory, or (on sm_90) a compute-bound variant is not pipelined.
"""

from __future__ import annotations

import argparse
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
FP32_PTRS = {"scale_ptr", "dscale_ptr", "ws_ptr", "ws2_ptr"}
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
    "down, weighted scatter, int8 W": dict(SCALE=True, SCATTER=True, WQ=1, W_TYPE="i8"),
    "down, weighted scatter, fp8 W": dict(SCALE=True, SCATTER=True, WQ=1, W_TYPE="fp8e4nv"),
    "up + gate + SwiGLU, int4 W": dict(GATHER=True, DUAL=True, EPI=tg.EPI_SWIGLU, WQ=2, W_TYPE="u8"),
    "up + GELU, int4 W": dict(GATHER=True, EPI=tg.EPI_GELU, WQ=2, W_TYPE="u8"),
    "down, weighted scatter, int4 W": dict(SCALE=True, SCATTER=True, WQ=2, W_TYPE="u8"),
}
DW_MODES = {
    "dW plain": dict(),
    "dW gathered A": dict(GATHER_A=True),
    "dW gathered, scaled B": dict(GATHER_B=True, SCALE_B=True),
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
    if fn is tg._rows_kernel.fn:
        consts = {**dict(GATHER=False, DUAL=False, PAIR2=False, EPI=tg.EPI_STORE, SAVE_PRE=False, SCALE=False,
                         SCATTER=False, E_POW2=16, WQ=0, QGROUP=128), **consts}
        # as the runtime decides (tg._use_tma, on the contiguous layouts assumed here): TMA from sm_90 on
        consts.update(TMA=arch >= 90 and consts["WQ"] != 2, W_T=transposed)
    else:
        consts = {**dict(GATHER_A=False, GATHER_B=False, SCALE_B=False), **consts}
    consts.update(DOT_FP32=False, PRECISION="ieee")  # what the runtime passes (tg._dot_args; TF32 is off by default)
    units = UNIT_STRIDES - {"stride_wn"} | {"stride_wk"} if transposed else UNIT_STRIDES
    consts.update({n: 1 for n in units if n in fn.arg_names})
    sig, attrs = signature(fn, consts, dtype, set(), w_type)
    start = time.time()
    try:
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                           target=GPUTarget("cuda", arch, 32),
                           options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    except Exception as e:  # a compile error of any kind is the finding
        return dict(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    ttgir = k.asm["ttgir"]
    return dict(ok=True, seconds=round(time.time() - start, 1), shared=k.metadata.shared,
                pipelined="async_copy" in ttgir or "async_tma" in ttgir, wgmma="warp_group_dot" in ttgir,
                **machine_code(k.asm["cubin"]))


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


def pinned_configs(kernel, flags: dict) -> list[triton.Config]:
    """The configurations kernels/pinned_configs.py makes the runtime launch for this mode."""
    from kernels.pinned_configs import DW, ROWS

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
    return tg.fits(config, flags, SHARED_LIMIT.get(arch, SHARED_LIMIT[80])) if "BLOCK_N" in config.kwargs and \
        "GROUP_M" in config.kwargs else True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100, 80: A100)")
    p.add_argument("--all-dtypes", action="store_true", help="also fp16 and fp32 (default: bf16 only)")
    p.add_argument("--json", type=pathlib.Path, help="write the results here")
    p.add_argument("--quick", action="store_true", help="per mode, only the configs the runtime launches "
                   "(kernels/pinned_configs.py; what the test suite runs)")
    args = p.parse_args(argv)
    if tg.INTERPRET:
        raise SystemExit("check_compile: TRITON_INTERPRET is set; run this in a fresh process")
    dtypes = ["bf16", "fp16", "fp32"] if args.all_dtypes else ["bf16"]
    results, failed = [], 0
    for kernel, modes, configs in ((tg._rows_kernel, ROW_MODES, tg._row_configs()),
                                   (tg._dw_kernel, DW_MODES, tg._dw_configs())):
        for mode, flags in modes.items():
            kept = [c for c in configs if kept_by_autotuner(c, flags, args.arch)]
            if args.quick:  # the configs the runtime launches: kernels/pinned_configs.py (else one of each class)
                kept = pinned_configs(kernel, flags) or list({c.kwargs["BLOCK_M"] >= 64: c for c in reversed(kept)}.values())
            if flags.get("W_TYPE") == "fp8e4nv" and args.arch < 89:
                print(f"skip {mode:<32} fp8 needs sm_89 or newer")
                continue
            for config in kept:
                for dtype in dtypes:
                    r = compile_variant(kernel.fn, flags, config, dtype, args.arch)
                    compute_bound = config.kwargs["BLOCK_M"] >= 64
                    bad = (not r["ok"] or r["shared"] > SHARED_LIMIT.get(args.arch, 101376)
                           or (args.arch == 90 and compute_bound and not r["pipelined"]))
                    failed += bad
                    cfg = "x".join(str(config.kwargs[b]) for b in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
                    cfg += f" s{config.num_stages} w{config.num_warps}"
                    results.append(dict(kernel=kernel.fn.__name__, mode=mode, config=cfg, dtype=dtype, **r,
                                        status="FAIL" if bad else "ok"))
                    row = results[-1]
                    detail = row.get("error") or (f"shared {row['shared'] / 1024:6.1f} KiB  pipelined "
                                                  f"{row['pipelined']!s:5}  wgmma {row['wgmma']!s:5}  "
                                                  f"regs {row['registers']}  stack {row['stack']:5}  "
                                                  f"STL/LDL {row['spill_stores']}/{row['spill_loads']}  "
                                                  f"HGMMA {row['hgmma']}")
                    print(f"{row['status']:4} {mode:<32} {cfg:<18} {dtype:<5} {detail}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(arch=args.arch, triton=triton.__version__, results=results), indent=1))
    print(f"{len(results) - failed} of {len(results)} variants compiled cleanly for sm_{args.arch}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
