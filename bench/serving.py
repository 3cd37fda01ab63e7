"""Serving benchmark: speculative decoding on a trained target/draft pair, and continuous batching
under Poisson load. Writes <out>/serving.{json,md} and <out>/serve-*.{json,png}.

    python -m bench.serving --target runs/tiny --draft runs/tiny-draft      # --out bench/results/<device>

1. Speculative decoding at batch 1: target-only, then draft_tokens k = 1..4, greedy and sampled
   (temperature 0.8), over the same held-out prompts. Each configuration runs `--repeats` times,
   interleaved so that a shared machine's drift hits all alike; the median tokens/s is reported.
2. The same with B requests at once (B = 1, 4, 8): what speculation does at larger batches.
3. `serve-bench` replays at two arrival rates with the target alone.
Also reported: how many of a layer's experts a decode step reads (received any token). Verifying k+1
tokens per row wakes more experts than decoding one, which is the MoE's own cost of speculation.
"""

from __future__ import annotations

import statistics
import sys
import time

from bench import harness
from moe.serving import Engine, replay
from moe.training import load_model


def timed_run(target, draft, k, requests) -> dict:
    # every request runs from the first step: a row and a full-length sequence's pages for each
    engine = Engine(target, max_batch=len(requests), draft=draft, draft_tokens=k or 1)
    t = time.perf_counter()
    results = engine.run(requests)
    dt = time.perf_counter() - t
    n = sum(len(r.tokens) for r in results)
    proposed = sum(r.draft_proposed for r in results)
    return {
        "tokens_s": n / dt,
        "acceptance": sum(r.draft_accepted for r in results) / proposed if proposed else None,
        "tokens_per_target_forward": n / sum(r.target_forwards for r in results),  # per row
        # experts of a layer that received any token in a decode step: what the step reads
        "experts_read": statistics.mean(
            sum(c > 0 for c in layer) for s in engine.steps if not s.n_prefill for layer in s.tokens_per_expert
        ),
    }


def sweep(target, draft, prompt_len, batch_sizes, ks, modes, max_new, repeats) -> list[dict]:
    rows = []
    for mode, sampling in modes.items():
        for B in batch_sizes:
            requests = replay.make_requests(B, prompt_len, max_new, sampling, seed=B)
            runs = {k: [] for k in ks}
            for _ in range(repeats):
                for k in ks:
                    runs[k].append(timed_run(target, draft if k else None, k, requests))
            base = statistics.median(r["tokens_s"] for r in runs[0])
            for k in ks:
                tps = statistics.median(r["tokens_s"] for r in runs[k])
                rows.append(
                    {
                        "mode": mode,
                        "batch": B,
                        "draft_tokens": k,
                        "tokens_s": round(tps, 1),
                        "speedup": round(tps / base, 2),
                        "acceptance": runs[k][0]["acceptance"],
                        "tokens_per_target_forward": round(runs[k][0]["tokens_per_target_forward"], 2),
                        "experts_read": round(runs[k][0]["experts_read"], 1),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = [
        "| sampling | batch | draft tokens | tokens/s | speedup | acceptance | tokens / target forward "
        "| experts read per layer and decode step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["speculative"]:
        acc = "-" if r["acceptance"] is None else f"{r['acceptance']:.2f}"
        k = "target only" if r["draft_tokens"] == 0 else r["draft_tokens"]
        lines.append(
            f"| {r['mode']} | {r['batch']} | {k} | {r['tokens_s']} | {r['speedup']}x | {acc} | "
            f"{r['tokens_per_target_forward']} | {r['experts_read']} |"
        )
    lines += [
        "",
        "| arrival rate (req/s) | requests | throughput (tok/s) | mean batch | TTFT p50 / p99 (ms) | "
        "ITL p50 / p99 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for rate, s in result["serve"].items():
        lines.append(
            f"| {rate} | {s['requests']} | {s['throughput_tok_s']:.0f} | {s['mean_batch']:.1f} | "
            f"{1e3 * s['ttft_s']['p50']:.0f} / {1e3 * s['ttft_s']['p99']:.0f} | "
            f"{1e3 * s['itl_s']['p50']:.1f} / {1e3 * s['itl_s']['p99']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--target", default="runs/tiny")
    p.add_argument("--draft", default="runs/tiny-draft")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rates", default="2,8", help="comma-separated arrival rates for serve-bench")
    p.add_argument("--requests", type=int, default=48, help="requests per serve-bench replay")
    p.add_argument("--quick", action="store_true", help="a few tokens of everything (for the tests)")
    a = p.parse_args(argv)
    target, draft = load_model(a.target), load_model(a.draft)
    if a.quick:
        a.max_new_tokens, a.repeats, a.requests, a.prompt_len = 6, 1, 4, 8
    modes = {"greedy": {"greedy": True}, "temperature 0.8": {"temperature": 0.8}}
    rows = sweep(
        target,
        draft,
        a.prompt_len,
        [1] if a.quick else [1, 4, 8],
        [0, 1, 2] if a.quick else [0, 1, 2, 3, 4],
        modes,
        a.max_new_tokens,
        a.repeats,
    )
    out = a.out
    serve = {}
    for rate in [float(r) for r in a.rates.split(",")]:
        engine = Engine(target, kv_budget_bytes=16 << 20)
        requests = replay.make_requests(
            a.requests, a.prompt_len, min(a.max_new_tokens, 64), modes["temperature 0.8"], 0
        )
        serve[rate] = replay.replay(engine, requests, rate, seed=0)
        header = f"serve-bench {target.cfg.name}: {a.requests} requests at {rate}/s"
        replay.print_summary(serve[rate], header)
        replay.write(serve[rate], out, f"serve-{target.cfg.name}-rate{rate:g}", header)
    result = {
        "target": a.target,
        "draft": a.draft,
        "prompt_len": a.prompt_len,
        "max_new_tokens": a.max_new_tokens,
        "repeats": a.repeats,
        "speculative": rows,
        "serve": {str(k): {kk: vv for kk, vv in v.items() if kk != "per_step"} for k, v in serve.items()},
    }
    text = markdown(result)
    harness.write_result(out, "serving", result, text, by="bench.serving", title="Speculative decoding and serving")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
