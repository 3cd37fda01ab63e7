r"""Continuous batching over a paged KV cache, with optional speculative decoding by a draft model.

Legend: B rows (sequences) in one step, T tokens per row, V vocab, k draft tokens, L layers, E experts.

    engine = Engine(model, kv_budget_bytes=64 << 20)     # or draft=small_model, draft_tokens=4
    rid = engine.submit(Request(prompt, max_new_tokens=100, sampling={"temperature": 0.8}, seed=1))
    while engine.has_work():
        engine.step()
    engine.results[rid].tokens

One step:
  1. schedule: every decoding row feeds its last token (and, with a draft model, the k tokens the draft
     proposes: the draft catches up on the tokens it has not seen, then runs k-1 more one-token steps);
     prefilling rows, oldest first, feed their prompt, or with max_batch_tokens a chunk of it that fits
     what the step's budget leaves (chunked prefill: a long prompt never stalls the decodes); then
     queued requests are admitted, oldest first, while a row, budget and their first chunk's pages are
     free. Pages are taken on demand, as a row's positions are written; when the pool runs dry, the
     newest running request is preempted: its pages freed, it waits at the front of the queue and is
     recomputed when readmitted. A request that fits the pool alone is never refused or starved.
  2. one target forward over the scheduled rows, padded to the longest (padding is neither cached nor routed)
  3. each row that fed its last uncached token chooses its token(s) with its own generator: plain
     sampling, or the speculative acceptance rule of moe/serving/sampling.py; finished rows leave at
     once and return their pages (a prefill chunk short of the end only fills the cache)
  4. record the batch size and how many tokens each expert of each layer received; when every
     layer slides (a sliding_window on all layers), give back the pages no later query can read

Images (a vision model, moe/vision/): a request's images are encoded once, at admission, and each
gated block's K/V of their visual tokens is kept with the row for its whole life (they never grow).
They take their size in pages from the pool at admission, so the KV budget counts them, though
they live beside the pool. Every token reads the latest image at or before it; generated tokens the
prompt's last one. Text-only and image requests share batches; a text-only draft sees the
placeholders as ordinary tokens.

A row's caches roll back by forgetting: the number of valid positions is a counter per cache, and
positions past it are masked off until they are overwritten. Results do not depend on what else is
in the batch: rows never see each other (per-row positions and pages; routing is per token when
dropless), and every random draw comes from the request's own generator in its own order. With a
capacity factor, drops depend on the batch; the presets are dropless.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from moe.estimates.arithmetic import kv_cache_bytes_per_token
from moe.model import MoETransformer, Positions
from moe.serving.pages import PagePool, prefix_keys
from moe.serving.request import Request, RequestError, Result, TokenLogprob, check_logprobs, check_request, check_seed
from moe.serving.sampling import SamplingParams, accept_draft, probabilities, sample
from moe.vision.cross_attention import Media
from moe.vision.images import batch_images, check_images

FREED = -1  # a row's block-table entry for a page it gave back (out of every layer's window)


@dataclass
class StepStats:
    t_start: float
    t_end: float
    batch_size: int  # rows in the target forward
    n_prefill: int  # of which prefilling
    n_tokens: int  # tokens through the target (prompts, last tokens and draft tokens)
    n_emitted: int  # new tokens this step produced
    tokens_per_expert: list[list[int]]  # [L][E] assignments each expert received in the target
    n_preempted: int = 0  # rows sent back to the queue for pages this step
    shared_tokens: int = 0  # tokens each layer's shared expert received (all of them; 0: none)


@dataclass(eq=False)  # rows are compared by identity: `row in self.running` must not compare every field
class _Row:
    """A running request: its tokens so far and how many of them each cache holds."""

    id: int
    request: Request
    params: SamplingParams
    tokens: list[int]
    pages: list[int]  # page i holds positions [i * page_size, (i + 1) * page_size); grows as they are written
    generator: torch.Generator
    result: Result
    image_pages: list[int] = dataclasses.field(default_factory=list)  # what its visual K/V take from the pool
    keys: list[bytes] = dataclasses.field(default_factory=list)  # its prompt's full pages (prefix caching)
    n_registered: int = 0  # of which its pages hold (and the pool has) this many
    n_target: int = 0  # tokens whose K/V the target's cache holds
    n_draft: int = 0  # ... and the draft's
    prompt_media: tuple | None = (
        None  # a vision target: the prompt's (media, offset) lists (moe/vision/cross_attention.py)
    )
    visual: torch.Tensor | None = None  # its images' visual tokens [M, L, Dv], encoded at admission
    visual_kv: list | None = None  # each gated block's (K, V) [1, G, M*L, d] of them

    @property
    def n_new(self) -> int:
        return len(self.tokens) - len(self.request.prompt)


class Engine:
    def __init__(
        self,
        model: MoETransformer,
        *,
        kv_budget_bytes: int | None = None,
        n_pages: int | None = None,
        page_size: int = 16,
        max_batch: int = 64,
        draft: MoETransformer | None = None,
        draft_tokens: int = 4,
        clock=time.perf_counter,
        compile: bool = False,
        max_batch_tokens: int | None = None,
        prefix_caching: bool = False,
    ):
        """The page pool is n_pages pages, or as many as fit in kv_budget_bytes (the K/V of the target
        and of the draft, which share page ids), or, given neither, room for max_batch sequences of
        max_seq_len positions. max_batch caps the rows in one step; max_batch_tokens the tokens
        through one target forward (chunked prefill; None: whole prompts). prefix_caching: share
        the K/V of full pages of prompt tokens between requests (moe/serving/pages.py; not with a
        draft model or images). compile: run the target's and the draft's forwards through
        torch.compile (see _compiled)."""
        if draft is not None:
            if draft.cfg.vocab_size != model.cfg.vocab_size:
                raise ValueError(
                    f"draft and target have different vocabularies ({draft.cfg.vocab_size} "
                    f"vs {model.cfg.vocab_size} tokens): the draft must share the target's tokenizer"
                )
            if draft.cfg.max_seq_len < model.cfg.max_seq_len:
                raise ValueError(
                    f"the draft's max_seq_len ({draft.cfg.max_seq_len}) is shorter than the target's "
                    f"({model.cfg.max_seq_len})"
                )
            if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, int) or draft_tokens < 1:
                raise ValueError(f"draft_tokens must be an integer >= 1, got {draft_tokens!r}")
        self.vision = getattr(model.cfg, "vision", None)
        if page_size < 1 or max_batch < 1:
            raise ValueError(f"page_size and max_batch must be >= 1, got {page_size} and {max_batch}")
        if max_batch_tokens is not None and (not isinstance(max_batch_tokens, int) or max_batch_tokens < 1):
            raise ValueError(f"max_batch_tokens must be an integer >= 1 or None, got {max_batch_tokens!r}")
        self.max_batch_tokens = max_batch_tokens
        if prefix_caching and (draft is not None or self.vision is not None):
            raise ValueError("prefix_caching is for a text model without a draft (their caches would be shared too)")
        self.model, self.draft, self.k = model.eval(), None if draft is None else draft.eval(), draft_tokens
        self.page_size, self.max_batch, self.clock = page_size, max_batch, clock
        if n_pages is None and kv_budget_bytes is None:
            n_pages = max_batch * math.ceil(model.cfg.max_seq_len / page_size)
        elif n_pages is None:
            n_pages = kv_budget_bytes // self.page_bytes()
            if n_pages < 1:
                raise ValueError(
                    f"a KV budget of {kv_budget_bytes} bytes holds no page ({self.page_bytes()} bytes "
                    f"each at page_size {page_size})"
                )
        self.n_pages = n_pages
        for m in (self.model, self.draft):
            if m is not None:
                m.setup_paged_caches(n_pages, page_size)
        self._calls = {id(m): _compiled(m) if compile else m for m in (self.model, self.draft) if m is not None}
        self.pool = PagePool(n_pages, prefix_caching)
        self.window = sliding_window(self.model, self.draft)
        self.queue: collections.deque[_Row] = collections.deque()
        self.running: list[_Row] = []
        self.results: dict[int, Result] = {}
        self.steps: list[StepStats] = []
        self._next_id = 0

    def page_bytes(self) -> int:
        def per_token(m):
            return 0 if m is None else kv_cache_bytes_per_token(m.cfg, m.tok_emb.weight.element_size())

        return self.page_size * (per_token(self.model) + per_token(self.draft))

    def pages_needed(self, request: Request) -> int:
        """The most pages the request holds: the positions its caches are written at (the prompt and
        every new token but the last), plus its images' visual K/V. submit refuses one that exceeds
        the pool; the rest are taken as the sequence grows."""
        return math.ceil((len(request.prompt) + request.max_new_tokens - 1) / self.page_size) + self._image_pages(
            request
        )

    def _image_pages(self, request: Request) -> int:
        """What a request's images' visual K/V take from the pool (moe/estimates/vision.py counts the bytes)."""
        if not request.images:
            return 0
        from moe.estimates.vision import visual_kv_bytes

        per_image = visual_kv_bytes(self.model.cfg, self.model.tok_emb.weight.element_size())
        return math.ceil(len(request.images) * per_image / self.page_bytes())

    def submit(self, request: Request, arrival: float | None = None) -> int:
        """Queue a request; return its id. A RequestError names what is wrong with a bad one."""
        try:
            if not isinstance(request, Request):
                raise ValueError(f"expected a moe.serving.Request, got {type(request).__name__}")
            prompt = check_request(self.model.cfg, request.prompt, request.max_new_tokens, request.stop_tokens)
            params = SamplingParams.parse(request.sampling)
            check_images(self.model.cfg, prompt, request.images)
            check_seed(request.seed)
            check_logprobs(request.logprobs, request.prompt_logprobs)
        except ValueError as e:
            raise RequestError(str(e)) from None
        need = self.pages_needed(request)
        if need > self.n_pages:
            raise RequestError(
                f"request needs {need} pages of {self.page_size} positions (prompt "
                f"{len(request.prompt)} + max_new_tokens {request.max_new_tokens}) but the KV "
                f"budget holds {self.n_pages} pages in all: it can never fit"
            )
        rid, self._next_id = self._next_id, self._next_id + 1
        result = Result(t_arrival=self.clock() if arrival is None else arrival)
        self.results[rid] = result
        row = _Row(rid, request, params, prompt, [], torch.Generator().manual_seed(request.seed), result)
        if self.pool.prefix_caching and not request.prompt_logprobs:  # (cached positions have no logits)
            row.keys = prefix_keys(prompt, self.page_size)
        self.queue.append(row)
        return rid

    @property
    def compile_s(self) -> float | None:
        """Seconds spent in forwards that compiled (None when not compiling)."""
        spent = [getattr(c, "compile_s", None) for c in self._calls.values()]
        return None if spent[0] is None else sum(spent)

    def has_work(self) -> bool:
        return bool(self.queue or self.running)

    def cancel(self, rid: int, reason: str = "cancelled") -> bool:
        """Take request `rid` out wherever it is (queued or running), its pages back in the pool at
        once; its result keeps the tokens so far and finish_reason `reason` ("stop" where the caller
        found a stop string). False if it had already finished (or was never submitted)."""
        for where in (self.queue, self.running):
            for row in where:
                if row.id == rid:
                    where.remove(row)
                    self._release(row)
                    row.result.finish_reason = reason
                    return True
        return False

    @property
    def free_pages(self) -> collections.deque[int]:
        """Pages no row holds and no prefix occupies."""
        return self.pool.free

    def _release(self, row: _Row) -> None:
        self.pool.release([p for p in row.pages if p != FREED] + row.image_pages)
        row.pages, row.image_pages, row.n_registered = [], [], 0

    def _free_out_of_window(self, row: _Row) -> None:
        """When every layer slides (self.window > 0): give back the pages whose positions no later
        query reads. A query at t reads s > t - window, and no later query is below the cached
        length (the lower of target's and draft's), so pages ending at or before lowest - window + 1
        are done; their table entries become FREED, which the masks never let a query read."""
        lowest = row.n_target if self.draft is None else min(row.n_target, row.n_draft)
        for i in range(max(0, (lowest - self.window + 1) // self.page_size)):
            if row.pages[i] != FREED:
                self.pool.release([row.pages[i]])
                row.pages[i] = FREED

    def _k(self, row: _Row, chunk: int) -> int:
        """Draft tokens the row is scored on this step, feeding `chunk` uncached tokens: none while
        prefilling a prompt; after that (decoding, or recomputing after a preemption) k, less where
        fewer tokens are left (k - 1 or fewer leaves less to draft). A recomputed row thus draws from
        its generator exactly as it would have, had it never been preempted."""
        if self.draft is None or row.n_new == 0 or row.n_target + chunk != len(row.tokens):
            return 0
        return min(self.k, row.request.max_new_tokens - row.n_new - 1)

    def _take(self, row: _Row, n_tokens: int) -> bool:
        """Give the row pages for positions up to n_tokens (exclusive), or return False if the pool lacks them."""
        need = math.ceil(n_tokens / self.page_size) - len(row.pages)
        if need > self.pool.available:
            return False
        row.pages += self.pool.take(max(0, need))
        return True

    def _preempt(self, row: _Row) -> None:
        """Back to the front of the queue with its pages freed; its tokens so far are recomputed when
        it is readmitted (its generator has drawn only for tokens it kept, so nothing changes)."""
        self.running.remove(row)
        self._release(row)
        row.n_target = row.n_draft = 0
        row.visual = row.visual_kv = None
        if len(row.result.prompt_logprobs) < len(row.request.prompt):
            row.result.prompt_logprobs.clear()  # recorded again from the start; its chunks will differ
        row.result.preemptions += 1
        self.queue.appendleft(row)

    def _schedule(self) -> tuple[list[tuple[_Row, int]], int]:
        """Which rows run this step and how many of their uncached tokens each feeds the target, and
        how many rows were preempted. Decoding rows first (their last token and k drafts), then
        prefills oldest first, each a chunk of what max_batch_tokens leaves; then queued requests
        while a row, budget and the pages of their first chunk are free. A row's pages grow to cover
        what it writes; when the pool runs dry, the newest running request is preempted."""
        budget = self.max_batch_tokens if self.max_batch_tokens is not None else math.inf
        plan, n_preempted = {}, 0
        for row in sorted(self.running, key=lambda r: (r.n_target != len(r.tokens) - 1, r.id)):
            uncached = len(row.tokens) - row.n_target
            n = 1 if uncached == 1 else min(uncached, budget)  # a decode always runs
            if n < 1 or row not in self.running:
                continue
            need = n + self._k(row, n)  # tokens it writes: its chunk and its draft tokens
            while not self._take(row, row.n_target + need):
                victim = max(self.running, key=lambda r: r.id)
                self._preempt(victim)
                plan.pop(victim.id, None)
                n_preempted += 1
                if victim is row:
                    break
            if row in self.running:
                plan[row.id] = (row, n)
                budget -= need
        while self.queue and len(self.running) < self.max_batch and budget >= 1:
            row = self.queue[0]
            cached = self.pool.lookup(row.keys[: (len(row.tokens) - 1) // self.page_size])
            start = len(cached) * self.page_size  # its last token is always computed: it gives the logits
            n = min(len(row.tokens) - start, budget)
            need = n + self._k(row, n)  # (a draft means no prefix caching: start is 0 wherever k > 0)
            images = self._image_pages(row.request)
            if math.ceil((start + need) / self.page_size) - len(cached) + images > self.pool.available:
                self.pool.release(cached)
                break  # first come, first served: later requests wait behind this one
            self.queue.popleft()
            row.pages, row.n_target, row.n_registered = cached, start, len(cached)
            row.image_pages = self.pool.take(images)
            self._take(row, start + need)
            if row.result.t_admitted is None:
                row.result.t_admitted = self.clock()
                self.pool.count_lookup(len(row.keys) * self.page_size, start)
            if self.vision is not None:
                self._encode(row)
            self.running.append(row)
            plan[row.id] = (row, n)
            budget -= need
        return list(plan.values()), n_preempted

    @torch.no_grad()
    def _encode(self, row: _Row) -> None:
        """A vision target's row: where its prompt's images stand, their visual tokens and K/V, once."""
        device = self.model.tok_emb.weight.device
        media_BT, offset_BT, _ = Media.locate(torch.tensor([row.request.prompt]), self.vision.image_token)
        row.prompt_media = (media_BT[0].tolist(), offset_BT[0].tolist())
        if row.request.images:
            row.visual = self.model.encode(batch_images(list(row.request.images)).to(device))
            row.visual_kv = self.model.visual_kv(row.visual)

    @torch.no_grad()
    def step(self) -> StepStats | None:
        """Run one step over the rows the schedule picks (admitting what fits first). None when idle."""
        t_start = self.clock()
        plan, n_preempted = self._schedule()
        if not plan:
            return None
        rows = [r for r, _ in plan]
        chunks = [r.tokens[r.n_target : r.n_target + n] for r, n in plan]
        sampling = [r.n_target + len(c) == len(r.tokens) for r, c in zip(rows, chunks)]  # a prefill's last chunk too
        ks = [self._k(r, len(c)) for r, c in zip(rows, chunks)]
        drafts, qs = self._propose(rows, ks)
        feeds = [c + d for c, d in zip(chunks, drafts)]
        starts = [r.n_target for r in rows]
        decoding = [r.n_target == len(r.tokens) - 1 for r in rows]
        logits, routing = self._forward(self.model, rows, feeds, starts)
        plain = [b for b, (samples, k) in enumerate(zip(sampling, ks)) if samples and k == 0]
        chosen = dict(zip(plain, _choose([rows[b] for b in plain], [logits[b][-1] for b in plain])))
        n_emitted = 0
        for b, (row, chunk, start, samples, k, d, q, lg) in enumerate(
            zip(rows, chunks, starts, sampling, ks, drafts, qs, logits)
        ):
            self._prompt_logprobs(row, start, lg[: len(chunk)])
            if not samples:  # a prefill chunk short of the end: cached, nothing drawn
                row.n_target += len(chunk)
                continue
            if b in chosen:  # nothing drafted: the token chosen with the others of its settings
                n_acc, token = 0, chosen[b]
            else:
                p = probabilities(lg[-(k + 1) :], row.params)  # the target at the k + 1 scored positions
                u_k = torch.rand(k, generator=row.generator, dtype=torch.float64)
                u = torch.rand(1, generator=row.generator, dtype=torch.float64)
                n_acc, token = accept_draft(p[None], q[None], torch.tensor([d], dtype=torch.long), u_k[None], u)
                n_acc = int(n_acc)
            row.n_target = len(row.tokens) + n_acc  # the cache keeps what was fed up to the last accepted draft
            row.n_draft = min(row.n_draft, row.n_target)
            row.result.draft_proposed += k
            row.result.draft_accepted += n_acc
            row.result.target_forwards += 1
            taken = self._emit(row, d[:n_acc] + [int(token)])
            if row.request.logprobs is not None:  # the target's logits at the k + 1 scored positions
                row.result.logprobs += _logprobs(lg[-(k + 1) :][:taken], row.tokens[-taken:], row.request.logprobs)
            n_emitted += taken
        t_end = self.clock()
        for row in rows:
            new_times = len(row.result.tokens) - len(row.result.token_times)
            row.result.token_times += [t_end] * new_times
        n_tokens = sum(map(len, feeds))
        stats = StepStats(
            t_start,
            t_end,
            len(rows),
            decoding.count(False),
            n_tokens,
            n_emitted,
            [r.tokens_per_expert.tolist() for r in routing],
            n_preempted,
            n_tokens if self.model.cfg.shared_d_ff else 0,  # a shared expert takes every token
        )
        self.steps.append(stats)
        for row in rows if self.pool.prefix_caching else []:  # full prompt pages now computed: shared from now on
            full = min(row.n_target // self.page_size, len(row.keys))
            for i in range(row.n_registered, full):
                self.pool.register(row.keys[i], row.pages[i])
            row.n_registered = max(row.n_registered, full)
        for row in rows if self.window else []:
            self._free_out_of_window(row)
        for row in [r for r in rows if r.result.finish_reason is not None]:
            self.running.remove(row)
            self._release(row)
        return stats

    def _prompt_logprobs(self, row: _Row, start: int, logits_TV: torch.Tensor) -> None:
        """Record the prompt tokens' logprobs this chunk scored (positions start.. score the next
        tokens), the first pass over the prompt only."""
        prompt, done = row.request.prompt, row.result.prompt_logprobs
        if not row.request.prompt_logprobs or len(done) == len(prompt) or start + 1 != max(1, len(done)):
            return
        if not done:
            done.append(None)
        end = min(start + len(logits_TV), len(prompt) - 1)  # position end - 1 scores prompt[end]
        done += _logprobs(logits_TV[: end - start], prompt[start + 1 : end + 1], row.request.logprobs)

    def _emit(self, row: _Row, tokens: list[int]) -> int:
        """Append tokens until a stop token or max_new_tokens; return how many were taken."""
        for i, t in enumerate(tokens):
            row.tokens.append(t)
            row.result.tokens.append(t)
            if t in row.request.stop_tokens or row.n_new == row.request.max_new_tokens:
                row.result.finish_reason = "stop" if t in row.request.stop_tokens else "length"
                return i + 1
        return len(tokens)

    def _propose(self, rows: list[_Row], ks: list[int]) -> tuple[list[list[int]], list[torch.Tensor]]:
        """k draft tokens for each row and the draft distributions q [k, V] they were sampled from."""
        V = self.model.cfg.vocab_size
        drafts = [[] for _ in rows]
        qs = [[] for _ in rows]
        for i in range(max(ks, default=0)):
            live = [b for b, k in enumerate(ks) if k > i]
            sub = [rows[b] for b in live]
            # First the tokens the draft has not seen (the prompt, the last emitted token(s)), then one.
            feeds = [r.tokens[r.n_draft :] if i == 0 else [drafts[b][-1]] for b, r in zip(live, sub)]
            logits, _ = self._forward(self.draft, sub, feeds, [r.n_draft for r in sub])
            for b, r, f, lg in zip(live, sub, feeds, logits):
                r.n_draft += len(f)
                q = probabilities(lg[-1], r.params)
                drafts[b].append(int(sample(q[None], torch.rand(1, generator=r.generator, dtype=torch.float64))))
                qs[b].append(q)
        return drafts, [torch.stack(q) if q else torch.zeros(0, V) for q in qs]

    def _forward(self, model: MoETransformer, rows: list[_Row], feeds: list[list[int]], starts: list[int]):
        """One forward of `model` over rows, row b feeding feeds[b] at positions starts[b]... in its
        pages. Returns each row's logits [len(feed), V] (float32, CPU) and the routing."""
        device = model.tok_emb.weight.device
        idx, pos, pages = self._padded(rows, feeds, starts)
        extra = {"media": self._media(rows, pos, device)} if model is self.model and self.vision is not None else {}
        out = self._calls[id(model)](
            idx.to(device), Positions.paged(pos.to(device), pages.to(device), self.page_size), **extra
        )
        logits = out.logits.float().cpu()
        return [logits[b, : len(f)] for b, f in enumerate(feeds)], out.routing

    def _padded(self, rows: list[_Row], feeds: list[list[int]], starts: list[int]):
        """The batch as tensors: token ids [B, T] and positions [B, T] (padding: 0 and -1), and the
        pages [B, P] that cover the longest row."""
        T = max(map(len, feeds))
        P = math.ceil(max(s + len(f) for s, f in zip(starts, feeds)) / self.page_size)
        idx = torch.tensor([f + [0] * (T - len(f)) for f in feeds])
        pos = torch.tensor([list(range(s, s + len(f))) + [-1] * (T - len(f)) for s, f in zip(starts, feeds)])
        pages = torch.tensor([[max(p, 0) for p in r.pages[:P]] + [0] * (P - len(r.pages[:P])) for r in rows])
        return idx, pos, pages

    def idle(self) -> None:
        """Called by a caller's loop while there is no work (a distributed engine keeps its ranks alive)."""

    def close(self) -> None:
        """Called once when the caller is done with the engine (a distributed engine stops its ranks)."""

    def _media(self, rows: list[_Row], pos_BT: torch.Tensor, device) -> Media:
        """The rows' images (padded to the most any row has) and which one each fed token sees."""
        v, B = self.vision, len(rows)
        M = max((0 if r.visual is None else len(r.visual)) for r in rows)
        dtype = self.model.tok_emb.weight.dtype
        visual = torch.zeros(B, M, v.n_latents, v.d_model, dtype=dtype, device=device)
        media = torch.full(pos_BT.shape, -1, dtype=torch.long)
        offset = torch.full(pos_BT.shape, -1, dtype=torch.long)
        kv = None
        if M:
            G, d = self.model.cfg.n_kv_heads, self.model.cfg.head_dim
            kv = [
                (
                    torch.zeros(B, G, M * v.n_latents, d, dtype=dtype, device=device),
                    torch.zeros(B, G, M * v.n_latents, d, dtype=dtype, device=device),
                )
                for _ in self.model.xattn
            ]
        for b, row in enumerate(rows):
            real = pos_BT[b] >= 0
            m, o = Media.at_positions(row.prompt_media, pos_BT[b][real].tolist())
            media[b, real], offset[b, real] = torch.tensor(m, dtype=torch.long), torch.tensor(o, dtype=torch.long)
            if row.visual is not None:
                n = len(row.visual) * v.n_latents
                visual[b, : len(row.visual)] = row.visual
                for (k, val), (k_row, v_row) in zip(kv, row.visual_kv):
                    k[b, :, :n], val[b, :, :n] = k_row[0], v_row[0]
        return Media(visual, media.to(device), offset.to(device), kv)

    def run(self, requests: list[Request]) -> list[Result | RequestError]:
        """Submit every request, step until all are done; a refused request's entry is its error."""
        ids: list[int | RequestError] = []
        for req in requests:
            try:
                ids.append(self.submit(req))
            except RequestError as e:
                ids.append(e)
        while self.has_work():
            self.step()
        return [i if isinstance(i, RequestError) else self.results[i] for i in ids]


def sliding_window(model: MoETransformer, draft: MoETransformer | None) -> int:
    """The window in positions every layer of the model (and draft) slides by, the smallest of them;
    0 when some layer attends to everything (its pages are read to the end: none can be freed)."""
    windows = [m.cfg.window(i) for m in (model, draft) if m is not None for i in range(m.cfg.n_layers)]
    return 0 if 0 in windows else min(windows)


def _choose(rows: list[_Row], logits: list[torch.Tensor]) -> list[int]:
    """The next token of each row that drafted nothing, from its logits [V] at its last position:
    the rows of one sampling setting at once. A greedy row takes the argmax (ties to the lower id,
    as `probabilities` and `sample` would choose); any other row one uniform from its own generator,
    as accept_draft with k = 0 would, so a row draws the same whatever shares its step."""
    chosen = [0] * len(rows)
    groups = collections.defaultdict(list)
    for i, row in enumerate(rows):
        groups[row.params].append(i)
    for params, members in groups.items():
        logits_BV = torch.stack([logits[i] for i in members])
        if params.is_greedy:
            tokens = logits_BV.argmax(-1)
        else:
            u_B = torch.cat([torch.rand(1, generator=rows[i].generator, dtype=torch.float64) for i in members])
            tokens = sample(probabilities(logits_BV, params), u_B)
        for i, t in zip(members, tokens.tolist()):
            chosen[i] = t
    return chosen


def _logprobs(logits_TV: torch.Tensor, tokens: list[int], top: int | None) -> list[TokenLogprob]:
    """Each token's log-probability under the logits that scored it, with the `top` best beside it."""
    lp_TV = torch.log_softmax(logits_TV.double(), dim=-1)
    best = lp_TV.topk(top, dim=-1) if top else None
    return [
        TokenLogprob(
            t, float(lp_TV[i, t]), list(zip(best.indices[i].tolist(), best.values[i].tolist())) if best else []
        )
        for i, t in enumerate(tokens)
    ]


def _compiled(model: MoETransformer):
    """The model's forward through torch.compile with every size symbolic from the start (dynamic=True),
    so steps of any batch, length or page count reuse the graphs once each kind of step (prefill,
    decode, speculative verify; one row or several) has been seen; and with data-dependent output
    shapes traced (the padded batch keeps only its real tokens for the MoE layers, `h[valid]`). The
    router's statistics over those tokens still break the graph once per block (torch 2.13 cannot
    guard the mean over an unbacked row count), so each block compiles in pieces, shared by every
    block. tests/serving/test_engine.py counts the graphs a second workload adds: none. A vision
    model's media (visual K/V, which image each token sees, reading windows) come in as a keyword
    argument; their sizes still get specialised (one image or several, and coincidences such as the
    visual width equal to 8 x the image count), so new image counts and widths can add graphs.
    call.compile_s sums the calls that compiled a graph (the compile time, with those calls' steps)."""
    from torch._dynamo.utils import counters

    compiled = torch.compile(model, dynamic=True)

    def call(*args, **kw):  # kw: a vision model's media
        graphs, start = counters["stats"]["unique_graphs"], time.perf_counter()
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
            out = compiled(*args, **kw)
        if counters["stats"]["unique_graphs"] != graphs:
            call.compile_s += time.perf_counter() - start
        return out

    call.compile_s = 0.0
    return call
