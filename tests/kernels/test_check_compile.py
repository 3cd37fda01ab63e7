"""The static check of the compiled code that CI enforces (kernels.tuning.check_compile --quick): every
configuration the runtime launches compiles for an H100 (sm_90) without a GPU and, read back from
the SASS, spills nothing, uses warp-group MMA (HGMMA) in compute-bound tiles, TMA loads where A and
W are not gathered, and asynchronous copies in decode tiles. The pre-Hopper path (sm_80: no TMA, no
HGMMA) compiles too. The interpreter tests cannot see any of this."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def check(tmp_path, *args):
    out = tmp_path / "compile.json"
    proc = subprocess.run(
        [sys.executable, "-m", "kernels.tuning.check_compile", "--quick", "--json", str(out), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    return proc, (json.loads(out.read_text())["results"] if out.exists() else [])


def test_shipped_variants_compile_clean_for_sm90(tmp_path):
    proc, results = check(tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert {r["mode"] for r in results} >= {
        "up + gate + SwiGLU, gathered",
        "SwiGLU backward epilogue",
        "dW plain",
        "up + gate + SwiGLU, int4 W",
        "down, weighted scatter, fp8 W",
        "split-K partials: up + gate, gathered",
        "split-K reduce: SwiGLU",
    }
    assert all(r["shipped"] and r["ok"] for r in results)
    assert all(
        0 < r["registers"] <= 255 and r["stack"] == 0 and r["spill_stores"] == r["spill_loads"] == 0 for r in results
    )  # read back from the cubin: no local memory anywhere
    rows = [r for r in results if r["kernel"] == "rows_kernel"]
    big = [r for r in rows + [r for r in results if r["kernel"] == "dw_kernel"] if int(r["config"].split("x")[0]) >= 64]
    assert big and all(r["hgmma"] > 0 for r in big)
    tma = [r for r in big if r["kernel"] == "rows_kernel" and "gathered" not in r["mode"] and "int4" not in r["mode"]]
    assert tma and all(r["tma_loads"] > 0 for r in tma)
    decode = [r for r in rows if int(r["config"].split("x")[0]) <= 32]
    assert decode and all(r["async_copies"] + r["tma_loads"] > 0 for r in decode)
    assert all(0 < r["occupancy"] <= 1 for r in results)


@pytest.mark.slow
def test_pre_hopper_path_compiles(tmp_path):
    """sm_80 (A100): the same pinned configs compile without TMA and within its 163 KiB of shared memory."""
    proc, results = check(tmp_path, "--arch", "80")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert results and all(r["tma_loads"] == 0 and r["hgmma"] == 0 for r in results)
