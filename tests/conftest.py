import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

# Without a GPU the Triton kernels run through Triton's interpreter; it must be chosen before triton
# is first imported. With a GPU the same tests run the compiled kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from moe.config import load_config  # noqa: E402

# Under pytest-xdist every core runs its own worker: one torch thread each, or two workers' thread
# pools would fight over the same cores (tests that spawn processes still give them the default).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
gpu_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton kernels)")

# Expert row counts the kernel tests sweep: empty experts, one row, all rows on one expert, ragged.
COUNTS = {
    "one row": [1],
    "balanced": [3, 3, 3, 3],
    "empty experts": [0, 5, 0, 2, 0],
    "all on one": [0, 0, 9, 0],
    "all empty but last": [0, 0, 0, 1],
    "ragged": [1, 7, 0, 4, 13, 2],
    "no rows": [0, 0, 0],
}


def offsets_from(counts, device="cpu"):
    return torch.tensor(counts, device=device).cumsum(0).to(torch.int32)


def shrunk(preset: str = "tiny", **overrides):
    """A real preset shrunk to test size (the tests build pieces from presets, not ad-hoc configs)."""
    small = dict(d_model=32, n_layers=2, n_heads=4, d_ff=24, max_seq_len=64, vocab_size=256)
    return load_config(preset, **{**small, **overrides})


# A vision path at test size (configs/tiny-vision.toml's [vision] table shrunk): 8 x 32 one-channel
# images in 4-pixel patches. READING: its reading path, 8 strips of 4 pixels, one latent per strip.
SMALL_VISION = dict(
    channels=1,
    image_height=8,
    image_width=32,
    patch_size=4,
    d_model=16,
    n_layers=1,
    n_heads=2,
    d_ff=32,
    n_latents=6,
    resampler_layers=1,
    cross_attn_every=1,
    image_token=0,
    query_offsets=8,
)
READING = dict(stem="strips", stem_channels=4, n_layers=0, n_latents=8, reading_window=True)


def moe_cli(*args, **kw) -> subprocess.CompletedProcess:
    """`python -m moe ARGS...` in a fresh process (arguments str()-ed), its output captured as text."""
    return subprocess.run([sys.executable, "-m", "moe", *map(str, args)], capture_output=True, text=True, **kw)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def pool():
    """Four gloo processes spawned once per test process (tests/parallel/dist_worker.py), shared by
    the training and the serving layouts' cases."""
    from dist_worker import Pool  # (tests/parallel, on the path of the modules that use it)

    workers = Pool(4)  # the largest world of any case
    yield workers
    workers.close()


# The routing rules with what each family adds (moe/model/router.py), shared by the layer, engine and
# layout tests; expert choice is training only.
ROUTING = {
    "deepseek-v3": dict(
        router_rule="sigmoid_topk",
        router_score_bias=True,
        router_bias_update_rate=0.01,
        router_groups=4,
        router_topk_groups=2,
        router_scale=2.5,
        shared_d_ff=16,
        shared_gate=True,
    ),
    "gpt-oss": dict(router_rule="topk_softmax", router_bias=True, top_k=4),
    "llama4": dict(
        router_rule="sigmoid_topk", top_k=1, router_renormalize=False, router_scale_input=True, shared_d_ff=16
    ),
    "expert-choice": dict(router_rule="expert_choice", capacity_factor=1.0),
}


# ------------------------------------------------------------------------ a server in a subprocess

NAME = "tiny-test"  # the --served-model-name of start_server's servers


def start_server(checkpoint, *flags):
    """`python -m moe serve` on a free port; (process, base url) once /health says ready."""
    import httpx

    proc = subprocess.Popen(
        [sys.executable, "-m", "moe", "serve", "--checkpoint", str(checkpoint), "--port", "0"]
        + ["--served-model-name", NAME, *map(str, flags)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    match = re.search(r"on (http://\S+)/v1", line)
    assert match, line + proc.stderr.read() if proc.poll() is not None else line
    url = match.group(1)
    for _ in range(600):
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.ConnectError:
            pass
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    raise AssertionError("the server never became ready")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)
