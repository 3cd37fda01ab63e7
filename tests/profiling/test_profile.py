"""The GPT-4 layer profiler: the tensor-parallel shard, the cost and cluster arithmetic against the
formulas bench/README.md gives, the profiler breakdown, and bench.profile_model end to end on the
CPU."""

import dataclasses
import gzip
import json

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import bench.profile_model
from moe.config import load_config
from moe.estimates import cluster as X
from moe.estimates.arithmetic import count_params, forward_flops_per_token
from moe.profiling.breakdown import CATEGORIES, RANGES, breakdown
from moe.profiling.steps import Steps, build_layers

GPT4 = load_config("gpt4")
SHARD = X.shard_shape(GPT4, 8)


def test_shard_is_what_one_of_eight_gpus_holds():
    assert (SHARD.n_heads, SHARD.n_kv_heads, SHARD.d_ff, SHARD.d_model) == (11, 1, 43008 // 8, 10752)  # 84/8 = 10.5
    full, part = count_params(GPT4), count_params(SHARD)
    assert part.expert_layer * 8 == full.expert_layer
    assert part.router == full.router and part.norms == full.norms  # replicated
    # wq and wo: 11 of 84 heads; wk and wv (the one K/V head) whole on every GPU
    assert part.attention == GPT4.n_layers * (2 * 10752 * 11 * 128 + 2 * 10752 * 128)
    gqa = X.shard_shape(load_config("gpt4", n_kv_heads=4), 2)
    assert (gqa.n_heads, gqa.n_kv_heads) == (42, 2)
    with pytest.raises(ValueError, match="d_ff"):
        X.shard_shape(GPT4, 5)


def test_layer_costs_follow_the_counting_rules():
    T, k, d, f = 8192, 2, 10752, 43008 // 8
    costs = X.layer_costs(SHARD, T, context=4096.5)
    assert costs["expert_matmuls"][0] == 4 * T * k * d * f  # bench/README.md: 4 T k d f for the GELU MLP
    assert costs["attention"][0] == 2 * T * (2 * d * 11 * 128 + 2 * d * 128) + 4 * T * 11 * 128 * 4096.5
    # decode at batch 1: 2 experts touched, their two matrices read once; the cache read is K and V
    one = X.layer_costs(SHARD, 1, context=8193, kv_rows=1)
    assert X.experts_touched(1, SHARD) == pytest.approx(2)
    assert one["expert_matmuls"][1] >= 2 * 2 * (2 * d * f) and one["expert_matmuls"][1] < 1.01 * 2 * 2 * (2 * d * f)
    kv = X.layer_costs(SHARD, 1, 8193, kv_rows=1)["attention"][1] - X.layer_costs(SHARD, 1, 8193)["attention"][1]
    assert kv == 2 * 2 * 8193 * 128
    assert X.experts_touched(10_000, SHARD) == pytest.approx(16)


def test_roofline_is_memory_bound_in_decode_and_compute_bound_in_prefill():
    h100 = X.GPUS["H100"]
    expert_bytes = 2 * 2 * (2 * 10752 * 5376)  # two experts' two matrices, bf16
    decode = X.roofline_layer(SHARD, h100, 1, 8193, kv_rows=1)
    assert expert_bytes / h100.bytes_per_s < decode < 1.3 * expert_bytes / h100.bytes_per_s
    T, d = 8192, 10752
    flops = 4 * T * 2 * d * 5376 + 2 * T * (2 * d * 11 * 128 + 2 * d * 128 + d * 16) + 4 * T * 11 * 128 * 4096.5
    prefill = X.roofline_layer(SHARD, h100, T, 4096.5)
    assert flops / h100.flops < prefill < 1.05 * flops / h100.flops  # compute-bound, plus the norms' bytes
    assert X.roofline_layer(SHARD, h100, 8192, 4096.5, backward=True) == pytest.approx(3 * prefill)
    a100 = X.GPUS["A100"]
    assert X.rescale(1.0, SHARD, h100, a100, 1, 8193, 1) == pytest.approx(
        X.roofline_layer(SHARD, a100, 1, 8193, 1) / decode
    )


def test_weight_bound_batch_is_the_ridge_point():
    h100 = X.GPUS["H100"]
    bound = X.weight_bound_batch(SHARD, h100, 8192)
    # bench/README.md: about 266 FLOP per byte on an H100; an expert sees b * k / E rows
    assert bound["compute"] == pytest.approx(798 / 3.0 * 16 / 2, rel=1e-3)
    expert_bytes = 16 * 2 * 10752 * 5376 * 2
    assert bound["kv"] == pytest.approx(expert_bytes / (2 * 2 * 128 * 8193))


def test_decode_point_is_consistent():
    h100 = X.GPUS["H100"]
    p = X.decode_point(GPT4, h100, 1e-3, b=32, context=8192)
    assert p.users == 16 * 32
    assert p.latency_ms >= 120 * 1.0  # at least every layer once
    assert p.tokens_per_s == pytest.approx(p.users / (p.latency_ms / 1e3))  # pp microbatches in flight
    assert p.usd_per_1k_tokens == pytest.approx(128 * 2.0 / 3600 / p.tokens_per_s * 1000)
    slower = X.decode_point(GPT4, h100, 2e-3, b=32, context=8192)
    assert 1.8 < slower.latency_ms / p.latency_ms < 2.0  # doubling the layer doubles all but the communication
    # the KV cache limit: b_max sequences per microbatch fit, one more does not
    b = X.max_microbatch(GPT4, h100, 8, 16, 8192)
    per_seq = 2 * 2 * 8 * 128 * 8192  # K and V, 8 layers on the stage, one head, bf16
    free = 0.9 * 80e9 - X.inference_weights_bytes(GPT4, 8, 16)
    assert 16 * b * per_seq <= free < 16 * (b + 1) * per_seq
    assert X.decode_point(GPT4, h100, 1e-3, b, 8192).fits and not X.decode_point(GPT4, h100, 1e-3, b + 1, 8192).fits
    assert 29e9 < X.inference_weights_bytes(GPT4, 8, 16) < 31e9  # the leak's "about 30 GB per GPU"


def test_training_estimate_agrees_with_its_own_mfu():
    a100 = X.GPUS["A100"]
    est = X.train_estimate(GPT4, a100, 25_000, layer_fwd_bwd_s=0.05, leak_mfu=(0.32, 0.36))
    assert est.dp == 208 and est.gpus == 24_960
    total = 3 * forward_flops_per_token(GPT4, 4096) * 13e12
    assert est.days * 86400 * est.mfu * est.gpus * 312e12 == pytest.approx(total, rel=1e-6)
    for mfu, days in zip((0.32, 0.36), est.days_at_leak_mfu):
        assert days == pytest.approx(total / (24_960 * 312e12 * mfu) / 86400)
        assert X.implied_mfu(GPT4, a100, 24_960, days) == pytest.approx(mfu)
    assert est.recompute  # 40 GB cannot hold ZeRO-1 state and 15 microbatches of activations
    roomy = dataclasses.replace(a100, memory_gb=10_000)
    fast = X.train_estimate(GPT4, roomy, 25_000, layer_fwd_bwd_s=0.05)
    assert not fast.recompute and fast.step_s < est.step_s and fast.mfu > est.mfu


def small_shard():
    cfg = load_config("gpt4", d_model=96, head_dim=16, d_ff=128, n_layers=2, max_seq_len=65)
    return X.shard_shape(cfg, 8)


def test_breakdown_charges_backward_to_the_forward_range():
    shard = small_shard()
    steps = Steps(build_layers(shard, 2, "cpu", torch.float32), shard, "cpu", torch.float32)
    forward, train = steps.prefill(64), steps.train(64, 64)
    results = {}
    for name, fn in (("forward", forward), ("train", train)):
        fn()
        runs = []
        for _ in range(3):  # the least disturbed of three: a step of ~10 ms descheduled once is another step
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            parts = breakdown(prof.events(), cuda=False)
            own = sum(e.self_cpu_time_total for e in prof.events()) / 1e3
            assert sum(parts.values()) == pytest.approx(own)  # the categories partition the time
            runs.append((own, parts, breakdown(prof.events(), cuda=False, backward_only=True)))
        results[name] = min(runs, key=lambda run: run[0])[1:]
    (forward_parts, forward_backward), (train_parts, train_backward) = results["forward"], results["train"]
    assert set(train_parts) == set(CATEGORIES)
    assert sum(forward_backward.values()) == 0  # no autograd nodes ran
    for r in RANGES:
        assert forward_parts[r] > 0, r
        assert train_backward[r] > 0, r  # each range's backward nodes are charged back to it
    assert train_backward["other"] < 0.2 * sum(train_backward.values())


def test_decode_step_reads_a_full_cache():
    shard = small_shard()
    layers = build_layers(shard, 2, "cpu", torch.float64)
    steps = Steps(layers, shard, "cpu", torch.float64)
    y, routing = steps.decode(3, 40)()
    assert y.shape == (3, 1, 96) and torch.isfinite(y).all() and len(routing) == 2
    assert layers[0].attn.kv_cache.k.shape == (3, 1, 41, 16)
    assert all(p.dtype == torch.float64 for p in layers.parameters())


def test_profile_script_on_the_cpu(tmp_path, capsys):
    script = bench.profile_model
    report = script.main(
        [
            "--layers",
            "2",
            "--scale",
            "64",
            "--batches",
            "1,2",
            "--reps",
            "1",
            "--profile-steps",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert "Real figures need a GPU" in out and "PREDICTED by the roofline" in out
    modes = [(p["mode"], p.get("batch")) for p in report["points"]]
    assert modes == [("prefill", 1), ("decode", 1), ("decode", 2), ("decode", 1), ("decode", 2), ("train", 1)]
    for p in report["points"]:
        assert p["ms"] > 0 and p["gflop"] > 0 and set(p["breakdown_ms"]) == set(CATEGORIES)
    assert report["cluster"]["measured"] is None  # no GPU: no cluster figures from CPU timings
    predicted = report["cluster"]["predicted"]
    assert {d["gpu"].split()[0] for d in predicted["decode"]} == {"H100", "A100"}
    assert {d["context"] for d in predicted["decode"]} == {8192, 32768}
    assert [t["gpu"].split()[0] for t in predicted["train"]] == ["H100", "A100"]
    saved = json.loads((tmp_path / "profile_gpt4_L2.json").read_text())
    assert saved["meta"]["device"].startswith("CPU") and saved["meta"]["date"] and saved["assumptions"]
    assert (tmp_path / "profile_gpt4_L2.png").stat().st_size > 0
    traces = sorted(p.name for p in tmp_path.glob("trace_*.json.gz"))
    assert traces == [
        "trace_gpt4_L2_decode_128.json.gz",
        "trace_gpt4_L2_decode_512.json.gz",
        "trace_gpt4_L2_prefill.json.gz",
        "trace_gpt4_L2_train.json.gz",
    ]
    events = json.loads(gzip.open(tmp_path / "trace_gpt4_L2_train.json.gz").read())["traceEvents"]
    assert any(e.get("name") == "moe/expert_matmuls" for e in events)


def test_profile_script_rejects_a_bad_split(capsys):
    script = bench.profile_model
    with pytest.raises(SystemExit) as e:
        script.main(["--tp", "5", "--scale", "64"])
    assert e.value.code == 2 and "tp=5 does not divide d_ff" in capsys.readouterr().err


def test_cluster_from_measured_layer_times():
    """The GPU-only path of the script, fed made-up measurements: a time measured on an H100 goes
    into the cluster model unchanged for the H100 and scaled by the roofline ratio for the A100."""
    script = bench.profile_model
    h100, a100 = X.GPUS["H100"], X.GPUS["A100"]
    points = [
        dict(mode="prefill", tokens=8192, batch=1, ms=40.0, ms_per_layer=20.0),
        *(
            dict(mode="decode", tokens=b, context=8192, batch=b, ms=2 * ms, ms_per_layer=ms)
            for b, ms in ((1, 0.2), (8, 0.3), (64, 0.5))
        ),
        dict(mode="decode", context=8192, batch=128, tokens=128, error="out of memory"),
        dict(mode="train", tokens=8192, batch=1, ms=120.0, ms_per_layer=60.0),
    ]
    times = script.measured_layer_times(points)
    assert times["decode"] == {(8192, 1): 2e-4, (8192, 8): 3e-4, (8192, 64): 5e-4}
    res = script.cluster(GPT4, SHARD, times, h100, X.GPUS, 8192)
    by = {(d["gpu"].split()[0], d["b"]): d for d in res["decode"]}
    assert by["H100", 8]["latency_ms"] == pytest.approx(X.decode_point(GPT4, h100, 3e-4, 8, 8192).latency_ms)
    ratio = X.roofline_layer(SHARD, a100, 8, 8193, 8) / X.roofline_layer(SHARD, h100, 8, 8193, 8)
    assert 1.5 < ratio < 2.5  # about the bandwidth ratio: decode is memory-bound
    assert by["A100", 8]["latency_ms"] == pytest.approx(X.decode_point(GPT4, a100, 3e-4 * ratio, 8, 8192).latency_ms)
    train = {t["gpu"].split()[0]: t for t in res["train"]}
    assert train["H100"]["mfu"] == pytest.approx(X.train_estimate(GPT4, h100, 8192, 0.06).mfu)
    assert res["ttft"][0]["ms"] == pytest.approx(1e3 * X.prefill_latency_s(GPT4, h100, 0.02, 8192), abs=0.1)
    assert script.doubling_batch(points, 8192) == 64  # 0.5 ms >= 2 x 0.2 ms; 0.3 ms is not


def test_decode_sweep_stops_at_the_first_out_of_memory(tmp_path, monkeypatch):
    script = bench.profile_model
    real_decode = Steps.decode

    def decode(self, batch, context):
        if batch >= 2:
            raise torch.OutOfMemoryError("pretend the GPU is full")
        return real_decode(self, batch, context)

    monkeypatch.setattr(Steps, "decode", decode)
    report = script.main(
        [
            "--mode",
            "decode",
            "--context",
            "16",
            "--scale",
            "64",
            "--batches",
            "1,2,4",
            "--reps",
            "1",
            "--profile-steps",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert [(p["batch"], "error" in p) for p in report["points"]] == [(1, False), (2, True)]
    assert (tmp_path / "trace_gpt4_L1_decode_16.json.gz").exists()  # the largest batch that ran, traced
