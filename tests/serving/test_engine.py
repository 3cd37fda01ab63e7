"""The serving engine (moe/serving/engine.py) against `generate`, one request at a time, and the paged cache
against a full forward. Models are float64 so batching cannot flip an argmax by rounding."""

import copy
import random
import re

import pytest
import torch
from conftest import ROUTING, shrunk

from moe.model import MoETransformer, Positions
from moe.serving import Engine, Request, RequestError
from moe.serving.generate import generate


def tiny_model(**overrides):
    return MoETransformer(shrunk("tiny", **overrides)).double().eval()


def random_requests(n, seed, sampling, max_prompt=20, max_new=12):
    rng = random.Random(seed)
    return [
        Request(
            [rng.randrange(256) for _ in range(rng.randint(1, max_prompt))],
            rng.randint(1, max_new),
            sampling=sampling,
            seed=seed + i,
        )
        for i in range(n)
    ]


def alone(model, req: Request, stop_tokens=()):
    s = req.sampling or {}
    return generate(model, req.prompt, req.max_new_tokens, seed=req.seed, stop_tokens=stop_tokens, **s)


def test_paged_cache_rows_at_different_positions_equal_full_forwards():
    model = tiny_model()
    seqs = [torch.randint(0, 256, (n,)) for n in (11, 5, 8)]
    full = [model(s[None]).logits[0] for s in seqs]
    model.setup_paged_caches(n_pages=12, page_size=4)
    tables = torch.tensor([[7, 2, 9], [0, 11, 4], [5, 1, 3]])  # scattered pages
    # Step 1: prefill different lengths (padded); step 2: the rest, again ragged.
    cut = [6, 2, 8]
    got = [[] for _ in seqs]
    for lo, hi in [((0, 0, 0), cut), (cut, [len(s) for s in seqs])]:
        T = max(h - l for l, h in zip(lo, hi))
        idx = torch.zeros(3, max(T, 1), dtype=torch.long)
        pos = torch.full((3, max(T, 1)), -1)
        for b, (s, l, h) in enumerate(zip(seqs, lo, hi)):
            idx[b, : h - l], pos[b, : h - l] = s[l:h], torch.arange(l, h)
        out = model(idx, Positions.paged(pos, tables, 4))
        for b, (l, h) in enumerate(zip(lo, hi)):
            got[b].append(out.logits[b, : h - l])
        # the routing saw only real tokens
        assert sum(out.routing[0].tokens_per_expert) == 2 * sum(h - l for l, h in zip(lo, hi))
    for g, f in zip(got, full):
        torch.testing.assert_close(torch.cat(g), f, atol=1e-7, rtol=1e-6)  # float32 router: see test_model


def test_greedy_batched_equals_each_request_alone_and_queues_when_the_budget_is_full():
    model = tiny_model()
    reqs = random_requests(10, seed=0, sampling={"greedy": True})
    engine = Engine(model, n_pages=14, page_size=4, max_batch=6)
    results = engine.run(reqs)
    for req, res in zip(reqs, results):
        assert res.tokens == alone(model, req)
        assert res.finish_reason == "length" and len(res.tokens) == req.max_new_tokens
    sizes = [s.batch_size for s in engine.steps]
    assert len(set(sizes)) > 2  # the batch size varied from step to step
    assert max(sizes) < len(reqs)  # the page budget made requests wait in the queue
    assert any(0 < s.n_prefill < s.batch_size for s in engine.steps)  # a prefill joined running decodes
    assert len(engine.free_pages) == engine.n_pages and not engine.running  # every page came back


def test_sampled_output_depends_on_the_seed_not_the_batch():
    model = tiny_model()
    sampling = {"temperature": 1.0, "top_k": 100, "top_p": 0.95}
    reqs = random_requests(6, seed=5, sampling=sampling)
    batched = Engine(model, n_pages=60, page_size=4).run(reqs)
    for req, res in zip(reqs, batched):
        assert res.tokens == alone(model, req)  # generate() draws the same uniforms in the same order
    other = Engine(model, n_pages=60, page_size=4).run(reqs[3:4] + random_requests(4, seed=9, sampling=sampling))
    assert other[0].tokens == batched[3].tokens
    reseeded = Engine(model, n_pages=60, page_size=4).run([Request(reqs[3].prompt, 12, sampling, seed=1234)])
    assert reseeded[0].tokens != batched[3].tokens[:12] or len(batched[3].tokens) < 4


def test_stop_tokens_end_a_request_early():
    model = tiny_model()
    prompt = [3, 1, 4, 1, 5]
    free = generate(model, prompt, 20, greedy=True)
    stop = free[4]  # the fifth token the model chooses
    res = Engine(model, n_pages=20, page_size=4).run([Request(prompt, 20, {"greedy": True}, stop_tokens=(stop,))])[0]
    assert res.finish_reason == "stop" and res.tokens == free[: free.index(stop) + 1]
    assert res.tokens == generate(model, prompt, 20, greedy=True, stop_tokens=(stop,))


RULES = {**{k: v for k, v in ROUTING.items() if k != "expert-choice"}, "olmoe": dict(router_renormalize=False, top_k=4)}


@pytest.mark.parametrize("rule", RULES)
def test_every_routing_rule_is_batch_invariant_and_counts_its_experts(rule):
    """Greedy and seeded outputs through continuous batching equal `generate` alone for each rule;
    each step's expert counts are its tokens times top_k, the shared expert's counted apart."""
    torch.manual_seed(0)
    model = tiny_model(**RULES[rule])
    if model.cfg.router_score_bias:
        for block in model.blocks:
            block.moe.router.score_bias.normal_(std=0.02)
    reqs = random_requests(5, seed=3, sampling={"greedy": True}) + random_requests(
        3, seed=7, sampling={"temperature": 1.0, "top_p": 0.9}
    )
    engine = Engine(model, n_pages=40, page_size=4, max_batch=5)
    for req, res in zip(reqs, engine.run(reqs)):
        assert res.tokens == alone(model, req)
    cfg = model.cfg
    for s in engine.steps:
        assert all(sum(layer) == s.n_tokens * cfg.top_k for layer in s.tokens_per_expert)
        assert s.shared_tokens == (s.n_tokens if cfg.shared_d_ff else 0)


def test_expert_choice_is_refused_by_name_for_generation():
    model = tiny_model(router_rule="expert_choice")
    for start in (lambda: Engine(model, n_pages=8), lambda: generate(model, [1, 2], 3)):
        with pytest.raises(ValueError, match="expert_choice.*not causal"):
            start()


def test_step_statistics_count_every_routed_token():
    cfg = shrunk("tiny")
    model = tiny_model()
    engine = Engine(model, n_pages=40, page_size=8)
    engine.run([Request(list(range(1, 2 + i)), 6, {"greedy": True}) for i in range(8)])
    for s in engine.steps:
        assert len(s.tokens_per_expert) == cfg.n_layers
        assert all(
            len(layer) == cfg.n_experts and sum(layer) == s.n_tokens * cfg.top_k for layer in s.tokens_per_expert
        )
    decode_8 = [s for s in engine.steps if s.n_prefill == 0 and s.batch_size == 8]
    assert decode_8 and all(s.n_tokens == 8 for s in decode_8)


def test_bad_requests_get_their_own_error_and_the_rest_are_served():
    model = tiny_model()  # max_seq_len 64
    engine = Engine(model, n_pages=6, page_size=8)  # 48 positions in all
    good = Request([1, 2, 3], 5, {"greedy": True})
    bad = [
        ("longer than max_seq_len", Request([1] * 65, 1)),
        ("exceeds max_seq_len", Request([1] * 40, 30)),
        ("can never fit", Request([1] * 40, 20)),
        (r"unknown sampling setting\(s\) \['temprature'\]", Request([1], 3, {"temprature": 0.1})),
        ("top_p", Request([1], 3, {"top_p": 2.0})),
        ("prompt tokens must be integers in", Request([1, 300], 3)),
        ("prompt is empty", Request([], 3)),
        ("max_new_tokens must be", Request([1], 0)),
        # a wrong type in every field: each is this request's error, not a TypeError out of run()
        ("the prompt must be a list of token ids .*got NoneType", Request(None, 4)),
        ("the prompt must be a list of token ids .*got int", Request(5, 4)),
        (r"the prompt must be .*got Tensor \(call .tolist\(\)", Request(torch.tensor([1, 2]), 4)),
        ("the prompt must be a list of token ids .*got str", Request("abc", 4)),
        ("prompt tokens must be integers in", Request([1.0, 2.0], 4)),
        ("max_new_tokens must be an integer", Request([1], "4")),
        ("max_new_tokens must be an integer", Request([1], None)),
        ("sampling settings must be a dict", Request([1], 3, "greedy")),
        ("temperature must be a finite number", Request([1], 3, {"temperature": "hot"})),
        ("top_k must be an integer", Request([1], 3, {"top_k": 2.5})),
        ("greedy must be true or false", Request([1], 3, {"greedy": "yes"})),
        ("stop_tokens must be a list of token ids", Request([1], 3, stop_tokens=7)),
        (r"stop_tokens must be token ids in \[0, 256\)", Request([1], 3, stop_tokens=(10**6,))),
        ("stop_tokens must be token ids", Request([1], 3, stop_tokens=[None])),
        ("seed must be an integer", Request([1], 3, seed="0")),
        (r"seed must be an integer in \[0, 2\*\*64\)", Request([1], 3, seed=-1)),
        ("images must be a list", Request([1], 3, images=5)),
        ("reads no images", Request([1], 3, images=[torch.zeros(1, 8, 8)])),
        ("expected a moe.serving.Request, got dict", {"prompt": [1], "max_new_tokens": 3}),
    ]
    results = engine.run([good, *(r for _, r in bad), good])
    for (pattern, req), res in zip(bad, results[1:-1]):
        assert isinstance(res, RequestError) and re.search(pattern, str(res)), (pattern, res)
        assert pytest.raises(RequestError, engine.submit, req).match(pattern)
    assert results[0].tokens == results[-1].tokens == alone(model, good)
    assert not engine.has_work() and len(engine.free_pages) == engine.n_pages  # nothing held by the refused


def test_cancel_takes_a_request_out_wherever_it_is_and_returns_its_pages():
    """Cancelled while running and while queued: their pages are free at once, the rest of the batch
    still equals `generate`, and a finished or unknown id is not cancelled twice."""
    model = tiny_model()
    reqs = random_requests(6, seed=7, sampling={"greedy": True}, max_new=12)
    engine = Engine(model, n_pages=40, page_size=4, max_batch=2)
    ids = [engine.submit(r) for r in reqs]
    engine.step()
    engine.step()
    running, queued = engine.running[0].id, engine.queue[-1].id
    held = len(engine.running[0].pages)
    free = len(engine.free_pages)
    assert engine.cancel(running) and len(engine.free_pages) == free + held
    assert engine.cancel(queued) and engine.results[queued].tokens == []
    while engine.has_work():
        engine.step()
    for rid, req in zip(ids, reqs):
        res = engine.results[rid]
        if rid in (running, queued):
            assert res.finish_reason == "cancelled" and res.tokens == alone(model, req)[: len(res.tokens)]
        else:
            assert res.tokens == alone(model, req)
    assert not engine.cancel(ids[0]) and not engine.cancel(999)
    assert len(engine.free_pages) == engine.n_pages


@pytest.mark.parametrize("with_draft", [False, True])
def test_logprobs_are_the_models_log_softmax_at_each_position(with_draft):
    """Result.logprobs (and prompt_logprobs) against one plain forward over prompt + output: the
    chosen token's log-probability and the top 3, with or without a draft proposing tokens."""
    model = tiny_model()
    draft = copy.deepcopy(model) if with_draft else None
    reqs = [Request([5, 9, 2, 7], 10, {"temperature": 1.0}, seed=s, logprobs=3, prompt_logprobs=True) for s in (1, 2)]
    for req, res in zip(reqs, Engine(model, n_pages=20, page_size=4, draft=draft).run(reqs)):
        ids = req.prompt + res.tokens
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        entries = res.prompt_logprobs + res.logprobs
        assert entries[0] is None and len(entries) == len(ids)
        for i in range(1, len(ids)):
            e = entries[i]
            assert e.token == ids[i] and e.logprob == pytest.approx(
                float(ref[i - 1, ids[i]]), abs=1e-5
            )  # float32 logits
            best = ref[i - 1].topk(3)
            assert [t for t, _ in e.top] == best.indices.tolist()
    with pytest.raises(RequestError, match="logprobs must be an integer"):
        Engine(model, n_pages=20).submit(Request([1], 2, logprobs=21))


@pytest.mark.parametrize("with_draft", [False, True])
def test_pages_on_demand_preempt_the_newest_and_keep_outputs_exact(with_draft):
    """A pool of 12 pages of 4 positions for 12 requests that need up to 8 pages each alone: they are
    admitted on their prompts' pages, grow a page at a time, and when the pool runs dry the newest is
    preempted and later recomputed. Greedy and seeded outputs still equal `generate`; more rows ran at
    once than reserving each request's worst case would have allowed; every page comes back. (With a
    draft, sampled tokens follow the target's distribution exactly but are not `generate`'s draws:
    those are held against the same engine with room for everything.)"""
    model = tiny_model()
    draft = tiny_model(n_layers=1) if with_draft else None
    reqs = random_requests(6, seed=11, sampling={"greedy": True}, max_prompt=8, max_new=24)
    reqs += random_requests(6, seed=12, sampling={"temperature": 1.0, "top_k": 50}, max_prompt=8, max_new=24)
    engine = Engine(model, n_pages=12, page_size=4, max_batch=8, draft=draft, draft_tokens=2)
    results = engine.run(reqs)
    roomy = Engine(model, n_pages=100, page_size=4, max_batch=8, draft=draft, draft_tokens=2).run(reqs)
    for req, res, ref in zip(reqs, results, roomy):
        assert res.tokens == (ref.tokens if draft and "greedy" not in req.sampling else alone(model, req))
        assert res.finish_reason == "length" and ref.preemptions == 0
    assert sum(r.preemptions for r in results) > 0 and sum(s.n_preempted for s in engine.steps) > 0
    worst = sorted(engine.pages_needed(r) for r in reqs)
    at_once = max(i for i in range(len(worst) + 1) if sum(worst[:i]) <= engine.n_pages)
    assert max(s.batch_size for s in engine.steps) > at_once  # on-demand pages ran more rows together
    assert len(engine.free_pages) == engine.n_pages and not engine.running


def test_chunked_prefill_keeps_outputs_and_prompt_logprobs_exact():
    """max_batch_tokens 6: prompts of up to 30 tokens are prefilled over several steps beside the
    running decodes, which keep decoding; outputs and prompt logprobs equal the unchunked engine's."""
    model = tiny_model()
    reqs = [
        Request(list(range(3 + i, 3 + i + 4 + 6 * i)), 6, {"greedy": True}, logprobs=2, prompt_logprobs=True)
        for i in range(5)
    ]
    chunked = Engine(model, n_pages=60, page_size=4, max_batch_tokens=6)
    unchunked = Engine(model, n_pages=60, page_size=4)
    whole = unchunked.run(reqs)
    for req, c, w in zip(reqs, chunked.run(reqs), whole):
        assert c.tokens == w.tokens == alone(model, req)
        assert len(c.prompt_logprobs) == len(w.prompt_logprobs) == len(req.prompt) and c.prompt_logprobs[0] is None
        for a, b in zip(c.prompt_logprobs[1:], w.prompt_logprobs[1:]):
            assert a.token == b.token and a.logprob == pytest.approx(b.logprob, abs=1e-6)  # float32 logits
    steps = chunked.steps
    assert all(s.n_tokens <= 6 or s.n_tokens == s.batch_size for s in steps)  # the budget (decodes always run)
    assert any(0 < s.n_prefill < s.batch_size for s in steps)  # a chunk beside decoding rows
    assert len(steps) > len(unchunked.steps) + 5  # the long prompts took several steps each
    assert max(s.n_tokens for s in unchunked.steps) > 30
    with pytest.raises(ValueError, match="max_batch_tokens"):
        Engine(model, n_pages=4, max_batch_tokens=0)


def test_prompt_logprobs_survive_a_preemption_in_the_middle_of_a_chunked_prefill():
    """Long prompts prefilled 6 tokens a step through a pool too small for all of them: a row
    preempted part-way through its prompt records its prompt logprobs again from the start, whole."""
    model = tiny_model()
    reqs = [
        Request(list(range(5 + i, 35 + i)), 8, {"greedy": True}, logprobs=0, prompt_logprobs=True) for i in range(4)
    ]
    squeezed = Engine(model, n_pages=14, page_size=4, max_batch_tokens=6)
    results = squeezed.run(reqs)
    assert sum(r.preemptions for r in results) > 0
    roomy = Engine(model, n_pages=100, page_size=4).run(reqs)
    for req, res, ref in zip(reqs, results, roomy):
        assert res.tokens == ref.tokens and len(res.prompt_logprobs) == len(req.prompt)
        for a, b in zip(res.prompt_logprobs[1:], ref.prompt_logprobs[1:]):
            assert a.token == b.token and a.logprob == pytest.approx(b.logprob, abs=1e-6)


def test_prefix_caching_shares_prompt_pages_and_keeps_outputs_exact():
    """Requests that share a 23-token system prompt (5 full pages of 4) and repeat whole prompts:
    the later ones find those pages cached and compute fewer tokens, outputs (greedy and seeded)
    equal `generate`; a pool of 16 pages evicts idle prefixes least recently used and stays exact;
    at the end no page is held."""
    model = tiny_model()
    system = list(range(40, 63))
    rng = random.Random(3)
    prompts = [system + [rng.randrange(256) for _ in range(rng.randint(1, 9))] for _ in range(8)]
    prompts += [prompts[0], prompts[1], system[:20], system[:21]]  # repeats; a prompt of exactly 5 pages
    reqs = [Request(p, 6, {"greedy": True} if i % 2 else {"temperature": 1.0}, seed=i) for i, p in enumerate(prompts)]
    expected = [alone(model, req) for req in reqs]
    for n_pages in (200, 16):
        warm = Engine(model, n_pages=n_pages, page_size=4, max_batch=4, prefix_caching=True)
        assert [r.tokens for r in warm.run(reqs)] == expected
        assert warm.pool.hit_tokens >= 4 * 5 * 4 and warm.pool.hit_tokens <= warm.pool.queried_tokens
        assert warm.pool.held == 0 and not warm.running and (warm.pool.evicted > 0) == (n_pages == 16)
        cold = Engine(model, n_pages=n_pages, page_size=4, max_batch=4)
        cold.run(reqs)
        assert sum(s.n_tokens for s in warm.steps) < sum(s.n_tokens for s in cold.steps) - 80
    with pytest.raises(ValueError, match="prefix_caching is for a text model without a draft"):
        Engine(model, n_pages=8, draft=tiny_model(), prefix_caching=True)


def test_engine_setup_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="different vocabularies"):
        Engine(model, n_pages=4, draft=tiny_model(vocab_size=128))
    with pytest.raises(ValueError, match="holds no page"):
        Engine(model, kv_budget_bytes=100)
    with pytest.raises(ValueError, match="draft_tokens"):
        Engine(model, n_pages=4, draft=tiny_model(), draft_tokens=0)


@pytest.mark.parametrize("draft_tokens", [1, 4])
def test_greedy_speculative_equals_greedy_target_only(draft_tokens):
    """A random draft is usually wrong, so nearly every step rejects and both caches roll back."""
    model, draft = tiny_model(), tiny_model(n_layers=1)
    reqs = random_requests(5, seed=3, sampling={"greedy": True}, max_new=16)
    engine = Engine(model, n_pages=40, page_size=4, draft=draft, draft_tokens=draft_tokens)
    results = engine.run(reqs)
    for req, res in zip(reqs, results):
        assert res.tokens == alone(model, req)
    assert sum(r.draft_proposed for r in results) > 20
    assert sum(r.draft_accepted for r in results) < sum(r.draft_proposed for r in results)  # rejections happened


@pytest.mark.parametrize("sampling", [{"greedy": True}, {"temperature": 1.0}])
def test_the_target_as_its_own_draft_is_always_accepted(sampling):
    model = tiny_model()
    reqs = random_requests(3, seed=4, sampling=sampling, max_new=14)
    results = Engine(model, n_pages=40, page_size=4, draft=copy.deepcopy(model), draft_tokens=3).run(reqs)
    for req, res in zip(reqs, results):
        assert res.draft_accepted == res.draft_proposed > 0
        assert len(res.tokens) / res.target_forwards > 2  # up to 4 tokens per target forward
        if "greedy" in sampling:
            assert res.tokens == alone(model, req)


def test_speculative_sampling_through_the_engine_matches_the_target_distribution():
    """The first two tokens after a fixed prompt, 1,500 requests batched through the engine with a draft that
    disagrees with the target. Vocabulary 3 and peaked random models; the exact target distribution
    of the 9 outcomes is computed by enumeration. (The tight TV < 0.01 check of the rule itself, on
    300k samples, is in test_sampling.py; this one checks the engine's plumbing at n = 1,500.)"""
    target, draft = tiny_model(vocab_size=3), tiny_model(vocab_size=3, n_layers=1)
    target.init_weights(0)  # fixed seeds: the check below needs two models that disagree
    draft.init_weights(1)
    with torch.no_grad():
        target.lm_head.weight.mul_(60)  # random logits are near zero: sharpen so the models differ
        draft.lm_head.weight.mul_(60)
    prompt = [0, 2, 1]

    def exact(model):
        p1 = model(torch.tensor([prompt])).logits[0, -1].softmax(-1)
        return torch.stack(
            [p1[a] * model(torch.tensor([prompt + [a]])).logits[0, -1].softmax(-1) for a in range(3)]
        ).flatten()

    with torch.no_grad():
        p_target, p_draft = exact(target), exact(draft)
    assert 0.5 * (p_target - p_draft).abs().sum() > 0.3
    n = 1500
    reqs = [Request(prompt, 3, {"temperature": 1.0}, seed=i) for i in range(n)]
    engine = Engine(target, n_pages=n, page_size=8, max_batch=500, draft=draft, draft_tokens=2)
    results = engine.run(reqs)
    assert sum(r.draft_proposed for r in results) > 0
    codes = torch.tensor([r.tokens[0] * 3 + r.tokens[1] for r in results])  # the second came from the rule
    empirical = torch.bincount(codes, minlength=9).double() / n
    assert 0.5 * (empirical - p_target).abs().sum() < 0.05  # sampling noise ~0.02 at this n


def test_generate_cli_with_a_draft_and_serve_bench_cli(tmp_path):
    import json
    import pathlib
    import subprocess
    import sys

    from moe.training import checkpoint

    for name, over in [("target", {}), ("draft", {"n_layers": 1}), ("other-vocab", {"vocab_size": 128})]:
        cfg = shrunk("tiny", **over)
        checkpoint.save_checkpoint(tmp_path / name, MoETransformer(cfg), cfg)
    gen = [
        sys.executable,
        "-m",
        "moe",
        "generate",
        "--checkpoint",
        str(tmp_path / "target"),
        "--prompt",
        "To be",
        "--max-new-tokens",
        "12",
        "--greedy",
    ]
    plain = subprocess.run(gen, capture_output=True, text=True)
    spec = subprocess.run(
        gen + ["--draft-checkpoint", str(tmp_path / "draft"), "--draft-tokens", "3"], capture_output=True, text=True
    )
    assert plain.returncode == 0 and spec.returncode == 0, spec.stderr
    assert spec.stdout == plain.stdout  # greedy: the same text with and without the draft
    for needle in ("12 new tokens (length)", "draft tokens: acceptance", "tokens per target forward"):
        assert needle in spec.stderr  # per-request statistics; speedups are bench.serving's
    assert "tokens/s" in plain.stderr and "acceptance" not in plain.stderr
    bad = subprocess.run(gen + ["--draft-checkpoint", str(tmp_path / "other-vocab")], capture_output=True, text=True)
    assert bad.returncode == 2 and "different vocabularies" in bad.stderr

    bench = subprocess.run(
        [
            sys.executable,
            "-m",
            "moe",
            "serve-bench",
            "--config",
            "tiny",
            "--set",
            "d_model=32",
            "--set",
            "n_layers=1",
            "--requests",
            "6",
            "--rate",
            "50",
            "--prompt-len",
            "8",
            "--max-new-tokens",
            "5",
            "--out",
            str(tmp_path / "bench"),
            "--name",
            "b",
        ],
        capture_output=True,
        text=True,
    )
    assert bench.returncode == 0, bench.stderr
    for needle in ("throughput", "time to first token", "inter-token latency", "tokens per expert"):
        assert needle in bench.stdout
    progress = [line for line in bench.stderr.splitlines() if line.startswith("serve-bench: ")]
    assert progress and progress[-1].startswith("serve-bench: 6/6 requests done at ")  # logged while it runs
    summary = json.loads((tmp_path / "bench" / "b.json").read_text())
    assert summary["requests"] == 6 and summary["new_tokens"] == 30
    assert (tmp_path / "bench" / "b.png").stat().st_size > 0

    script = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.serving",
            "--quick",
            "--rates",
            "50",
            "--target",
            str(tmp_path / "target"),
            "--draft",
            str(tmp_path / "draft"),
            "--out",
            str(tmp_path / "sv"),
        ],
        capture_output=True,
        text=True,
        cwd=pathlib.Path(__file__).resolve().parents[2],
    )
    assert script.returncode == 0, script.stderr
    table = (tmp_path / "sv" / "serving.md").read_text()
    assert "| greedy | 1 | target only |" in table and "| temperature 0.8 | 1 | 2 |" in table
    rows = json.loads((tmp_path / "sv" / "serving.json").read_text())["speculative"]
    assert [r["acceptance"] for r in rows if r["mode"] == "greedy"][0] is None  # target only proposes nothing


def test_compiled_engine_decodes_as_eager_and_does_not_recompile():
    """Engine(compile=True): greedy tokens equal the eager engine's for every request of a mixed
    workload (prefills joining decodes, rows finishing at different steps); and once each kind of step
    has been compiled, a second workload through the same engine, with other prompt lengths, batch
    sizes and page counts, adds no graph (torch._dynamo's unique_graphs counter). (A new engine with
    another page pool does recompile: the cache's size is a static shape.) Float64, as the rest here."""
    from torch._dynamo.utils import counters

    model = tiny_model(n_layers=1)  # tracing time grows with depth; one block holds every kind of graph
    first = [Request(list(range(1, 3 + i % 7)), 6 + i % 5, {"greedy": True}) for i in range(16)]
    second = [Request(list(range(5, 9 + 3 * (i % 4))), 3 + i % 9, {"greedy": True}) for i in range(20)]
    eager = Engine(model, n_pages=256, page_size=8, max_batch=8)
    compiled = Engine(model, n_pages=256, page_size=8, max_batch=8, compile=True)
    assert [r.tokens for r in compiled.run(first)] == [r.tokens for r in eager.run(first)]
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0 and compiled.compile_s > 0 and eager.compile_s is None  # it did compile, and says how long
    assert [r.tokens for r in compiled.run(second)] == [r.tokens for r in eager.run(second)]
    assert counters["stats"]["unique_graphs"] == graphs
    assert {s.batch_size for s in compiled.steps} >= {1, 2, 8}  # the batch did vary


def test_metrics_count_the_shared_experts_batch_apart():
    """/metrics' histograms from engine steps of a model with a shared expert: each decode step
    observes the shared expert once with all its tokens, the routed experts with their own counts."""
    from moe.serving.metrics import Metrics

    model = tiny_model(shared_d_ff=32, top_k=1)
    engine = Engine(model, n_pages=40, page_size=4)
    metrics = Metrics()
    for i in range(3):
        engine.submit(Request([1 + i, 2, 3], 5, {"greedy": True}))
    while engine.has_work():
        engine.step()
        metrics.step(engine, engine.steps[-1])
    decodes = [s for s in engine.steps if s.n_prefill == 0]
    text = metrics.render().decode()
    sums = dict(re.findall(r"^moe_shared_expert_tokens_per_step_(sum|count) (\S+)$", text, re.M))
    assert float(sums["count"]) == len(decodes) and float(sums["sum"]) == sum(s.n_tokens for s in decodes)
    routed = re.findall(r'moe_expert_tokens_per_step_sum\{expert="\d+",layer="0"\} (\S+)', text)
    assert sum(map(float, routed)) == sum(s.n_tokens for s in decodes)  # top-1: one routed expert per token


@pytest.mark.parametrize("prefix_caching", [False, True])
def test_a_sliding_window_model_gives_back_the_pages_it_no_longer_reads(prefix_caching):
    """Every layer slides (window 8, pages of 4): a row holds at most the pages its window spans,
    whatever its length, and the outputs still equal generate's; gpt-oss-style mixed layers keep
    every page (their full layers read them all)."""
    torch.manual_seed(0)
    model = MoETransformer(shrunk("tiny", sliding_window=8, max_seq_len=128)).eval()
    prompt = list(range(1, 30))
    reqs = [Request(prompt, 40, {"greedy": True}), Request(prompt[:10], 50, {"greedy": True})]
    engine = Engine(model, n_pages=60, page_size=4, prefix_caching=prefix_caching)
    held = []
    for r in reqs:
        engine.submit(r)
    while engine.running or engine.queue:
        engine.step()
        held.append(max((sum(p >= 0 for p in row.pages) for row in engine.running), default=0))
    for req, rid in zip(reqs, sorted(engine.results)):
        assert engine.results[rid].tokens == generate(model, req.prompt, req.max_new_tokens, greedy=True)
    assert max(held[3:]) <= 8 // 4 + 2  # the window's pages, the one being written, one partly out
    assert engine.pool.available == engine.n_pages  # every page came back (idle prefixes count)
    if not prefix_caching:  # speculative: pages freed behind the draft's cache too
        drafted = Engine(model, n_pages=60, page_size=4, draft=model, draft_tokens=3).run(reqs)
        assert [r.tokens for r in drafted] == [engine.results[rid].tokens for rid in sorted(engine.results)]
    mixed = MoETransformer(shrunk("tiny", sliding_window=8, layer_types=["sliding_attention", "full_attention"]))
    assert Engine(mixed, n_pages=8, page_size=4).window == 0
