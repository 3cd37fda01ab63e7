"""serve-bench --url: the same Poisson arrivals and prompts as moe/serving/replay.py, sent to any
OpenAI-compatible server (ours, vLLM, SGLang, llama.cpp, ...) as streamed /v1/completions.

Each request is sent at its arrival time with its prompt as token ids (or as text, for servers
that take only strings, such as `transformers serve`), max_tokens, ignore_eos (so every request
generates its full length where the server honours it; left out for servers that refuse unknown
fields) and the sampling settings; the stream is read as it comes. The prompt tokens the server
counted come back in the summary: the same as ours where it tokenized the text as we do.
Measured on this side of the wire:
  TTFT        first text chunk's arrival - the request's arrival time
  ITL         (last chunk - first chunk) / (completion tokens - 1), one value per request (a chunk
              may carry several tokens, so per-chunk gaps would not be per-token latencies)
  throughput  completion tokens (the server's usage counts) / (last completion - first arrival)
A request that fails (an HTTP error, a broken stream) is counted and reported, not retried.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np

from moe.serving.replay import percentiles, print_latencies
from moe.serving.request import Request


async def _one(client, url: str, request: Request, arrival: float, t0: float, fields: dict, text) -> dict:
    await asyncio.sleep(max(0.0, t0 + arrival - time.perf_counter()))
    sent = time.perf_counter()
    sampling = dict(request.sampling or {})
    body = {
        "prompt": list(request.prompt) if text is None else text(list(request.prompt)),
        "max_tokens": request.max_new_tokens,
        "temperature": 0.0 if sampling.get("greedy") else sampling.get("temperature", 1.0),
        "seed": request.seed,
        "stream": True,
        "stream_options": {"include_usage": True},
        **fields,
    }
    for key in ("top_p", "top_k"):
        if sampling.get(key) is not None:
            body[key] = sampling[key]
    first = last = None
    tokens, prompt_tokens, error = None, None, None
    try:
        async with client.stream("POST", url.rstrip("/") + "/v1/completions", json=body) as r:
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:200]}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    error = str(chunk["error"].get("message"))
                    break
                if chunk.get("usage"):
                    tokens, prompt_tokens = chunk["usage"]["completion_tokens"], chunk["usage"].get("prompt_tokens")
                if any(c.get("text") for c in chunk.get("choices") or []):
                    now = time.perf_counter()
                    first = first or now
                    last = now
    except Exception as e:  # the server went away, a broken stream: counted as failed
        error = f"{type(e).__name__}: {e}"
    if error or first is None:
        return {"error": error or "no text came back"}
    return {
        "arrival": t0 + arrival,
        "sent_s": sent - (t0 + arrival),
        "ttft": first - (t0 + arrival),
        "end": last,
        "tokens": tokens,
        "prompt_tokens": prompt_tokens,
        "itl": (last - first) / (tokens - 1) if tokens and tokens > 1 else None,
    }


async def _replay(url, requests, arrivals, concurrency_limit, fields, text) -> tuple[list[dict], float]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency_limit, max_keepalive_connections=concurrency_limit)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        t0 = time.perf_counter()
        out = await asyncio.gather(*(_one(client, url, r, a, t0, fields, text) for r, a in zip(requests, arrivals)))
    return out, t0


def replay_http(
    url: str,
    requests: list[Request],
    rate: float,
    seed: int = 0,
    model: str | None = None,
    connections: int = 256,
    text=None,
    ignore_eos: bool = True,
) -> dict:
    """Send requests at Poisson arrival times (the same as replay's for the same seed); the summary.
    text(ids) -> str: send each prompt as this text instead of its token ids; ignore_eos=False
    leaves that field out."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0 requests per second, got {rate}")
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1 / rate, len(requests)))
    fields = {"ignore_eos": True} if ignore_eos else {}
    if model is not None:
        fields["model"] = model
    results, _ = asyncio.run(_replay(url, requests, arrivals, connections, fields, text))
    ok = [r for r in results if "error" not in r]
    failed = [r["error"] for r in results if "error" in r]
    if not ok:
        raise RuntimeError(f"no request succeeded against {url}: {failed[0] if failed else 'none sent'}")
    n_tokens = sum(r["tokens"] or 0 for r in ok)
    wall = max(r["end"] for r in ok) - min(r["arrival"] for r in ok)
    return {
        "url": url,
        "requests": len(results),
        "failed": len(failed),
        "errors": sorted(set(failed))[:5],
        "new_tokens": n_tokens,
        "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in ok),  # as the server counted them
        "wall_s": wall,
        "throughput_tok_s": n_tokens / wall,
        "ttft_s": percentiles([r["ttft"] for r in ok]),
        "itl_s": percentiles([r["itl"] for r in ok if r["itl"] is not None]),
        "send_lag_s": percentiles([r["sent_s"] for r in ok]),  # how late the client sent: should be ~0
    }


def print_summary(s: dict, header: str) -> None:
    print(header)
    print(
        f"requests {s['requests']} ({s['failed']} failed), new tokens {s['new_tokens']}, {s['wall_s']:.1f} s, "
        f"throughput {s['throughput_tok_s']:.1f} tokens/s"
    )
    print_latencies(s)
    for e in s["errors"]:
        print(f"error: {e}")
