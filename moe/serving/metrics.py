"""What the server exports at GET /metrics (Prometheus text format, through prometheus_client).

Names follow vLLM's where a peer has the same figure (moe_ for vllm:), so one dashboard reads both:
    moe_time_to_first_token_seconds    histogram   arrival -> first token
    moe_inter_token_latency_seconds    histogram   between a request's consecutive tokens (a step that
                                                   emits several, with a draft model, counts 0 for the rest)
    moe_e2e_request_latency_seconds    histogram   arrival -> finish
    moe_request_queue_time_seconds     histogram   arrival -> admitted to a row
    moe_num_requests_running / _waiting gauges
    moe_kv_pages_used, moe_kv_pages_total gauges
    moe_prompt_tokens_total, moe_generation_tokens_total counters
    moe_request_success_total{finished_reason}          counter  stop, length, cancelled, error
    moe_num_preemptions_total                           counter  requests sent back for KV pages
    moe_prefix_cache_queries_total, _hits_total         counters prompt tokens looked up / found cached
                                                        (hit rate: hits / queries)
    moe_expert_tokens_per_step{layer, expert}           histogram  tokens each expert of each layer
                                                        received in one decode step (no prefill in it)
    moe_shared_expert_tokens_per_step                   histogram  tokens each layer's shared expert received
                                                        in one decode step (all of them; models with one)
Each Metrics has its own registry, so two servers in one process (the tests) do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
EXPERT_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.ttft = Histogram(
            "moe_time_to_first_token_seconds", "arrival to first token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "moe_inter_token_latency_seconds", "between consecutive tokens", buckets=LATENCY_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            "moe_e2e_request_latency_seconds", "arrival to finish", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_time = Histogram(
            "moe_request_queue_time_seconds", "arrival to admission", buckets=LATENCY_BUCKETS, registry=r
        )
        self.running = Gauge("moe_num_requests_running", "requests in a row of the batch", registry=r)
        self.waiting = Gauge("moe_num_requests_waiting", "requests queued for a row", registry=r)
        self.pages_used = Gauge("moe_kv_pages_used", "KV cache pages held by requests", registry=r)
        self.pages_total = Gauge("moe_kv_pages_total", "KV cache pages in the pool", registry=r)
        self.prompt_tokens = Counter("moe_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("moe_generation_tokens", "tokens generated", registry=r)
        self.finished = Counter("moe_request_success", "finished requests", ["finished_reason"], registry=r)
        self.preemptions = Counter("moe_num_preemptions", "requests preempted for KV pages", registry=r)
        self.prefix_queries = Counter(
            "moe_prefix_cache_queries", "prompt tokens looked up in the prefix cache", registry=r
        )
        self.prefix_hits = Counter("moe_prefix_cache_hits", "prompt tokens found in the prefix cache", registry=r)
        self._prefix_seen = (0, 0)
        self.shared_expert_tokens = Histogram(
            "moe_shared_expert_tokens_per_step",
            "tokens each layer's shared expert received in a decode step (every token: its batch)",
            buckets=EXPERT_BUCKETS,
            registry=r,
        )
        self.expert_tokens = Histogram(
            "moe_expert_tokens_per_step",
            "tokens one expert of one layer received in a decode step",
            ["layer", "expert"],
            buckets=EXPERT_BUCKETS,
            registry=r,
        )

    def watch(self, engine) -> None:
        """The gauges read the engine when scraped (lengths only: safe from another thread), so they
        are current after a cancellation too, when no step follows."""
        self.running.set_function(lambda: len(engine.running))
        self.waiting.set_function(lambda: len(engine.queue))
        self.pages_total.set_function(lambda: engine.n_pages)
        self.pages_used.set_function(lambda: engine.pool.held)

    def step(self, engine, stats) -> None:
        """After an engine step (on the engine thread): tokens, and the experts' batch sizes."""
        self.generation_tokens.inc(stats.n_emitted)
        self.preemptions.inc(stats.n_preempted)
        pool, (queried, hit) = engine.pool, self._prefix_seen
        self.prefix_queries.inc(pool.queried_tokens - queried)
        self.prefix_hits.inc(pool.hit_tokens - hit)
        self._prefix_seen = (pool.queried_tokens, pool.hit_tokens)
        if stats.n_prefill == 0:
            if stats.shared_tokens:
                self.shared_expert_tokens.observe(stats.shared_tokens)
            for layer, counts in enumerate(stats.tokens_per_expert):
                for expert, n in enumerate(counts):
                    self.expert_tokens.labels(str(layer), str(expert)).observe(n)

    def finished_request(self, result, n_prompt: int) -> None:
        """A request's latencies once it has finished (its listener's last update)."""
        times = result.token_times
        if times:
            self.ttft.observe(times[0] - result.t_arrival)
            self.e2e.observe(times[-1] - result.t_arrival)
            for a, b in zip(times, times[1:]):
                self.itl.observe(b - a)
        if result.t_admitted is not None:
            self.queue_time.observe(result.t_admitted - result.t_arrival)
        self.prompt_tokens.inc(n_prompt)
        self.finished.labels(result.finish_reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
