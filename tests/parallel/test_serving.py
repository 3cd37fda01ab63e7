"""The engine across ranks (moe/parallel/serving.py) serves token for token what one process serves.

Each case loads a layout's shards of one float64 checkpoint on pooled gloo processes
(tests/parallel/dist_worker.py) and runs the same mixed workload as the one-process Engine here:
prompts of different lengths, requests arriving while others decode, greedy and seeded sampling,
stop tokens, prompt logprobs and a chunked prefill; then again with a draft model. float64, so a
layout's different order of sums (all-reduce, split matmuls, microbatches) cannot flip a token.
"""

import dataclasses
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import shrunk
from serve_worker import requests, workload

from moe.estimates.cluster import stage_traffic
from moe.layout import Layout
from moe.model import MoETransformer
from moe.parallel.serving import check_layout, split_microbatches
from moe.serving import Engine
from moe.training.checkpoint import save_checkpoint

ENGINE = dict(n_pages=48, page_size=4, max_batch=6, max_batch_tokens=24)


def checkpoint(path, seed, **overrides):
    torch.manual_seed(seed)
    model = MoETransformer(shrunk("tiny", **overrides)).double().eval()
    save_checkpoint(path, model, model.cfg)
    return model


def mixed_requests(seed: int) -> list[dict]:
    rng = random.Random(seed)
    settings = [{"greedy": True}, {"temperature": 0.9}, {"temperature": 1.2, "top_k": 20}, {"top_p": 0.8}]
    out = []
    for i in range(9):
        out.append(
            dict(
                prompt=[rng.randrange(256) for _ in range(rng.choice([1, 3, 9, 30]))],
                max_new_tokens=rng.randint(3, 12),
                sampling=settings[i % 4],
                seed=100 + i,
                stop_tokens=tuple(range(0, 256, 7)) if i % 3 == 0 else (),  # one token in 7
                prompt_logprobs=i == 4,
            )
        )
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(checkpoint, draft checkpoint, the cases, their one-process results)."""
    root = tmp_path_factory.mktemp("serve")
    target = checkpoint(root / "target", 0)
    draft = checkpoint(root / "draft", 1, n_layers=1, d_model=16, d_ff=16)
    cases = [
        {"requests": mixed_requests(3), "late": 5, "engine": ENGINE},
        {
            "requests": mixed_requests(4),
            "late": 4,
            "engine": {**ENGINE, "draft_tokens": 3},
            "draft": str(root / "draft"),
        },
    ]
    want = []
    for case in cases:
        engine = Engine(target, draft=draft if case.get("draft") else None, **case["engine"])
        want.append(workload(engine, requests(case), case["late"]))
        assert sum(r["finish"] == "stop" for r in want[-1]) >= 1, "no stop token was hit: the workload tests less"
    return root, cases, want


LAYOUTS = {
    "tp2": dict(tp=2),
    "pp2, 2 microbatches": dict(pp=2),
    "ep2": dict(ep=2),
    "tp2 x pp2": dict(tp=2, pp=2),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_a_layout_serves_what_one_process_serves(name, served, pool, tmp_path):
    root, cases, want = served
    layout = LAYOUTS[name]
    spec = dict(task="serve", checkpoint=str(root / "target"), layout=layout, cases=cases, out=str(tmp_path))
    pool.run(Layout(**layout).world_size, spec)
    got = json.loads((tmp_path / "results.json").read_text())
    for case_got, case_want in zip(got, want, strict=True):
        pages = case_got.pop()
        assert pages["free_pages"] == pages["n_pages"]  # every page back in the pool
        for g, w in zip(case_got, case_want, strict=True):
            assert (g["tokens"], g["finish"]) == (w["tokens"], w["finish"])
            assert g["lp"] == pytest.approx(w["lp"], abs=1e-9)
    for rank in range(Layout(**layout).world_size):
        check_traffic(json.loads((tmp_path / f"traffic-{rank}.json").read_text()), rank, Layout(**layout))


def check_traffic(got: dict, rank: int, layout: Layout) -> None:
    """Every one-token-a-row step: the bytes this rank handed torch.distributed's all-reduces,
    all-gathers and sends (counted by wrapping them) are the ones the figures' formula says
    (moe.estimates.cluster.stage_traffic), plus the logits the last stage returns to rank 0."""
    cfg, itemsize = shrunk("tiny"), 8  # float64
    steps = [s for s in got["steps"] if s["T"] == 1]
    assert steps, "no one-token step was recorded"
    for s in steps:  # (B: the rows of the rank's expert-parallel group; none: one padding token)
        want = stage_traffic(cfg, got["layers"], max(1, s["B"]), layout.tp, got["first"], got["last"], itemsize)
        want = {kind: calls * n for kind, (calls, n) in want.items()}
        if got["last"] and got["tp"] == 0 and rank != 0:
            want["send"] += s["n"] * cfg.vocab_size * itemsize
        tally = s["tally"]
        assert tally.get("all_reduce", 0) == want["all_reduce"], (rank, s)
        assert tally.get("all_gather_into_tensor", 0) == want["all_gather"], (rank, s)
        assert tally.get("isend", 0) == want["send"], (rank, s)


def test_layouts_the_model_cannot_take_are_refused_before_loading():
    cfg = shrunk("tiny")
    with pytest.raises(ValueError, match="tp=3 must divide n_heads=4"):
        check_layout(cfg, Layout(tp=3), 3)
    with pytest.raises(ValueError, match="pp=3 stages need at least 3 layers"):
        check_layout(cfg, Layout(pp=3), 3)
    with pytest.raises(ValueError, match="world size is 2"):
        check_layout(cfg, Layout(tp=2, pp=2), 2)
    with pytest.raises(ValueError, match="dp=2: serving spans tp, pp and ep"):
        check_layout(cfg, Layout(dp=2), 2)
    with pytest.raises(ValueError, match="vision path"):
        check_layout(dataclasses.replace(cfg, vision=shrunk("tiny-vision").vision), Layout(tp=2), 2)


def test_microbatches_keep_rows_whole_and_in_order():
    assert split_microbatches([5, 5], 2) == [0, 1]
    assert split_microbatches([30, 1, 1, 1], 2) == [0, 1, 1, 1]
    assert split_microbatches([1, 1, 1, 1], 2) == [0, 0, 1, 1]
    assert split_microbatches([4], 3) == [0]


def torchrun(n: int, *args, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), "-m", "moe"]
    return subprocess.Popen(cmd + [*map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def worker_pids(launcher: subprocess.Popen, n: int, within: float = 60) -> dict[int, int]:
    """rank -> pid of the processes torchrun started (read from their environment)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = {}
        for child in pathlib.Path("/proc").glob("[0-9]*"):
            try:
                env = dict(kv.split("=", 1) for kv in (child / "environ").read_text().split("\0") if "=" in kv)
                if env.get("TORCHELASTIC_RUN_ID") and f"{launcher.pid}" in (child / "stat").read_text().split()[3]:
                    found[int(env["RANK"])] = int(child.name)
            except (OSError, KeyError, ValueError):
                continue
        if len(found) == n:
            return found
        time.sleep(0.2)
    raise AssertionError(f"torchrun did not start {n} workers")


def serving_url(proc: subprocess.Popen, within: float = 120) -> str:
    """The server's base URL, once rank 0 printed it and /health says the model has loaded."""
    import httpx

    line = ""
    while "serving" not in line:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, proc.stderr.read()[-3000:]
    url = re.search(r"on (http://\S+)/v1", line).group(1)
    deadline = time.monotonic() + within
    while True:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return url
        except httpx.ConnectError:  # the socket closed: the process died (its stderr says why)
            pass
        if proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "the model did not load"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cli_checkpoint(tmp_path_factory):
    cfg = shrunk("tiny", max_seq_len=96)
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("cli"), MoETransformer(cfg), cfg)


def test_torchrun_serves_the_openai_api_across_ranks_and_sigterm_stops_them_all(cli_checkpoint):
    """`torchrun -m moe serve --tp 2 --pp 2`: completions through the official client equal one
    process's `generate`, and SIGTERM to the launcher stops every rank cleanly: rank 0 shuts the
    server down and stops the others, and no rank fails. (torchrun itself always exits 1 after a
    signal, raising SignalException: that is the launcher's convention, not a rank's failure.)"""
    import openai

    from moe.serving.generate import generate
    from moe.training import load_model

    proc = torchrun(4, "serve", "--checkpoint", cli_checkpoint, "--tp", 2, "--pp", 2, "--port", 0, "--max-batch", 4)
    pids = worker_pids(proc, 4)
    try:
        url = serving_url(proc)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=5)
        model = load_model(cli_checkpoint)
        for prompt in ("To be", "What is"):
            out = client.completions.create(model=str(cli_checkpoint), prompt=prompt, max_tokens=8, temperature=0)
            want = generate(model, list(prompt.encode()), 8, greedy=True)
            assert out.choices[0].text == bytes(want).decode("utf-8", errors="replace")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert "server stopped" in err, err[-3000:]
    # the launcher's own SignalException is the only traceback: no rank raised
    assert err.count("Traceback (most recent call last)") == err.count("SignalException: Process"), err[-3000:]
    assert "exitcode" not in err  # torchrun names any worker that exited non-zero
    assert not [pid for pid in pids.values() if pathlib.Path(f"/proc/{pid}").exists()]


def test_a_killed_rank_fails_every_rank_with_its_name(cli_checkpoint):
    """SIGKILL one rank of an idle server: the launcher ends the others and exits non-zero naming it."""
    proc = torchrun(2, "serve", "--checkpoint", cli_checkpoint, "--ep", 2, "--port", 0, "--dist-timeout", 4)
    pids = worker_pids(proc, 2)
    serving_url(proc)
    os.kill(pids[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)\s+exitcode\s*: -9", err), err[-3000:]


def test_a_hung_rank_is_named_and_every_rank_exits_within_the_timeout(cli_checkpoint):
    """SIGSTOP one rank of an idle server: rank 0's keepalive names it and exits non-zero within
    the collective timeout (plus the keepalive's period), instead of waiting for ever."""
    timeout = 8  # long enough that two ranks loading on a busy 2-core machine stay within it
    proc = torchrun(2, "serve", "--checkpoint", cli_checkpoint, "--ep", 2, "--port", 0, "--dist-timeout", timeout)
    pids = worker_pids(proc, 2)
    serving_url(proc)
    os.kill(pids[1], signal.SIGSTOP)
    start = time.monotonic()
    try:
        while pathlib.Path(f"/proc/{pids[0]}").exists() and time.monotonic() - start < 60:
            time.sleep(0.1)
        elapsed = time.monotonic() - start
    finally:
        os.kill(pids[1], signal.SIGKILL)  # a stopped process cannot act on torchrun's SIGTERM
    _, err = proc.communicate(timeout=60)
    assert elapsed < timeout * 1.25 + 5, f"rank 0 took {elapsed:.1f} s to notice"
    assert proc.returncode != 0
    assert re.search(r"rank 0: the keepalive failed \(rank 1 stopped answering\)", err), err[-3000:]
