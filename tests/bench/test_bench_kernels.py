"""bench.kernels end to end on the CPU, at a tiny scale, with the Triton rows run through the
interpreter: every implementation passes its correctness check and the outputs are written."""

import json

from bench import kernels as bench


def test_bench_kernels_runs_and_writes_results(tmp_path, capsys):
    rows = bench.main(["--scale", "1024", "--reps", "1", "--shapes", "A,E", "--interpret", "--out", str(tmp_path)])
    failed = [r for r in rows if "error" in r and "multiple of 16 bytes" not in r["error"]]
    assert not failed, failed  # a wrong answer is reported as an error row instead of a time
    timed = {(r["shape"], r["op"], r["impl"]) for r in rows if "ms" in r}
    for shape in ("A train fwd", "A train fwd+bwd", "E prefill skewed"):
        assert (shape, "gmm", "triton") in timed and (shape, "mlp", "triton fused") in timed
        assert (shape, "mlp", "torch grouped_mm") in timed and (shape, "gmm", "dense torch.mm") in timed
    saved = json.loads((tmp_path / "kernels.json").read_text())
    assert saved["meta"]["torch"] and saved["meta"]["date"] and saved["meta"]["triton_measured"] is False
    assert len(saved["rows"]) == len(rows)
    assert saved["environment"]["torch"] == saved["meta"]["torch"]
    assert "| shape | op | impl |" in (tmp_path / "kernels.md").read_text()
    assert (tmp_path / "kernels.csv").read_text().count("\n") == len(rows) + 1
    assert (tmp_path / "kernels.png").stat().st_size > 0
    assert "need a CUDA GPU" in capsys.readouterr().out


def test_skewed_counts_give_one_expert_four_shares_and_three_none():
    shape = bench.Shape("E", T=8192, d=16, f=16, skewed=True)
    counts = bench.expert_counts(shape)
    assert sum(counts) == 8192 * 2 and len(counts) == 16
    assert max(counts) == 4 * sum(counts) // 16 and counts.count(0) == 3
    balanced = bench.expert_counts(bench.Shape("B", T=8192, d=16, f=16))
    assert balanced == [1024] * 16
