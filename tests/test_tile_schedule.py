"""The rows kernel's persistent tile schedule, replayed in pure Python at sizes the interpreter
cannot reach, and the tile-config invariants the backward epilogue relies on.

The replay repeats the kernel's index arithmetic (kernels/triton_grouped_mm.py, _rows_kernel: the
tile list from the offsets, the GROUP_M swizzle, the expert of a row tile) and asserts that the
programs together visit every (row tile, column tile) exactly once, that each row tile lies inside
one expert, and that the row tiles of the experts cover every row once."""

import math
import random

import pytest

import kernels.triton_grouped_mm as tg


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
    [5], [0, 0, 7], [1, 0, 1, 0, 1], [3, 3, 3], [0] * 6 + [1],
    [100_000, 0, 17, 129, 0, 3, 1, 64],
]


@pytest.mark.parametrize("counts", CASES + [[random.Random(s).choice([0, 1, 7, 40, 300]) for _ in range(s)]
                                            for s in (5, 16, 33)])
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
    """Every shipped BLOCK_N (the GPU list, not just the interpreter's) is a multiple of DSCALE_BLOCK
    and at most MAX_BLOCK_N; a wider one is refused by name."""
    monkeypatch.setattr(tg, "INTERPRET", False)
    configs = tg._row_configs()
    assert len(configs) > 1
    tg._check_block_n(configs)
    with pytest.raises(ValueError, match=r"BLOCK_N \[512\]"):
        tg._check_block_n([tg._config(64, 512, 64, 3, 8, GROUP_M=8)])
