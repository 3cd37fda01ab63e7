"""Choose the launch configuration every kernel mode uses by default and write kernels/pinned_configs.py.

    python scripts/check_compile.py --json bench/results/compile-sm90/check_compile.json   # the evidence
    python scripts/pin_configs.py                                                          # the table

Until a GPU times them, the choice rests on the compiled code alone (scripts/check_compile.py's
report, read back from the SASS), per mode and per row class (memory-bound: BLOCK_M <= 32, the
decode tiles; compute-bound: the rest), among the configs the autotuner's pruning keeps:
  1. it fits an A100's shared memory too (163 KiB), so one table serves sm_80 and sm_90;
  2. the fewest spilled bytes (the stack frame);
  3. warp-group MMA (HGMMA) for compute-bound tiles;
  4. the largest output tile (BLOCK_M x BLOCK_N), then the deepest K step.
With a GPU, replace this with measured times (MOE_AUTOTUNE=1 runs Triton's autotuner instead).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
import check_compile as cc  # noqa: E402  (sets TRITON_INTERPRET=0 before triton loads)

import kernels.triton_grouped_mm as tg  # noqa: E402

A100_SHARED = cc.SHARED_LIMIT[80]


def parse(config: str) -> dict:
    tiles, stages, warps = config.split()
    bm, bn, bk = (int(x) for x in tiles.split("x"))
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_stages=int(stages[1:]), num_warps=int(warps[1:]))


def rank(r: dict):
    c = parse(r["config"])
    return (r["stack"], not r["hgmma"], -c["BLOCK_M"] * c["BLOCK_N"], -c["BLOCK_K"])


def choose(results: list[dict]) -> tuple[dict, dict, list[str]]:
    rows, dw, notes = {}, {}, []
    group_m = {c.kwargs["BLOCK_M"]: c.kwargs.get("GROUP_M", 1) for c in tg._row_configs()}
    for modes, table, kernel in ((cc.ROW_MODES, rows, "_rows_kernel"), (cc.DW_MODES, dw, "_dw_kernel")):
        for mode, flags in modes.items():
            flags = {k: v for k, v in flags.items() if k != "W_TYPE"}
            key = tg.mode_key(flags, tg.ROW_FLAGS if kernel == "_rows_kernel" else tg.DW_FLAGS)
            for bound in ("memory", "compute") if kernel == "_rows_kernel" else ("compute",):
                fits = [r for r in results if r["kernel"] == kernel and r["mode"] == mode and r["status"] == "ok"
                        and r["dtype"] == "bf16" and r["shared"] <= A100_SHARED
                        and (kernel == "_dw_kernel" or (parse(r["config"])["BLOCK_M"] <= 32) == (bound == "memory"))]
                if not fits:
                    notes.append(f"{mode} ({bound}): no config fits; the runtime falls back to the first candidate")
                    continue
                best = min(fits, key=rank)
                meta = parse(best["config"])
                if kernel == "_rows_kernel":
                    meta["GROUP_M"] = group_m[meta["BLOCK_M"]]
                table.setdefault(key, {})[bound] = meta
                notes.append(f"{mode} ({bound}): {best['config']}, stack {best['stack']} B, HGMMA {best['hgmma']}, "
                             f"shared {best['shared'] / 1024:.0f} KiB")
    return rows, dw, notes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--report", type=pathlib.Path, default=ROOT / "bench" / "results" / "compile-sm90" / "check_compile.json")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "kernels" / "pinned_configs.py")
    args = p.parse_args()
    report = json.loads(args.report.read_text())
    rows, dw, notes = choose(report["results"])
    text = ['"""The launch configuration of every kernel mode, per row class: written by scripts/pin_configs.py',
            f"from {args.report.relative_to(ROOT)} (sm_{report['arch']}, Triton {report['triton']}; the compiled code's",
            "evidence: fits 163 KiB of shared memory, fewest spilled bytes, HGMMA, largest tile). Do not edit by hand.",
            "", *notes, '"""', "", "ROWS = {"]
    text += [f"    {k!r}: {v!r}," for k, v in rows.items()] + ["}", "", "DW = {"]
    text += [f"    {k!r}: {v!r}," for k, v in dw.items()] + ["}", ""]
    args.out.write_text("\n".join(text))
    print("\n".join(notes))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
