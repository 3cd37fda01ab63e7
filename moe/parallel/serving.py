r"""One serving engine over tensor, pipeline and expert parallel ranks (torch.distributed): rank 0
decides everything, every rank computes its part of each target forward.

Legend: B rows in a step, T tokens per row, P pages per row, D d_model, V vocab, M microbatches,
e an expert-parallel group (the ranks of one ep index), j a microbatch, n logits rows sent back.

    torchrun --nproc-per-node 4 -m moe serve --checkpoint run --tp 2 --pp 2

Rank 0 runs the whole Engine (moe/serving/engine.py): admission, pages, preemption, every
request's generator, sampling and speculative acceptance, and the draft model if there is one.
Only the target's forward is spread. Each step rank 0 broadcasts one plan, two int64 tensors

    header [op, B, T, P, M]       body idx [B, T] | pos [B, T] | pages [B, P] | group [B] | micro [B] | n [B]

and every rank builds the same Positions from its rows of it: nothing a rank computes decides
anything, so the ranks cannot drift apart.

    tp  attention heads and each expert's d_ff split as in training (moe/parallel/parallelize.py),
        one all-reduce per sublayer. The single K/V head is computed on every tp rank, so each
        holds the K/V of its stage's layers for the rows its group serves.
    pp  stages pass hidden states [B_j, T_j, D] by send/recv, each tp rank its 1/tp slice of D,
        all-gathered over the next stage's tp group. A step's rows are cut into up to M
        microbatches, whole rows in order, each about 1/M of the step's tokens: stage s runs
        microbatch j while stage s+1 runs j-1, so a stage idles (P-1)/(M+P-1) of a step instead
        of (P-1)/P.
    ep  each row lives in one group (the least loaded one when it is first scheduled), whose ranks
        hold its K/V. The groups exchange tokens in every MoE layer by all-to-all, so a group with
        no rows in a microbatch still runs it, on one padding token (routed nowhere).

The last stage's tp rank 0 in each group sends rank 0 only the logits rank 0 reads: the last k + 1
positions of a row that samples (k draft tokens), none for a prefill chunk short of its prompt's
end, all of them for a row that asked for prompt logprobs. Each rank's router counts are summed on
rank 0 (one reduce a step) for the step statistics.

Every rank holds a page pool of the same n_pages ids for its stage's layers; a row's pages are
written only on its group's ranks. The KV budget is per rank: n_pages = budget / (the largest
stage's bytes a page, plus the draft's on rank 0). Faults: every collective and receive has the
process group's timeout, so a rank that dies or hangs makes the others raise within it. An idle
rank 0 broadcasts a keepalive plan and a barrier every quarter of that timeout, so idleness is
not taken for a fault and a rank that hangs while the server is idle is found. A rank whose
collective fails names the ranks that went silent (from a heartbeat each rank keeps in the
launcher's store) and exits with status 1; torchrun then stops the rest.
Prefix caching needs ep = 1 (a cached page lives in one group).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from moe.config import ModelConfig
from moe.estimates.arithmetic import kv_cache_bytes_per_token
from moe.layout import Layout, stage_layers
from moe.model import MoETransformer, Positions
from moe.model.rope import Rotary
from moe.parallel.checkpoint import load_shards
from moe.parallel.collectives import TRAFFIC, gather_last_dim
from moe.parallel.parallelize import Parallel, init_parallel, shard_blocks
from moe.parallel.pipeline import Stage, build_stage
from moe.serving.engine import Engine

STOP, STEP, ALIVE, POOL = 0, 1, 2, 3  # plan ops (POOL: [POOL, n_pages, page_size, 0, 0], once)


def check_layout(cfg: ModelConfig, layout: Layout, world: int) -> None:
    """Raise a ValueError naming what the model cannot take in `layout` on `world` processes,
    before any process group or weight exists."""
    if cfg.vision is not None:
        raise ValueError(f"config {cfg.name!r} has a vision path, which serves in one process: give no layout")
    if layout.dp > 1:
        raise ValueError(f"dp={layout.dp}: serving spans tp, pp and ep; run separate servers for data parallelism")
    if layout.virtual_stages > 1:
        raise ValueError("virtual_stages: an interleaved schedule is for training; serving runs one stage a rank")
    layout.check(cfg, world)


def init_process_group(device: str | None, timeout_s: float) -> torch.device:
    """Join the torchrun world with collectives that time out after timeout_s (a dead or hung peer
    then raises instead of hanging)."""
    from moe.parallel import trainer

    return trainer.init_process_group(device, datetime.timedelta(seconds=timeout_s))


@dataclass
class Shard:
    """This rank's part of the target: its pipeline stage split over tp and ep, and its place."""

    par: Parallel
    stage: Stage
    cfg: ModelConfig
    timeout_s: float  # the collectives'
    heartbeat: Heartbeat

    @property
    def layout(self) -> Layout:
        return self.par.layout

    def rank_of(self, pp: int, ep: int, tp: int) -> int:
        """The global rank at those coordinates (dp is 1 when serving)."""
        return int(self.par.mesh.mesh[pp, 0, ep, tp])

    def page_bytes_per_position(self) -> int:
        """The K/V bytes one position takes on the rank holding the most layers."""
        per_layer = kv_cache_bytes_per_token(self.cfg, self.dtype.itemsize) // self.cfg.n_layers
        return per_layer * max(
            map(len, stage_layers(self.cfg.n_layers, self.layout.pp, self.layout.first_stage_layers))
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.stage.norm.weight.dtype if self.stage.last else self.stage.tok_emb.weight.dtype


def load_shard(path, layout: Layout, device: str | None = None, timeout_s: float = 120.0, **overrides) -> Shard:
    """This rank's shard of the checkpoint at `path` (a distributed or a single-process one), read
    by slices: no rank allocates or reads the whole model. Every rank calls this together; the
    layout is checked first. `overrides`: config fields that leave the weights as they are."""
    from moe.training.checkpoint import read_config

    cfg, _ = read_config(path)
    cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
    check_layout(cfg, layout, int(os.environ.get("WORLD_SIZE", "1")))
    par = init_parallel(layout, init_process_group(device, timeout_s))
    with torch.device("meta"):
        model = MoETransformer(cfg)
    stage = build_stage(model, layout, par.rank["pp"])
    shard_blocks(stage, par)
    stage.to_empty(device=par.device)
    for m in stage.modules():
        if isinstance(m, Rotary):
            m.reset_tables()
    load_shards(stage, model, path)
    return Shard(par, stage.eval(), cfg, timeout_s, Heartbeat(min(1.0, timeout_s / 8)))


@dataclass
class Plan:
    """One step's target forward, as every rank reads it."""

    idx_BT: torch.Tensor
    pos_BT: torch.Tensor
    pages_BP: torch.Tensor
    group_B: torch.Tensor  # the ep group each row lives in
    micro_B: torch.Tensor  # its microbatch
    n_B: torch.Tensor  # how many of its last positions' logits rank 0 reads
    microbatches: int

    def encode(self) -> tuple[torch.Tensor, torch.Tensor]:
        (B, T), P = self.idx_BT.shape, self.pages_BP.shape[1]
        header = torch.tensor([STEP, B, T, P, self.microbatches])
        columns = (self.group_B, self.micro_B, self.n_B)
        body = torch.cat([self.idx_BT, self.pos_BT, self.pages_BP, *(c[:, None] for c in columns)], dim=1)
        return header, body.reshape(-1)

    @classmethod
    def decode(cls, header: torch.Tensor, body: torch.Tensor) -> Plan:
        _, B, T, P, M = header.tolist()
        idx, pos, pages, group, micro, n = body.view(B, 2 * T + P + 3).split([T, T, P, 1, 1, 1], dim=1)
        return cls(idx, pos, pages, group[:, 0], micro[:, 0], n[:, 0], M)

    @staticmethod
    def body_size(header: torch.Tensor) -> int:
        _, B, T, P, _ = header.tolist()
        return B * (2 * T + P + 3)

    def rows(self, group: int, micro: int) -> torch.Tensor:
        return torch.nonzero((self.group_B == group) & (self.micro_B == micro)).flatten()


def split_microbatches(tokens: list[int], m: int) -> list[int]:
    """Each row's microbatch: rows in order, whole, cut where the tokens before a row pass j/m of the total."""
    total, before, out = sum(tokens), 0, []
    for t in tokens:
        out.append(min(m - 1, before * m // max(1, total)))
        before += t
    return out


def run_plan(shard: Shard, plan: Plan) -> dict[tuple[int, int], torch.Tensor]:
    """This rank's part of one target forward. Rank 0 returns the logits [n, V] of every (group,
    microbatch) whose rows want some; the others return nothing. Every rank calls this together."""
    par, lay, stage = shard.par, shard.layout, shard.stage
    pp, ep, tp = par.rank["pp"], par.rank["ep"], par.rank["tp"]
    device, rank = par.device, dist.get_rank()
    sends, out = [], {}  # (work, tensor): a tensor isend reads must outlive the wait
    page_size = next(iter(stage.blocks.values())).attn.kv_cache.page_size
    counts_LE = torch.zeros(shard.cfg.n_layers, shard.cfg.n_experts, dtype=torch.long)
    # this rank's seconds computing, inside the layers' collectives and waiting for its stage's
    # input, and the bytes it sent: the per-rank report (DistributedEngine.rank_report)
    compute_s = wait_s = 0.0
    # Between stages each tp rank sends its 1/tp slice of the hidden states to its peer, and the next
    # stage's tp group all-gathers them: tp times fewer bytes between stages (the network, on a
    # cluster), the rest inside the stage's tp group.
    slices = lay.tp if shard.cfg.d_model % lay.tp == 0 else 1
    before = _traffic()
    sent = 0
    for j in range(plan.microbatches):
        rows = plan.rows(ep, j)
        idx, pos, pages = _microbatch(plan, rows)
        positions = Positions.paged(pos.to(device), pages.to(device), page_size)
        if stage.first:
            h = idx.to(device)
        else:
            h = torch.empty(*idx.shape, shard.cfg.d_model // slices, dtype=shard.dtype, device=device)
            t = time.perf_counter()
            dist.recv(h, src=shard.rank_of(pp - 1, ep, tp))
            wait_s += time.perf_counter() - t
        t = time.perf_counter()  # (the all-gather counts as a collective, inside this span)
        if not stage.first and slices > 1:
            h = gather_last_dim(h, par.groups["tp"])
        x_BTD, routing = stage.body(h, positions)
        compute_s += time.perf_counter() - t
        for layer, r in zip(stage.blocks, routing):
            counts_LE[int(layer)] += r.tokens_per_expert.cpu()
        if not stage.last:
            x_BTD = x_BTD.tensor_split(slices, dim=-1)[tp].contiguous()  # this tp rank's slice
            sends.append((dist.isend(x_BTD, dst=shard.rank_of(pp + 1, ep, tp)), x_BTD))
            sent += x_BTD.numel() * x_BTD.element_size()
        elif tp == 0 and len(rows) and int(plan.n_B[rows].sum()):
            x_ND = x_BTD.reshape(-1, x_BTD.shape[-1])[_wanted(plan, rows, x_BTD.shape[1])]
            t = time.perf_counter()
            logits = stage.lm_head(stage.norm(x_ND)).contiguous()
            compute_s += time.perf_counter() - t
            if rank == 0:
                out[(0, j)] = logits
            else:
                sends.append((dist.isend(logits, dst=0), logits))
                sent += logits.numel() * logits.element_size()
    if rank == 0:
        for e in range(lay.ep):
            for j in range(plan.microbatches):
                n = int(plan.n_B[plan.rows(e, j)].sum())
                src = shard.rank_of(lay.pp - 1, e, 0)
                if n and src != 0:
                    out[(e, j)] = torch.empty(n, shard.cfg.vocab_size, dtype=shard.dtype, device=device)
                    t = time.perf_counter()
                    dist.recv(out[(e, j)], src=src)
                    wait_s += time.perf_counter() - t
    for work, _ in sends:
        work.wait()
    if tp != 0:
        counts_LE.zero_()  # the tp ranks of a stage route the same tokens: count them once
    collective_s, collective_bytes = (a - b for a, b in zip(_traffic(), before))
    report_R4 = torch.zeros(dist.get_world_size(), 4, dtype=torch.float64)
    report_R4[rank] = torch.tensor([compute_s - collective_s, collective_s, wait_s, sent + collective_bytes])
    dist.reduce(counts_LE, dst=0)
    dist.reduce(report_R4, dst=0)
    out["counts"], out["report"] = counts_LE, report_R4
    return out


def _traffic() -> tuple[float, int]:
    """Seconds and bytes sent so far in the model's collectives (tp all-reduces, ep all-to-alls)."""
    return sum(t.seconds for t in TRAFFIC.values()), sum(t.bytes_sent for t in TRAFFIC.values())


def _microbatch(plan: Plan, rows: torch.Tensor):
    """The rows' ids, positions and pages, trimmed to their longest feed; a group with no rows gets
    one padding token (position -1: neither cached nor routed), to join the layers' collectives."""
    if not len(rows):
        return torch.zeros(1, 1, dtype=torch.long), torch.full((1, 1), -1), torch.zeros(1, 1, dtype=torch.long)
    pos = plan.pos_BT[rows]
    T = int((pos >= 0).sum(dim=1).max())
    P = plan.pages_BP.shape[1]
    return plan.idx_BT[rows, :T], pos[:, :T], plan.pages_BP[rows, :P]


def _wanted(plan: Plan, rows: torch.Tensor, T: int) -> torch.Tensor:
    """Flat indices into [B_j * T] of the positions whose logits rank 0 reads: each row's last n."""
    idx = []
    for b, row in enumerate(rows.tolist()):
        length, n = int((plan.pos_BT[row] >= 0).sum()), int(plan.n_B[row])
        idx += range(b * T + length - n, b * T + length)
    return torch.tensor(idx, dtype=torch.long)


def broadcast_plan(op: int, plan: Plan | None = None) -> None:
    if plan is None:
        dist.broadcast(torch.tensor([op, 0, 0, 0, 0]), src=0)
        return
    header, body = plan.encode()
    dist.broadcast(header, src=0)
    dist.broadcast(body.contiguous(), src=0)


def follow(shard: Shard) -> None:
    """A rank other than 0: run every plan rank 0 broadcasts until it says stop. SIGTERM is left
    to rank 0, which stops the ranks once its requests are done (torchrun signals them all)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with torch.no_grad(), fatal(shard, "following rank 0's plans"):
        while True:
            header = torch.empty(5, dtype=torch.long)
            dist.broadcast(header, src=0)
            op = int(header[0])
            if op == STOP:
                return
            if op == ALIVE:
                dist.barrier()
                continue
            if op == POOL:  # before the first step
                shard.stage.setup_paged_caches(int(header[1]), int(header[2]))
                continue
            body = torch.empty(Plan.body_size(header), dtype=torch.long)
            dist.broadcast(body, src=0)
            run_plan(shard, Plan.decode(header, body))


class Heartbeat:
    """Every rank counts up its own key in the launcher's store from a daemon thread, `period` s
    apart. When a collective fails, the ranks whose count stops moving are the ones that died or
    hung (a stopped process's threads stop with it): a collective's own error cannot say which."""

    def __init__(self, period: float):
        # the store torch.distributed was initialised with (torchrun's): every rank already has it
        self.store, self.period = dist.distributed_c10d._get_default_store(), period
        self.world = dist.get_world_size()
        threading.Thread(target=self._beat, name="moe-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        key = f"moe/heartbeat/{dist.get_rank()}"
        while True:
            try:
                self.store.add(key, 1)
            except Exception:  # the store went away: the run is over
                return
            time.sleep(self.period)

    def silent(self) -> list[int]:
        """The ranks that did not beat over three periods (this rank's own thread beats on)."""
        counts = [self.store.add(f"moe/heartbeat/{r}", 0) for r in range(self.world)]
        time.sleep(3 * self.period)
        return [r for r in range(self.world) if self.store.add(f"moe/heartbeat/{r}", 0) == counts[r]]


@contextlib.contextmanager
def fatal(shard: Shard, what: str):
    """A failed collective breaks the whole group: print what failed and which ranks went silent,
    then end this process with status 1, from whichever thread runs it (a server's engine thread
    included); torchrun then stops the other ranks. Nothing is saved while serving, so nothing is
    lost."""
    try:
        yield
    except Exception as e:
        silent = shard.heartbeat.silent()
        who = f"rank {', '.join(map(str, silent))} stopped answering" if silent else "every rank still answers"
        message = f"moe: rank {dist.get_rank()}: {what} failed ({who}): {type(e).__name__}: {e}"
        print(message, file=sys.stderr, flush=True)
        os._exit(1)


class DistributedEngine(Engine):
    """The Engine on rank 0 over a target spread across the ranks (see the module's docstring);
    the other ranks run `follow`. Takes Engine's keywords, and `microbatches` (default pp)."""

    def __init__(self, shard: Shard, *, microbatches: int | None = None, keepalive_s: float | None = None, **kw):
        if dist.get_rank() != 0:
            raise ValueError("the engine runs on rank 0; the other ranks run follow(shard)")
        if kw.get("compile"):
            raise ValueError("compile is for one process only so far: a layout's forward runs eagerly")
        if kw.get("prefix_caching") and shard.layout.ep > 1:
            raise ValueError("prefix caching needs ep = 1: a cached page lives in one expert-parallel group")
        self.shard = shard
        self.microbatches = shard.layout.pp if microbatches is None else microbatches
        if self.microbatches < 1:
            raise ValueError(f"microbatches must be >= 1, got {self.microbatches}")
        self._group: dict[int, int] = {}  # row id -> its ep group
        self._keepalive_s = keepalive_s or shard.timeout_s / 4
        self._last_plan: float | None = None  # when rank 0 last broadcast; None once stopped
        self.target_s = 0.0  # rank 0's wall time in target forwards, plan broadcast included
        self.target_steps = 0
        self.report_R4 = torch.zeros(dist.get_world_size(), 4, dtype=torch.float64)  # summed run_plan reports
        super().__init__(shard.stage, **kw)
        dist.broadcast(torch.tensor([POOL, self.n_pages, self.page_size, 0, 0]), src=0)  # every rank's pool
        self._last_plan = self.clock()

    def rank_report(self) -> list[dict]:
        """Per rank, over the target forwards so far: the share of their wall time (on rank 0) it
        spent computing, inside the MoE layers' collectives (tp all-reduce, ep all-to-all; waiting
        for slower peers included; attention's tp all-reduce, DTensor's, is counted as compute)
        and waiting for its pipeline stage's input (rank 0: and for the last stage's logits); the
        rest is idle (waiting for rank 0's plan, sends, the step's reduce). And the bytes it sent
        per step in those collectives and its pipeline sends."""
        wall, steps = max(self.target_s, 1e-9), max(self.target_steps, 1)
        return [
            {
                "rank": r,
                "compute": round(c / wall, 3),
                "collectives": round(x / wall, 3),
                "pipeline_wait": round(w / wall, 3),
                "idle": round(1 - (c + x + w) / wall, 3),
                "bytes_sent_per_step": round(b / steps),
            }
            for r, (c, x, w, b) in enumerate(self.report_R4.tolist())
        ]

    def page_bytes(self) -> int:
        draft = (
            0
            if self.draft is None
            else kv_cache_bytes_per_token(self.draft.cfg, self.draft.tok_emb.weight.element_size())
        )
        return self.page_size * (self.shard.page_bytes_per_position() + draft)

    def idle(self) -> None:
        if self._last_plan is not None and self.clock() - self._last_plan > self._keepalive_s:
            with fatal(self.shard, "the keepalive"):
                broadcast_plan(ALIVE)
                dist.barrier()  # a round trip: a broadcast alone completes into a hung rank's socket buffer
            self._last_plan = self.clock()

    def close(self) -> None:
        """Stop the other ranks (once)."""
        if self._last_plan is not None:
            with fatal(self.shard, "stopping the ranks"):
                broadcast_plan(STOP)
            self._last_plan = None

    def _forward(self, model, rows, feeds, starts):
        if model is not self.model:  # the draft, on rank 0
            return super()._forward(model, rows, feeds, starts)
        idx, pos, pages = self._padded(rows, feeds, starts)
        groups = self._groups(rows)
        n_B = [
            len(f) if r.request.prompt_logprobs else max(0, s + len(f) - len(r.tokens) + 1)
            for r, f, s in zip(rows, feeds, starts)
        ]
        micro = [0] * len(rows)
        m = min(self.microbatches, max(groups.count(e) for e in set(groups)))
        for e in set(groups):
            members = [b for b, g in enumerate(groups) if g == e]
            for b, j in zip(members, split_microbatches([len(feeds[b]) for b in members], m)):
                micro[b] = j
        plan = Plan(idx, pos, pages, torch.tensor(groups), torch.tensor(micro), torch.tensor(n_B), m)
        t = time.perf_counter()
        with fatal(self.shard, "a step"):
            broadcast_plan(STEP, plan)
            out = run_plan(self.shard, plan)
        self.target_s += time.perf_counter() - t
        self.target_steps += 1
        self.report_R4 += out["report"]
        self._last_plan = self.clock()
        logits, taken = [], collections.Counter()
        V = self.model.cfg.vocab_size
        for b in range(len(rows)):
            key = (groups[b], micro[b])
            start = taken[key]
            taken[key] += n_B[b]
            logits.append(out[key][start : start + n_B[b]].float().cpu() if n_B[b] else torch.zeros(0, V))
        return logits, [_Counts(c) for c in out["counts"]]

    def _groups(self, rows) -> list[int]:
        """Each row's ep group: kept for its life, a new row to the group with the fewest rows."""
        live = {r.id for r in self.running}
        self._group = {rid: e for rid, e in self._group.items() if rid in live}
        load = [0] * self.shard.layout.ep
        for e in self._group.values():
            load[e] += 1
        for r in rows:
            if r.id not in self._group:
                e = load.index(min(load))
                self._group[r.id] = e
                load[e] += 1
        return [self._group[r.id] for r in rows]


@dataclass
class _Counts:
    """A layer's expert counts over all ranks, where the engine's statistics read them."""

    tokens_per_expert: torch.Tensor
