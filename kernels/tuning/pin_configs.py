"""Choose the launch configuration every kernel mode uses by default and write kernels/pinned_configs.py.

    python -m kernels.tuning.check_compile --json bench/results/compile-sm90/check_compile.json   # the evidence
    python -m kernels.tuning.check_compile --arch 80 --json bench/results/compile-sm80/check_compile.json
    python -m kernels.tuning.pin_configs                                                          # the tables

Until a GPU times them, the choice rests on the compiled code alone (check_compile's reports, read
back from the SASS), per architecture (sm_90: Hopper and later; sm_80: the rest), per mode and per
row class (memory-bound: BLOCK_M <= 32, the decode tiles; compute-bound: the rest), among the configs
the autotuner's pruning keeps (K and N do not change the compiled code, so they are not keys until
measured times say they matter):
  1. it fits the architecture's shared memory;
  2. the fewest findings (check_compile.findings: spills, no HGMMA, no TMA, no asynchronous copies),
     then the fewest spilled bytes (the stack frame);
  3. warp-group MMA (HGMMA) for compute-bound tiles;
  4. the largest output tile (BLOCK_M x BLOCK_N), then the deepest K step.
With a GPU, kernels.tuning.tune_configs times the clean candidates and writes the table the
measurements choose (MOE_AUTOTUNE=1 instead runs Triton's autotuner at every new shape, in the middle
of a run).
"""

from __future__ import annotations

import argparse
import json
import pathlib

from kernels.triton.configs import dw_configs, row_configs
from kernels.triton.modes import EPI_PARTIAL
from kernels.tuning.variants import DW_KERNEL, DW_MODES, ROW_MODES, ROWS_KERNEL, label, memory_tile, variant_key

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEADER = [
    '"""The launch configuration of every kernel mode, per architecture and row class: written by',
    "kernels/tuning/pin_configs.py from the compile reports (the compiled code's evidence: fits shared",
    "memory, no findings, HGMMA, largest tile). Do not edit by hand.",
]


def meta_of(kernel: str, name: str) -> dict:
    """The launch meta-parameters of the candidate config the report calls `name` (the GPU's list)."""
    candidates = row_configs(interpret=False) if kernel == ROWS_KERNEL else dw_configs(interpret=False)
    c = next(c for c in candidates if label(c) == name)
    return dict(c.kwargs, num_stages=c.num_stages, num_warps=c.num_warps)


def choose(results: list[dict]) -> tuple[dict, dict, list[str]]:
    """Per mode key and row class, the config whose worst compiled variant over the modes sharing that
    key (int8 and fp8 weights share one) ranks best."""
    rows, dw, notes = {}, {}, []
    for modes, table, kernel in ((ROW_MODES, rows, ROWS_KERNEL), (DW_MODES, dw, DW_KERNEL)):
        by_key = {}
        reported = {r["mode"] for r in results}
        for mode, flags in modes.items():
            if mode not in reported:  # not compiled for this architecture (fp8 before sm_89)
                continue
            by_key.setdefault(variant_key(kernel, flags), (flags, []))[1].append(mode)
        for key, (flags, names) in by_key.items():
            bounds = (
                ("compute",)
                if kernel == DW_KERNEL
                else ("memory",)
                if flags.get("EPI") == EPI_PARTIAL
                else ("memory", "compute")
            )
            for bound in bounds:
                variants = {}  # config -> its compiled variants over the modes sharing the key
                for r in results:
                    if (
                        r["kernel"] == kernel
                        and r["mode"] in names
                        and r["dtype"] == "bf16"
                        and (kernel == DW_KERNEL or memory_tile(r["config"]) == (bound == "memory"))
                    ):
                        variants.setdefault(r["config"], []).append(r)
                fits = {
                    c: rs
                    for c, rs in variants.items()
                    if len(rs) == len(names) and all(r["ok"] and r["status"] != "skip" for r in rs)
                }
                if not fits:
                    notes.append(
                        f"{' / '.join(names)} ({bound}): no config fits; the runtime falls back to the first candidate"
                    )
                    continue

                def rank(item):
                    config, rs = item
                    c = meta_of(kernel, config)
                    return (
                        max(len(r["findings"]) for r in rs),
                        max(r["stack"] for r in rs),
                        not all(r["hgmma"] for r in rs),
                        -c["BLOCK_M"] * c["BLOCK_N"],
                        -c["BLOCK_K"],
                    )

                config, rs = min(fits.items(), key=rank)
                table.setdefault(key, {})[bound] = meta_of(kernel, config)
                found = sorted({f for r in rs for f in r["findings"]})
                notes.append(
                    f"{' / '.join(names)} ({bound}): {config}, stack {max(r['stack'] for r in rs)} B, "
                    f"HGMMA {min(r['hgmma'] for r in rs)}, TMA {min(r['tma_loads'] for r in rs)}, shared "
                    f"{max(r['shared'] for r in rs) / 1024:.0f} KiB" + (f", {'; '.join(found)}" if found else "")
                )
    return rows, dw, notes


def render(tables: dict, notes: list[str]) -> str:
    """kernels/pinned_configs.py's text: the notes in its docstring, then ROWS and DW by architecture."""
    text = [*HEADER, "", *notes, '"""', ""]
    for name, index in (("ROWS", 0), ("DW", 1)):
        text += [f"{name} = {{"]
        for arch, pair in tables.items():
            text += [f"    {arch}: {{"] + [f"        {k!r}: {v!r}," for k, v in pair[index].items()] + ["    },"]
        text += ["}", ""]
    return "\n".join(text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--reports",
        type=pathlib.Path,
        nargs="+",
        default=[ROOT / "bench" / "results" / f"compile-sm{a}" / "check_compile.json" for a in (90, 80)],
    )
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "kernels" / "pinned_configs.py")
    args = p.parse_args(argv)
    tables, notes = {}, []
    for path in args.reports:
        report = json.loads(path.read_text())
        rows, dw, chosen = choose(report["results"])
        tables[report["arch"]] = (rows, dw)
        where = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
        notes += [f"sm_{report['arch']} ({where}, Triton {report['triton']}):"] + [f"  {n}" for n in chosen]
    args.out.write_text(render(tables, notes))
    print("\n".join(notes))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
