"""The training recipe's full-scale figures (moe/estimates/recipe.py): the ramp to 60M tokens a step,
and Young/Daly's checkpoint interval held against a numerical optimum of the failure model."""

import math

import pytest

from moe.config import load_config
from moe.estimates.recipe import GPU_MTBF_HOURS, leak_ramp, lost_fraction, ramp_rows, young_daly_s


def test_the_leak_ramp_reaches_60m_tokens_and_counts_its_steps():
    ramp = leak_ramp()
    assert 59.9e6 < ramp.batch_size * ramp.seq_len <= 60e6 and ramp.ramp_start_batch * 8 == ramp.batch_size
    rows = ramp_rows(load_config("gpt4"), ramp)
    sizes = [int(r[0].split(" x ")[0].replace(",", "")) for r in rows[:-1]]
    assert sizes == [ramp.ramp_start_batch * i for i in range(1, 9)]
    steps = [int(r[3].replace(",", "")) for r in rows[:-1]]
    for b, n in zip(sizes[:-1], steps[:-1]):  # each of the 7 ramp sizes holds 1T / 7 tokens, to a step
        assert abs(n * b * 8192 - 1e12 / 7) < 2 * ramp.batch_size * 8192  # the boundary steps overshoot
    assert rows[0][2] == "937 k"  # 915 x 8192 tokens x top-2 / 16 experts
    assert int(rows[-1][3].split()[0].replace(",", "")) == sum(steps)
    run = ramp.max_steps * ramp.batch_size * 8192  # the leak's 13T tokens, in whole 60M steps
    assert 13e12 - 60e6 < run <= sum(n * b for n, b in zip(steps, sizes)) * 8192 < run + 60e6


def test_daly_interval_is_near_the_optimum_of_the_failure_model():
    mtbf = GPU_MTBF_HOURS * 3600 / 25_000
    for c in (60, 300, 900):
        grid = [c + i * 1.0 for i in range(1, 20_000)]
        best = min(grid, key=lambda t: lost_fraction(t, c, 600, mtbf))  # the model's optimum, numerically
        assert young_daly_s(c, mtbf) == pytest.approx(best, rel=0.03)
        assert young_daly_s(c, mtbf) == pytest.approx(math.sqrt(2 * c * mtbf), rel=0.12 + c / mtbf)  # Young
    assert lost_fraction(1e9, 60, 0, 1e12) == pytest.approx(0, abs=1e-2)  # failures that never come
    assert young_daly_s(7200, 3000) == 3000  # a checkpoint dearer than 2 MTBF: one per MTBF
