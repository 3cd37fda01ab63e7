"""bench.vs_transformers at a tiny scale: both sides run the same exported weights, and every greedy
sequence of transformers' two ways equals ours token for token (the exactness the timing rests on)."""

import json

import pytest

pytest.importorskip("transformers")


def test_the_comparison_runs_and_agrees_with_transformers(tmp_path):
    from bench import vs_transformers

    vs_transformers.main(
        ["--widths", "32", "--rounds", "1", "--prompts", "3", "--prompt-len", "5", "--new", "6", "--out", str(tmp_path)]
    )
    saved = json.loads((tmp_path / "vs_transformers.json").read_text())
    (row,) = saved["rows"]
    assert row["same_greedy_tokens"] == {"batch": 3, "padded": 3}
    assert all(len(v) == 1 and v[0] > 0 for v in row["rounds"].values())
    assert row["ours_over_padded"] == row["tokens_per_s"]["ours"] / row["tokens_per_s"]["padded"]
    assert "| d_model |" in (tmp_path / "vs_transformers.md").read_text()
