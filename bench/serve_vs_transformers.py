"""Our OpenAI server against `transformers serve` over HTTP on the same trained weights; and, in process,
a fixed KV budget with pages on demand against reserving each request's whole length.

    python -m bench.serve_vs_transformers [--train-steps 150] [--rounds 3] [--requests 64]

Setup: a SwiGLU `tiny` of 512 positions trained --train-steps steps (`python -m moe train`; or
--checkpoint), exported with `convert --to-hf`. Every request is greedy, its prompt slices of
held-out text sent as text (transformers serve takes only strings) by serve-bench's HTTP client
(moe/serving/http_replay.py), at the same Poisson arrival times for every server. Each server is
started fresh for each run, warmed by --requests requests of the same shape and rate (prompts of
their own), then replayed; the order of
the servers rotates every round, so a machine's drift falls on all of them alike.
  ours           python -m moe serve --checkpoint CK (continuous batching, pages on demand, prefix caching)
  ours-no-prefix the same with --no-prefix-caching
  transformers   transformers serve --continuous-batching --device cpu CK-HF (its defaults; no
                 ignore_eos field, which it refuses: the model has no end-of-sequence token, so
                 every request runs its full length on both sides)
Workloads (LOADS: the arrival rate of each):
  distinct       --requests prompts of 32 tokens of their own, 64 new tokens each; at 32 requests/s
                 (a load both servers keep up with: latency) and at 128/s (past both: throughput)
  shared-system  every prompt one 200-token system prompt, then 32 tokens of its own (prefix
                 caching's case), at 64/s
  kv-budget      in process, no HTTP: --requests prompts of 32 + 128 new tokens submitted at once into
                 --budget-pages pages of 16. Reservation (what the engine did before pages on demand)
                 admits a request only with room for its whole length; with requests all alike that
                 is max_batch = pages // pages per request, which is how it is run here. On demand:
                 pages as sequences grow, the newest preempted when the pool runs dry.
Reported: output tokens/s, TTFT p50 and p99, ITL p50, failures (medians over rounds; every round in
the JSON); prompt and output tokens as each server counted them (the same load on both sides).
Writes bench/results/<device>/serve_vs_transformers.{json,md}.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

from bench import harness
from moe.data.tokenizer import ByteTokenizer
from moe.serving import Engine, Request, http_replay, replay
from moe.serving.request import Result

PROMPT_LEN, NEW, SYSTEM_LEN = 32, 64, 200
LOADS = (("distinct", 32.0), ("distinct", 128.0), ("shared-system", 64.0))  # (workload, requests per second)
WAYS = {"distinct": ("ours", "transformers"), "shared-system": ("ours", "ours-no-prefix", "transformers")}


def train(out: str, steps: int) -> str:
    """A SwiGLU tiny of 512 positions trained `steps` steps into `out`; returns the run directory."""
    cmd = [sys.executable, "-m", "moe", "train", "--config", "tiny", "--set", "activation=swiglu"]
    cmd += ["--set", "max_seq_len=512"]  # room for the system prompt (it trains on windows of 256 as tiny does)
    cmd += ["--max-steps", str(steps), "--out", out, "--no-progress"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def export(run: str, out: str) -> str:
    subprocess.run([sys.executable, "-m", "moe", "convert", "--to-hf", run, "--out", out], check=True)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc, url: str, path: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server at {url} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + path, timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the server at {url} was not ready after {timeout} s")


@contextlib.contextmanager
def server(way: str, checkpoint: str, hf: str):
    """(url, model name, sends ignore_eos) of a fresh server of this way; stopped on exit."""
    if way == "transformers":
        port = _free_port()
        cli = pathlib.Path(sys.executable).parent / "transformers"  # the CLI transformers installs beside python
        cmd = [str(cli), "serve", "--continuous-batching", "--device", "cpu", "--port", str(port), hf]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url, model, ready = f"http://127.0.0.1:{port}", hf, "/v1/models"
    else:
        cmd = [sys.executable, "-m", "moe", "serve", "--checkpoint", checkpoint, "--port", "0", "--max-batch", "64"]
        cmd += ["--no-prefix-caching"] if way == "ours-no-prefix" else []
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        found = re.search(r"on (http://\S+)/v1", proc.stdout.readline())
        if not found:
            proc.kill()
            raise RuntimeError(f"{' '.join(cmd)} printed no URL")
        url, model, ready = found.group(1), None, "/health"
    try:
        _wait_ready(proc, url, ready)
        yield url, model, way != "transformers"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def workload(name: str, n: int, seed: int) -> list[Request]:
    """n greedy requests: prompts of PROMPT_LEN held-out tokens (shared-system: after one system prompt,
    the same whatever the seed)."""
    greedy = {"greedy": True}
    own = replay.make_requests(n, PROMPT_LEN, NEW, greedy, seed)
    if name == "distinct":
        return own
    system = replay.make_requests(1, SYSTEM_LEN, NEW, greedy, seed=1)[0].prompt
    return [Request(system + r.prompt, NEW, greedy, seed=r.seed) for r in own]


def http_run(way: str, name: str, rate: float, args, checkpoint: str, hf: str) -> dict:
    """A fresh server of this way, warmed by the same load with prompts of their own (the
    shared-system ones share the system prompt, as a server's earlier traffic would), then the
    measured replay."""
    text = ByteTokenizer().decode  # tiny's tokenizer: the HF export's tokenizer.json maps the same bytes
    requests, warm = workload(name, args.requests, args.seed), workload(name, args.requests, args.seed + 1000)
    with server(way, checkpoint, hf) as (url, model, ignore_eos):
        http_replay.replay_http(url, warm, rate, seed=args.seed + 1, model=model, text=text, ignore_eos=ignore_eos)
        s = http_replay.replay_http(url, requests, rate, seed=args.seed, model=model, text=text, ignore_eos=ignore_eos)
    return {
        "throughput_tok_s": s["throughput_tok_s"],
        "ttft_p50_s": s["ttft_s"]["p50"],
        "ttft_p99_s": s["ttft_s"]["p99"],
        "itl_p50_s": s["itl_s"]["p50"],
        "failed": s["failed"],
        "errors": s["errors"],
        "prompt_tokens": s["prompt_tokens"],
        "new_tokens": s["new_tokens"],
    }


def kv_budget_run(mode: str, model, args) -> dict:
    requests = replay.make_requests(args.requests, PROMPT_LEN, 2 * NEW, {"greedy": True}, args.seed)
    probe = Engine(model, n_pages=args.budget_pages)
    per_request = probe.pages_needed(requests[0])
    max_batch = args.budget_pages // per_request if mode == "reserve" else 64
    engine = Engine(model, n_pages=args.budget_pages, max_batch=max_batch)
    t = time.perf_counter()
    results: list[Result] = engine.run(requests)
    seconds = time.perf_counter() - t
    decode = [s.batch_size for s in engine.steps if not s.n_prefill]
    return {
        "throughput_tok_s": sum(len(r.tokens) for r in results) / seconds,
        "mean_decode_batch": statistics.mean(decode) if decode else 0.0,
        "preemptions": sum(r.preemptions for r in results),
        "max_batch": max_batch,
        "pages_per_request": per_request,
    }


def medians(runs: list[dict]) -> dict:
    """Each number's median over the rounds (anything else: the last round's)."""
    first = runs[0]
    return {
        k: statistics.median(r[k] for r in runs) if isinstance(first[k], (int, float)) else runs[-1][k] for k in first
    }


def main(argv=None) -> None:
    p = harness.parser(__doc__)
    p.add_argument("--checkpoint", help="a SwiGLU checkpoint of ours to serve (default: train one)")
    p.add_argument("--train-steps", type=int, default=150)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--budget-pages", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="serve_vs_transformers")
    args = p.parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import transformers

    from moe.training import load_model

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or train(f"{tmp}/run", args.train_steps)
        hf = export(checkpoint, f"{tmp}/hf")
        runs = {(w, rate, way): [] for w, rate in LOADS for way in WAYS[w]}
        model = load_model(checkpoint).eval()
        budget = {"reserve": [], "on-demand": []}
        for r in range(args.rounds):
            for w, rate in LOADS:
                ways = WAYS[w]
                for way in ways[r % len(ways) :] + ways[: r % len(ways)]:
                    runs[w, rate, way].append(http_run(way, w, rate, args, checkpoint, hf))
                    got = runs[w, rate, way][-1]
                    print(
                        f"round {r} {w:13} {rate:5.0f}/s {way:15} {got['throughput_tok_s']:7.1f} tok/s, "
                        f"TTFT p99 {got['ttft_p99_s']:.2f} s, failed {got['failed']}",
                        flush=True,
                    )
            for mode in ("reserve", "on-demand")[:: 1 if r % 2 == 0 else -1]:
                budget[mode].append(kv_budget_run(mode, model, args))
                print(f"round {r} kv-budget {mode:10} {budget[mode][-1]['throughput_tok_s']:7.1f} tok/s", flush=True)
    result = {
        "setup": {
            "checkpoint": args.checkpoint or f"tiny (SwiGLU) trained {args.train_steps} steps",
            "requests": args.requests,
            "prompt_len": PROMPT_LEN,
            "system_len": SYSTEM_LEN,
            "new_tokens": NEW,
            "budget_pages": args.budget_pages,
            "rounds": args.rounds,
            "transformers": transformers.__version__,
        },
        "http": [
            {"workload": w, "rate": rate, "server": way, **medians(v), "rounds": v}
            for (w, rate, way), v in runs.items()
        ],
        "kv_budget": [{"mode": m, **medians(v), "rounds": v} for m, v in budget.items()],
    }
    md = markdown(result)
    harness.write_result(
        args.out, args.name, result, md, by="bench.serve_vs_transformers", title="Our server against transformers serve"
    )
    print(md)


def markdown(result: dict) -> str:
    s = result["setup"]
    theirs = {(r["workload"], r["rate"]): r for r in result["http"] if r["server"] == "transformers"}
    http = [
        {
            "workload": r["workload"],
            "requests/s": r["rate"],
            "server": r["server"],
            "output tok/s": r["throughput_tok_s"],
            "x transformers": r["throughput_tok_s"] / theirs[r["workload"], r["rate"]]["throughput_tok_s"],
            "TTFT p50 s": r["ttft_p50_s"],
            "TTFT p99 s": r["ttft_p99_s"],
            "ITL p50 ms": 1e3 * r["itl_p50_s"],
            "prompt / output tokens": f"{r['prompt_tokens']} / {r['new_tokens']}",
            "failed": r["failed"],
        }
        for r in result["http"]
    ]
    budget = [
        {
            "KV pages": s["budget_pages"],
            "mode": r["mode"],
            "output tok/s": r["throughput_tok_s"],
            "mean decode batch": r["mean_decode_batch"],
            "preemptions": r["preemptions"],
        }
        for r in result["kv_budget"]
    ]
    return (
        f"{s['checkpoint']}; {s['requests']} greedy requests at Poisson arrivals, prompts of "
        f"{s['prompt_len']} tokens (shared-system: after one {s['system_len']}-token system prompt), "
        f"{s['new_tokens']} new tokens each; medians of {s['rounds']} rounds, servers alternated; "
        f"transformers {s['transformers']} (`transformers serve --continuous-batching`).\n\n"
        + harness.markdown_table(http)
        + f"\nA fixed KV budget, in process: {s['requests']} requests of {s['prompt_len']} + "
        f"{2 * s['new_tokens']} tokens submitted at once.\n\n" + harness.markdown_table(budget)
    )


if __name__ == "__main__":
    main()
