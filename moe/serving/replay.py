"""Replay Poisson arrivals through the serving engine in real time and report what users and experts see.

    python -m moe serve-bench --config tiny --rate 4 --requests 64 [--checkpoint runs/tiny]

Requests arrive with exponential gaps at `rate` per second; each is a slice of the held-out corpus
(prompt_len tokens of the model's tokenizer) asking for max_new_tokens. The loop submits every request whose
arrival time has
passed, runs one engine step, and repeats (sleeping when idle). Reported:
  throughput        new tokens / (last completion - first arrival)
  TTFT              first token's emission - arrival (includes queueing)
  ITL               gap between a request's successive emissions, divided among the tokens emitted
                    together (speculative decoding emits several at once)
  per-expert batch  tokens each expert of each layer received in each step, as a distribution by
                    batch size: at 8 decoding rows, top-2 of 16 experts, 16 assignments spread over
                    16 experts, so many experts get 0 or 1 token and read all their weights for it.
"""

from __future__ import annotations

import collections
import json
import pathlib
import time

import numpy as np

from moe.data import ByteTokenizer, Tokenizer, bundled_split
from moe.serving.engine import Engine
from moe.serving.request import Request


def percentiles(values, qs=(50, 90, 99)) -> dict:
    if not len(values):
        return {f"p{q}": None for q in qs}
    return {f"p{q}": float(np.percentile(values, q)) for q in qs}


def make_requests(
    n: int, prompt_len: int, max_new_tokens: int, sampling: dict, seed: int, tokenizer: Tokenizer | None = None
) -> list[Request]:
    """n prompts of prompt_len tokens: slices of the held-out text in the model's tokenizer (bytes by default)."""
    text = bundled_split(0.05)[1].decode("utf-8")
    val = np.asarray((tokenizer or ByteTokenizer()).encode(text))
    if len(val) <= prompt_len:
        raise ValueError(f"prompt_len {prompt_len} exceeds the {len(val)} held-out tokens")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(val) - prompt_len, n)
    return [
        Request(val[s : s + prompt_len].tolist(), max_new_tokens, sampling=sampling, seed=seed + i)
        for i, s in enumerate(starts)
    ]


def replay(engine: Engine, requests: list[Request], rate: float, seed: int = 0, log=None) -> dict:
    """Submit requests at Poisson arrival times (real time), step until all are done; the summary.
    log(line), if given, hears how many requests have finished, about every tenth of them."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0 requests per second, got {rate}")
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1 / rate, len(requests)))
    t0 = engine.clock()
    ids, nxt = [], 0
    every, reported = max(1, len(requests) // 10), 0
    while nxt < len(requests) or engine.has_work():
        now = engine.clock() - t0
        while nxt < len(requests) and arrivals[nxt] <= now:
            ids.append(engine.submit(requests[nxt], arrival=t0 + arrivals[nxt]))
            nxt += 1
        if engine.has_work():
            engine.step()
            done = sum(engine.results[i].finish_reason is not None for i in ids) if log is not None else 0
            if done // every > reported:
                reported = done // every
                log(f"{done}/{len(requests)} requests done at {engine.clock() - t0:.1f} s, {len(engine.steps)} steps")
        else:
            time.sleep(max(0.0, arrivals[nxt] - (engine.clock() - t0)))
    return summarize(engine, [engine.results[i] for i in ids], t0)


def summarize(engine: Engine, results, t0: float) -> dict:
    ttft = [r.ttft for r in results]
    itl = []
    for r in results:  # gaps between successive emission events, shared among the tokens of each event
        tokens_at = collections.Counter(r.token_times)
        events = sorted(tokens_at)
        for a, b in zip(events, events[1:]):
            itl += [(b - a) / tokens_at[b]] * tokens_at[b]
    n_tokens = sum(len(r.tokens) for r in results)
    t_end = max(r.token_times[-1] for r in results)
    t_first = min(r.t_arrival for r in results)
    steps = engine.steps
    decode_steps = [s for s in steps if s.n_prefill == 0]
    by_batch: dict[int, list[int]] = {}
    for s in decode_steps:
        by_batch.setdefault(s.batch_size, []).extend(v for layer in s.tokens_per_expert for v in layer)
    expert_batch = {
        b: {
            "steps": sum(1 for s in decode_steps if s.batch_size == b),
            "mean": float(np.mean(v)),
            "share_0": float(np.mean(np.equal(v, 0))),
            "share_1": float(np.mean(np.equal(v, 1))),
            "max": int(np.max(v)),
        }
        for b, v in sorted(by_batch.items())
    }
    proposed = sum(r.draft_proposed for r in results)
    return {
        "requests": len(results),
        "new_tokens": n_tokens,
        "wall_s": t_end - t_first,
        "throughput_tok_s": n_tokens / (t_end - t_first),
        "steps": len(steps),
        "mean_batch": float(np.mean([s.batch_size for s in steps])),
        "ttft_s": percentiles(ttft),
        "itl_s": percentiles(itl),
        "draft_acceptance": sum(r.draft_accepted for r in results) / proposed if proposed else None,
        "tokens_per_target_forward": n_tokens / sum(r.target_forwards for r in results),
        "expert_batch_by_decode_batch": expert_batch,
        "per_step": {
            "t": [s.t_end - t0 for s in steps],
            "batch_size": [s.batch_size for s in steps],
            "n_prefill": [s.n_prefill for s in steps],
            "tokens_per_expert": [s.tokens_per_expert for s in steps],
        },
    }


def print_latencies(s: dict) -> None:
    """The TTFT and ITL percentiles of a summary, in milliseconds (also serve-bench --url's)."""
    ms = lambda d: " ".join(f"{k} {1e3 * v:.1f}" if v is not None else f"{k} -" for k, v in d.items())
    print(f"time to first token (ms): {ms(s['ttft_s'])}")
    print(f"inter-token latency (ms): {ms(s['itl_s'])}")


def print_summary(s: dict, header: str) -> None:
    print(header)
    print(
        f"requests {s['requests']}, new tokens {s['new_tokens']}, {s['wall_s']:.1f} s, "
        f"throughput {s['throughput_tok_s']:.1f} tokens/s, {s['steps']} steps, mean batch {s['mean_batch']:.2f}"
    )
    print_latencies(s)
    if s["draft_acceptance"] is not None:
        print(
            f"draft acceptance {s['draft_acceptance']:.3f}, "
            f"tokens per target forward {s['tokens_per_target_forward']:.2f}"
        )
    print("tokens per expert per layer in decode steps, by batch size (rows):")
    print(f"{'batch':>5} {'steps':>6} {'mean':>6} {'got 0':>6} {'got 1':>6} {'max':>4}")
    for b, d in s["expert_batch_by_decode_batch"].items():
        print(f"{b:>5} {d['steps']:>6} {d['mean']:>6.2f} {d['share_0']:>6.1%} {d['share_1']:>6.1%} {d['max']:>4}")


def plot_expert_batches(s: dict, path, title: str) -> None:
    """Tokens per expert (summed over layers / L) at every step, under the batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tpe = np.asarray(s["per_step"]["tokens_per_expert"], dtype=float)  # [steps, L, E]
    layer0 = tpe[:, 0, :].T  # [E, steps]
    fig, (ax, hm) = plt.subplots(2, 1, figsize=(12, 6), sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    ax.plot(s["per_step"]["batch_size"], label="rows in the step")
    ax.plot(s["per_step"]["n_prefill"], label="of which prefilling", alpha=0.7)
    ax.set(ylabel="rows", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    vmax = max(1, np.percentile(layer0, 99))
    im = hm.imshow(layer0, aspect="auto", cmap="viridis", interpolation="nearest", vmax=vmax)
    hm.set(xlabel="engine step", ylabel="expert (layer 0)")
    fig.colorbar(im, ax=hm, label="tokens routed to the expert", orientation="horizontal", pad=0.2, fraction=0.08)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(s: dict, out_dir, name: str, header: str) -> pathlib.Path:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(s, separators=(",", ":")))  # per-step counts: keep it compact
    plot_expert_batches(s, out / f"{name}.png", header)
    return out
