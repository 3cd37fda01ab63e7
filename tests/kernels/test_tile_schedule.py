"""The rows kernel's persistent tile schedule, replayed in pure Python at sizes the interpreter
cannot reach, and the tile-config invariants the backward epilogue relies on.

The replay repeats the kernel's index arithmetic (kernels/triton/jit.py, rows_kernel: the
tile list from the offsets, the GROUP_M swizzle, the expert of a row tile) and asserts that the
programs together visit every (row tile, column tile) exactly once, that each row tile lies inside
one expert, and that the row tiles of the experts cover every row once."""

import math
import random

import pytest

from kernels.triton import configs, launch
from kernels.triton.modes import EPI_PARTIAL


def replay(counts, block_m, block_n, n, group_m, n_programs):
    """{(first row, last row + 1, column tile): visits} as the kernel's programs walk their tiles."""
    ends = [sum(counts[: g + 1]) for g in range(len(counts))]
    starts = [0] + ends[:-1]
    tiles = [math.ceil(c / block_m) for c in counts]
    tile_end = [sum(tiles[: g + 1]) for g in range(len(tiles))]
    n_row_tiles, n_col_tiles = sum(tiles), math.ceil(n / block_n)
    visits = {}
    for pid in range(n_programs):
        for tile in range(pid, n_row_tiles * n_col_tiles, n_programs):
            per_group = group_m * n_col_tiles
            first = (tile // per_group) * group_m
            group_rows = min(n_row_tiles - first, group_m)
            row_tile = first + (tile % per_group) % group_rows
            col_tile = (tile % per_group) // group_rows
            g = sum(te <= row_tile for te in tile_end)
            in_g = tiles[g] - tile_end[g] + row_tile
            lo = starts[g] + in_g * block_m
            hi = min(lo + block_m, ends[g])
            assert starts[g] <= lo < hi <= ends[g], (g, lo, hi)  # inside its expert, never empty
            key = (lo, hi, col_tile)
            visits[key] = visits.get(key, 0) + 1
    return visits


CASES = [  # counts per expert: non-power-of-two E, empty experts, one row, a huge hot expert
    [5],
    [0, 0, 7],
    [1, 0, 1, 0, 1],
    [3, 3, 3],
    [0] * 6 + [1],
    [100_000, 0, 17, 129, 0, 3, 1, 64],
]


@pytest.mark.parametrize(
    "counts", CASES + [[random.Random(s).choice([0, 1, 7, 40, 300]) for _ in range(s)] for s in (5, 16, 33)]
)
@pytest.mark.parametrize("block_m, block_n, group_m", [(16, 64, 1), (128, 256, 8), (64, 128, 8), (16, 32, 2)])
@pytest.mark.parametrize("n, n_programs", [(70, 3), (4096, 132), (256, 1)])
def test_every_tile_is_computed_exactly_once(counts, block_m, block_n, group_m, n, n_programs):
    if sum(counts) == 0:
        return
    visits = replay(counts, block_m, block_n, n, group_m, n_programs)
    assert set(visits.values()) == {1}
    n_col_tiles = math.ceil(n / block_n)
    for col in range(n_col_tiles):  # per column tile, the row ranges partition [0, M)
        spans = sorted((lo, hi) for lo, hi, c in visits if c == col)
        assert spans[0][0] == 0 and spans[-1][1] == sum(counts)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert len(visits) == sum(math.ceil(c / block_m) for c in counts) * n_col_tiles


def test_row_configs_fit_the_backward_epilogue(monkeypatch):
    """Every shipped BLOCK_N (the GPU list, not just the interpreter's) is a multiple of DSCALE_COLS
    and at most MAX_BLOCK_N; a wider one is refused by name."""
    monkeypatch.setattr(configs, "INTERPRET", False)
    candidates = configs.row_configs()
    assert len(candidates) > 1
    configs.check_block_n(candidates)
    with pytest.raises(ValueError, match=r"BLOCK_N \[512\]"):
        configs.check_block_n([configs.config(64, 512, 64, 3, 8, 8)])


def test_every_launch_has_a_pinned_config(monkeypatch):
    """Run every kernel mode the runtime uses (the MLP forward and backward for GELU and SwiGLU, the
    grouped GEMM and its gradients, the quantized forwards) and record the pinned-table lookups: each
    must find a row for its mode and row class, and each pinned config must pass the autotuner's
    pruning and the backward epilogue's BLOCK_N rule."""
    import torch
    from conftest import offsets_from

    import kernels
    from kernels.pinned_configs import DW, ROWS

    seen = []
    real = configs.pinned

    def record(table, key, bound, candidates):
        seen.append((any(table is t for t in DW.values()), key, bound))
        return real(table, key, bound, candidates)

    monkeypatch.setattr(configs, "pinned", record)
    monkeypatch.setattr(launch, "num_programs", lambda index: 64)  # as on a GPU: the small inference launches split K
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(9, 16, generator=g, requires_grad=True), torch.randn(3, 16, 24, generator=g, requires_grad=True)
    kernels.grouped_mm(x, w, offsets_from([4, 0, 5]), backend="triton").sum().backward()
    T, E, D, F_ = 6, 4, 32, 24
    experts = torch.randint(0, E, (T, 2), generator=g)
    weights = torch.rand(T, 2, generator=g)
    for act in ("gelu", "swiglu"):
        ws = [torch.randn(E, D, F_, generator=g, requires_grad=True) for _ in range(2)] + [
            torch.randn(E, F_, D, generator=g, requires_grad=True)
        ]
        xt = torch.randn(T, D, generator=g, requires_grad=True)
        gate = ws[1] if act == "swiglu" else None
        kernels.routed_mlp(
            xt, weights, experts, ws[0], gate, ws[2], activation_name=act, backend="triton"
        ).sum().backward()
        with torch.no_grad():
            kernels.routed_mlp(xt, weights, experts, ws[0], gate, ws[2], activation_name=act, backend="triton")
        for scheme in kernels.SCHEMES:
            q = [kernels.quantize(t, scheme) for t in ws]
            kernels.quantized_mlp(
                xt.detach(),
                weights,
                experts,
                q[0],
                q[1] if gate is not None else None,
                q[2],
                activation_name=act,
                backend="triton",
            )
    assert len({k for _, k, _ in seen}) >= 20
    assert any(f"EPI={int(EPI_PARTIAL)}" in k for _, k, _ in seen)  # split-K's partial pass was looked up
    monkeypatch.setattr(configs, "INTERPRET", False)
    assert set(ROWS) == set(DW) == {80, 90}
    for arch in ROWS:  # every architecture's table has a row for every launch
        missing = sorted(
            f"{'dW' if is_dw else 'rows'} {key} ({bound})"
            for is_dw, key, bound in set(seen)
            if bound not in (DW if is_dw else ROWS)[arch].get(key, {})
        )
        assert not missing, f"sm_{arch}: no pinned config for: " + "; ".join(missing)
        for key, by_bound in ROWS[arch].items():
            flags = {k: int(v) for k, v in (kv.split("=") for kv in key.split())}
            for bound, meta in by_bound.items():
                assert set(meta) == {
                    "BLOCK_M",
                    "BLOCK_N",
                    "BLOCK_K",
                    "GROUP_M",
                    "EPI_SPLIT",
                    "num_warps",
                    "num_stages",
                }, key
                assert (meta["BLOCK_M"] <= 32) == (bound == "memory"), (key, bound, meta)
                config = configs.config(
                    meta["BLOCK_M"],
                    meta["BLOCK_N"],
                    meta["BLOCK_K"],
                    meta["num_stages"],
                    meta["num_warps"],
                    meta["GROUP_M"],
                    meta["EPI_SPLIT"],
                )
                assert configs.fits(config, flags, configs.SHARED_LIMIT[arch]), (arch, key, bound, meta)
                configs.check_block_n([config])
        assert all(
            set(m) == {"BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages"}
            for by_bound in DW[arch].values()
            for m in by_bound.values()
        )


def test_autotuning_is_opt_in_and_gives_the_same_bits(monkeypatch):
    """MOE_AUTOTUNE=1 runs Triton's autotuner (here over the interpreter's one config) instead of the
    pinned table: the same inputs give the same bits either way, and twice in a row."""
    import torch
    from conftest import offsets_from

    import kernels

    g = torch.Generator().manual_seed(1)
    x, w, offsets = torch.randn(11, 20, generator=g), torch.randn(3, 20, 12, generator=g), offsets_from([5, 0, 6])
    pinned = kernels.grouped_mm(x, w, offsets, backend="triton")
    assert torch.equal(pinned, kernels.grouped_mm(x, w, offsets, backend="triton"))
    monkeypatch.setattr(configs, "AUTOTUNE", True)
    assert torch.equal(pinned, kernels.grouped_mm(x, w, offsets, backend="triton"))


def test_tuning_script_covers_every_pinned_row(tmp_path):
    """kernels.tuning.tune_configs (the GPU's way to choose the pinned configs) runs its whole plumbing
    through the interpreter: every mode key and row class of the shipped sm_90 table is launched with
    each candidate's meta-parameters forced, timed, and gets a row in the table it writes."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    from kernels.pinned_configs import ROWS

    root = pathlib.Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "kernels.tuning.tune_configs", "--interpret", "--reps", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    namespace = {}
    exec((tmp_path / "tuned_configs.py").read_text(), namespace)
    tuned = namespace["ROWS"]
    assert {(k, b) for k, v in tuned.items() for b in v} == {(k, b) for k, v in ROWS[90].items() for b in v}
    timings = json.loads((tmp_path / "tuned_configs.json").read_text())["timings"]
    assert timings and all(t["ms"] > 0 for t in timings)
