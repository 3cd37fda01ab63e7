"""bench.serve_vs_transformers' pieces that run without servers: the workloads are what the report
says they are, and the reservation run admits no more than whole-length reservations would. (The
HTTP client it drives both servers with is tested against our server in tests/serving/test_server.py.)"""

import argparse

import torch
from conftest import shrunk

from bench import serve_vs_transformers as svt
from moe.model import MoETransformer


def test_shared_system_prompts_share_200_tokens_then_differ():
    distinct = svt.workload("distinct", 4, seed=0)
    shared = svt.workload("shared-system", 4, seed=0)
    warm = svt.workload("shared-system", 2, seed=1000)
    system = shared[0].prompt[: svt.SYSTEM_LEN]
    assert all(len(r.prompt) == svt.PROMPT_LEN and r.max_new_tokens == svt.NEW for r in distinct)
    assert len({tuple(r.prompt) for r in distinct}) == 4
    for r, own in zip(shared, distinct):
        assert r.prompt == system + own.prompt and r.sampling == {"greedy": True}
    assert all(r.prompt[: svt.SYSTEM_LEN] == system for r in warm)  # the warm-up sees the same system prompt


def test_reservation_admits_whole_lengths_and_pages_on_demand_admit_more():
    torch.manual_seed(0)
    model = MoETransformer(shrunk("tiny", max_seq_len=192)).eval()
    args = argparse.Namespace(requests=8, budget_pages=30, seed=0)
    reserve = svt.kv_budget_run("reserve", model, args)
    on_demand = svt.kv_budget_run("on-demand", model, args)
    per_request = -(-(svt.PROMPT_LEN + 2 * svt.NEW - 1) // 16)  # positions written, in pages of 16
    assert reserve["pages_per_request"] == per_request and reserve["max_batch"] == 30 // per_request
    assert reserve["preemptions"] == 0 and reserve["mean_decode_batch"] <= reserve["max_batch"]
    assert on_demand["mean_decode_batch"] > reserve["max_batch"]  # more rows share the same pages
    assert svt.medians([{"x": 1.0, "e": []}, {"x": 3.0, "e": ["b"]}, {"x": 2.0, "e": ["c"]}]) == {"x": 2.0, "e": ["c"]}
