"""python -m moe serve against the official openai client and plain HTTP: the OpenAI API's shapes,
outputs equal to `generate` under concurrent load, errors in OpenAI's envelope, cancellation that
frees pages, backpressure, and SIGTERM. One server process serves the module; the reference is
`generate` on the same checkpoint in this process."""

import asyncio
import json
import random
import re
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
import torch
from conftest import NAME, shrunk, start_server, stop

from moe.model import MoETransformer
from moe.serving.generate import generate
from moe.training import load_model, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = shrunk("tiny", max_seq_len=96)
    torch.manual_seed(0)
    model = MoETransformer(cfg)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"), model, cfg)


@pytest.fixture(scope="module")
def server(checkpoint):
    proc, url = start_server(checkpoint, "--max-batch", 8, "--max-queued", 64, "--page-size", 8)
    yield url
    assert stop(proc) == 0


@pytest.fixture(scope="module")
def reference(checkpoint):
    model = load_model(checkpoint)
    return lambda prompt, n, **kw: generate(model, list(prompt), n, **kw)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)


def gauge(url, name) -> float:
    text = httpx.get(url + "/metrics").text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def pages_used(url) -> float:
    return gauge(url, "moe_kv_pages_used")


def settled_pages(url, within=10.0) -> float:
    """Pages in use once cancellations have reached the engine (they run between its steps)."""
    deadline = time.time() + within
    while (used := pages_used(url)) and time.time() < deadline:
        time.sleep(0.05)
    return used


def settled_queue(url, within=10.0) -> float:
    """Requests waiting once cancellations have reached the engine."""
    deadline = time.time() + within
    while (waiting := gauge(url, "moe_num_requests_waiting")) and time.time() < deadline:
        time.sleep(0.05)
    return waiting


def text_of(ids):
    return bytes(ids).decode("utf-8", errors="replace")


def test_completions_and_chat_through_the_openai_client(client, reference):
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]
    prompt = "To be, or not"
    out = client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0)
    want = reference(prompt.encode(), 12, greedy=True)
    assert out.choices[0].text == text_of(want) and out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(prompt.encode()), 12)
    streamed = list(client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == out.choices[0].text
    assert streamed[-1].choices[0].finish_reason == "length"

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is there?"}]
    chat = client.chat.completions.create(model=NAME, messages=messages, max_tokens=10, temperature=0)
    rendered = "system: Be brief.\nuser: Who is there?\nassistant:"
    assert chat.choices[0].message.content == text_of(reference(rendered.encode(), 10, greedy=True))
    assert chat.usage.prompt_tokens == len(rendered)
    parts = list(
        client.chat.completions.create(
            model=NAME,
            messages=messages,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == chat.choices[0].message.content
    assert parts[-1].choices == [] and parts[-1].usage.completion_tokens == 10


def test_greedy_and_seeded_outputs_equal_generate_under_concurrent_load(server, reference):
    """32 requests at once, mixed greedy and seeded sampling, token-id and text prompts, n=2: each
    choice is what `generate` gives the same prompt and seed alone."""
    client = openai.AsyncOpenAI(base_url=server + "/v1", api_key="none", max_retries=0)
    prompts = [[(7 * i + j) % 250 + 3 for j in range(1 + i % 9)] for i in range(32)]

    async def one(i):
        kw = dict(temperature=0) if i % 2 else dict(temperature=0.9, top_p=0.9, seed=100 + i)
        return await client.completions.create(model=NAME, prompt=prompts[i], max_tokens=4 + i % 7, n=2, **kw)

    async def all_of():
        return await asyncio.gather(*(one(i) for i in range(32)))

    outs = asyncio.run(all_of())
    for i, out in enumerate(outs):
        n = 4 + i % 7
        for c in out.choices:
            kw = dict(greedy=True) if i % 2 else dict(temperature=0.9, top_p=0.9, seed=100 + i + c.index)
            assert c.text == text_of(reference(prompts[i], n, **kw)), (i, c.index)
            assert c.finish_reason == "length"
        assert out.usage.completion_tokens == 2 * n
    assert pages_used(server) == 0


def test_logprobs_and_echo_match_the_model(client, checkpoint, reference):
    """logprobs are log_softmax of the model's logits at each position, from one plain forward; echo
    puts the prompt first with its own logprobs (the first token has none)."""
    model = load_model(checkpoint)
    prompt = [40, 41, 42, 43, 44]
    out = client.completions.create(model=NAME, prompt=prompt, max_tokens=5, temperature=0, logprobs=3, echo=True)
    lp = out.choices[0].logprobs
    ids = prompt + reference(prompt, 5, greedy=True)
    assert len(lp.tokens) == len(ids) == 10 and lp.token_logprobs[0] is None
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    for i in range(1, len(ids)):
        assert lp.token_logprobs[i] == pytest.approx(float(ref[i - 1, ids[i]]), abs=1e-4)
        best = ref[i - 1].topk(3)
        assert list(lp.top_logprobs[i].values()) == pytest.approx(best.values.tolist(), abs=1e-4)
    for i in range(len(prompt), len(ids)):  # greedy: each generated token is the best one
        assert lp.token_logprobs[i] == pytest.approx(max(lp.top_logprobs[i].values()), abs=1e-9)


def test_stop_strings_and_stop_token_ids(client, reference):
    prompt = "Hello"
    full = text_of(reference(prompt.encode(), 20, greedy=True))
    cut = full[3:5]
    out = client.completions.create(model=NAME, prompt=prompt, max_tokens=20, temperature=0, stop=[cut])
    assert out.choices[0].text == full[: full.index(cut)] and out.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=NAME, prompt=prompt, max_tokens=20, temperature=0, stop=cut, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == out.choices[0].text
    token = full.encode()[6]
    out = client.completions.create(
        model=NAME, prompt=prompt, max_tokens=20, temperature=0, extra_body={"stop_token_ids": [token]}
    )
    ids = reference(prompt.encode(), 20, greedy=True, stop_tokens=(token,))
    # the stop token ends it and counts as generated, but its text is not returned (as vLLM, OpenAI)
    assert out.choices[0].text == text_of(ids[:-1]) and out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens == len(ids) and ids[-1] == token


def test_a_shared_system_prompt_hits_the_prefix_cache(server, client, reference):
    """Five chat-free completions after one 40-byte system prompt (five pages of 8): from the second
    on, its pages come from the prefix cache (/metrics counts the hits) and outputs equal `generate`."""

    def counter(name):
        return float(re.search(rf"^{name} (\S+)$", httpx.get(server + "/metrics").text, re.M).group(1))

    system = "You are a careful assistant. Answer: yes"
    hits = counter("moe_prefix_cache_hits_total")
    for i in range(5):
        prompt = system + f" {i}?"
        out = client.completions.create(model=NAME, prompt=prompt, max_tokens=5, temperature=0)
        assert out.choices[0].text == text_of(reference(prompt.encode(), 5, greedy=True))
    assert counter("moe_prefix_cache_hits_total") - hits >= 4 * 40
    assert counter("moe_prefix_cache_queries_total") >= counter("moe_prefix_cache_hits_total")


def test_serve_bench_drives_the_server_over_http(server, tmp_path):
    """serve-bench --url: Poisson arrivals as streamed completions; every request comes back whole
    (the server's usage counts), latencies are measured, and the summary is written."""
    r = subprocess.run(
        [sys.executable, "-m", "moe", "serve-bench", "--url", server, "--model", NAME, "--requests", "12"]
        + ["--rate", "40", "--prompt-len", "16", "--max-new-tokens", "10", "--greedy", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "serve-http.json").read_text())
    assert summary["failed"] == 0 and summary["new_tokens"] == 12 * 10
    assert 0 < summary["ttft_s"]["p50"] <= summary["ttft_s"]["p99"] and summary["itl_s"]["p50"] > 0
    assert "throughput" in r.stdout
    # As text, for servers that take only strings, and without ignore_eos: the server counts the
    # same prompt tokens, so the load is the same.
    r = subprocess.run(
        [sys.executable, "-m", "moe", "serve-bench", "--url", server, "--requests", "6", "--rate", "40"]
        + ["--prompt-len", "16", "--max-new-tokens", "5", "--greedy", "--text-prompts", "--no-ignore-eos"]
        + ["--out", str(tmp_path), "--name", "text"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "text.json").read_text())
    assert summary["failed"] == 0 and summary["prompt_tokens"] == 6 * 16 and summary["new_tokens"] == 6 * 5
    bad = subprocess.run(
        [sys.executable, "-m", "moe", "serve-bench", "--url", "localhost:1"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--url must start with http://" in bad.stderr


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 2.5}, "max_tokens"),
        ({"prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"prompt": "x", "temperature": -0.5}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "top_p": 1.5}, "top_p"),
        ({"prompt": "x", "max_tokens": 96}, "max_tokens"),  # 1 + 96 passes the context of 96
        ({"prompt": [1, 2, 256]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "stop": 3}, "stop"),
        ({"prompt": "x", "stop_token_ids": [999]}, "stop_token_ids"),
        ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
        ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),  # neutral is 1, not 0
        ({"prompt": "x", "temperature": 10**400}, "temperature"),  # past float: not an OverflowError
        ({"prompt": "x", "n": 65}, "n"),
    ],
)
def test_bad_fields_are_400_in_openai_envelope(server, body, param):
    r = httpx.post(server + "/v1/completions", json={"model": NAME, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_malformed_bodies_unknown_models_and_nonfinite_numbers(server):
    r = httpx.post(server + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(server + "/v1/completions", content=b'{"prompt": "x", "temperature": NaN}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = httpx.post(server + "/v1/chat/completions", json={"model": NAME, "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(server + "/v1/completions", json={"model": "gpt-4", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.get(server + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    neutral = {"presence_penalty": 0, "frequency_penalty": 0.0, "repetition_penalty": 1.0}  # what clients send
    assert httpx.post(server + "/v1/completions", json={"prompt": "x", "max_tokens": 1, **neutral}).status_code == 200


def test_a_client_that_leaves_mid_stream_frees_its_pages(server):
    """Three streams of 80 tokens each; their clients read a few chunks and close. Within a few
    steps the engine holds no page and no request, and the metrics count them cancelled."""
    for _ in range(3):
        with httpx.stream(
            "POST", server + "/v1/completions", json={"prompt": "a", "max_tokens": 90, "stream": True}
        ) as r:
            for i, _line in enumerate(r.iter_lines()):
                if i > 4:
                    break
    assert settled_pages(server) == 0
    text = httpx.get(server + "/metrics").text
    assert float(re.search(r'moe_request_success_total\{finished_reason="cancelled"\} (\S+)', text).group(1)) >= 3


def test_metrics_report_latency_tokens_and_expert_batches(server, client):
    client.completions.create(model=NAME, prompt="abc", max_tokens=6, temperature=0)
    text = httpx.get(server + "/metrics").text
    for name in (
        "moe_time_to_first_token_seconds_count",
        "moe_inter_token_latency_seconds_count",
        "moe_e2e_request_latency_seconds_count",
        "moe_request_queue_time_seconds_count",
        "moe_generation_tokens_total",
        "moe_prompt_tokens_total",
        "moe_kv_pages_total",
    ):
        assert re.search(rf"^{name} [1-9]", text, re.M), name
    for name in ("moe_num_requests_running", "moe_num_requests_waiting", "moe_kv_pages_used"):
        assert re.search(rf"^{name} 0\.0$", text, re.M), name  # idle again
    # each decode step observes every expert of every layer once, and routes each of its tokens to
    # top_k = 2 experts per layer: per layer, the tokens the experts received sum to 2 per decode token
    sums = re.findall(r'moe_expert_tokens_per_step_sum\{expert="(\d+)",layer="(\d+)"\} (\S+)', text)
    counts = re.findall(r'moe_expert_tokens_per_step_count\{expert="(\d+)",layer="(\d+)"\} (\S+)', text)
    assert len(sums) == len(counts) == 2 * 16 and len({c[2] for c in counts}) == 1
    per_layer = [sum(float(v) for _, layer, v in sums if layer == str(i)) for i in range(2)]
    assert per_layer[0] == per_layer[1] > 0 and per_layer[0] % 2 == 0


def test_a_bounded_load_through_a_small_pool_loses_nothing(checkpoint, reference):
    """200 greedy requests, 32 at a time, through a pool of 20 pages (a few requests' worth) with
    prompts prefilled in chunks of 16 tokens: every request gets exactly its max_tokens, each of the
    first 40 equals `generate`, requests were preempted and recomputed, and no page is left held."""
    proc, url = start_server(
        checkpoint, "--max-batch", 8, "--page-size", 8, "--kv-budget-mb", 0.02, "--max-batch-tokens", 16
    )
    try:
        rng = random.Random(5)
        jobs = [([rng.randrange(256) for _ in range(rng.randint(1, 30))], rng.randint(1, 24)) for _ in range(200)]

        async def load():
            gate = asyncio.Semaphore(32)
            async with httpx.AsyncClient(timeout=120) as c:

                async def one(prompt, n):
                    async with gate:
                        body = {"prompt": prompt, "max_tokens": n, "temperature": 0}
                        return (await c.post(url + "/v1/completions", json=body)).json()

                return await asyncio.gather(*(one(p, n) for p, n in jobs))

        answers = asyncio.run(load())
        assert len({a["id"] for a in answers}) == 200
        for (_, n), a in zip(jobs, answers):
            assert a["usage"]["completion_tokens"] == n and a["choices"][0]["finish_reason"] == "length", a
        for (prompt, n), a in list(zip(jobs, answers))[:40]:
            assert a["choices"][0]["text"] == text_of(reference(prompt, n, greedy=True))
        text = httpx.get(url + "/metrics").text
        assert float(re.search(r"^moe_num_preemptions_total (\S+)$", text, re.M).group(1)) > 0
        assert float(re.search(r"^moe_kv_pages_total (\S+)$", text, re.M).group(1)) == 20
        assert pages_used(url) == 0
    finally:
        assert stop(proc) == 0


@pytest.fixture(scope="module")
def slow_checkpoint(tmp_path_factory):
    """A model wide enough that 90 tokens take seconds on any CPU, so a 0.5 s timeout always bites."""
    cfg = shrunk("tiny", d_model=512, n_heads=8, d_ff=1024, n_layers=4, max_seq_len=96)
    return save_checkpoint(tmp_path_factory.mktemp("slow"), MoETransformer(cfg), cfg)


def test_a_full_queue_is_429_a_slow_request_504_and_sigterm_exits_0(slow_checkpoint):
    """A server with one row, two queue places and a 0.5 s timeout on a model that needs seconds for
    90 tokens. Of six 90-token requests at once the ones past the queue get 429, the rest 504; a
    stream ends in a timeout error event; every page is back. Then SIGTERM during traffic exits 0
    with every request answered."""
    proc, url = start_server(
        slow_checkpoint, "--max-batch", 1, "--max-queued", 2, "--request-timeout", 0.5, "--grace-period", 5
    )
    try:
        body = {"prompt": "z", "max_tokens": 90, "temperature": 0}

        async def burst():
            async with httpx.AsyncClient(timeout=30) as c:
                return await asyncio.gather(*(c.post(url + "/v1/completions", json=body) for _ in range(6)))

        answers = asyncio.run(burst())
        codes = sorted(r.status_code for r in answers)
        assert 429 in codes and set(codes) == {429, 504}, codes
        for r in answers:
            assert r.json()["error"]["type"] == ("rate_limit_error" if r.status_code == 429 else "timeout")
        assert settled_queue(url) == 0  # the timed-out ones' cancellations have run: the stream is not a 429
        with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert json.loads(events[-1][6:])["error"]["type"] == "timeout", events[-3:]
        assert settled_pages(url) == 0

        async def during():
            async with httpx.AsyncClient(timeout=30) as c:
                short = {"prompt": "q", "max_tokens": 2, "temperature": 0}
                tasks = [asyncio.ensure_future(c.post(url + "/v1/completions", json=short)) for _ in range(2)]
                await asyncio.sleep(0.2)
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks, return_exceptions=True)

        answered = asyncio.run(during())
        assert all(isinstance(r, httpx.Response) and r.status_code in (200, 504) for r in answered), answered
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
