"""Run by tests/parallel/test_distributed.py in each spawned process: train `steps` steps of a layout on a
fixed random batch sequence (optionally after loading a distributed checkpoint), then save one.

The processes are spawned once per test module (`Pool`) and each case forms its own process group
among the first `world` of them: a case costs its training, not four interpreters importing torch."""

import datetime
import json
import os
import queue
import socket
import traceback

import torch
import torch.distributed as dist

SMALL = dict(d_model=32, n_layers=2, n_heads=4, d_ff=24, max_seq_len=64, vocab_size=256)  # = conftest.shrunk
TRAIN = dict(batch_size=8, seq_len=16, warmup_steps=0, lr=1e-3, grad_clip=0.5)  # 0.5: the clip is active


def batches(cfg, train_cfg, n, packed=False):
    """n random (x, y) batches. packed: x is Packed rows of several examples (random boundaries) and
    most targets are IGNORE_INDEX, a different count in every row, as instruction data's are."""
    from moe.data.instruct import IGNORE_INDEX, Packed

    gen = torch.Generator().manual_seed(5)
    shape = (train_cfg.batch_size, train_cfg.seq_len)
    out = []
    for _ in range(n):
        x, y = (
            torch.randint(0, cfg.vocab_size, shape, generator=gen),
            torch.randint(0, cfg.vocab_size, shape, generator=gen),
        )
        if packed:
            doc = (torch.rand(shape, generator=gen) < 0.2).long().cumsum(1)
            y = torch.where(torch.rand(shape, generator=gen) < torch.rand(shape[0], 1, generator=gen), y, IGNORE_INDEX)
            x = Packed(x, doc)
        out.append((x, y))
    return out


COLLECTIVES = (
    "all_gather_single",
    "reduce_scatter_single",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "all_reduce",
    "broadcast",
    "all_to_all_single",
    "all_gather",
    "reduce_scatter",
    "send",
    "recv",
    "isend",
    "irecv",
    "batch_isend_irecv",
)


def record_collectives(tally: dict) -> None:
    """A recording layer over torch.distributed's collectives (FSDP2, the pipeline and our own code
    call them through the module): each call adds the bytes of its largest tensor (the gathered
    output, the scattered input, the reduced or sent tensor) to tally[name]."""

    def wrap(name, fn):
        def recorded(*args, **kw):
            tensors = [a for a in (*args, *kw.values()) if isinstance(a, torch.Tensor)]
            tensors += [
                t
                for a in (*args, *kw.values())
                if isinstance(a, (list, tuple))
                for t in a
                if isinstance(t, torch.Tensor)
            ]
            tally[name] = tally.get(name, 0) + max((t.numel() * t.element_size() for t in tensors), default=0)
            return fn(*args, **kw)

        return recorded

    originals = {name: getattr(dist, name) for name in COLLECTIVES if hasattr(dist, name)}
    for name, fn in originals.items():
        setattr(dist, name, wrap(name, fn))
    return lambda: [setattr(dist, name, fn) for name, fn in originals.items()]  # undo


def run(rank, world, port, spec):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    import moe.parallel.trainer as trainer_mod

    # A peer that fails mid-collective makes the others raise within 2 minutes, not the default 10.
    device = trainer_mod.init_process_group("cpu", datetime.timedelta(seconds=120))
    autocast = trainer_mod.autocast
    if spec.get("bf16"):  # what a GPU run does (bf16 autocast), on the CPU: the dtypes NCCL would carry
        trainer_mod.autocast = lambda device: torch.autocast("cpu", dtype=torch.bfloat16)
    try:
        if spec.get("task") == "serve":
            import serve_worker

            serve_worker.serve(rank, spec)
        else:
            _run(rank, device, spec)
    finally:  # the process serves the next case: leave nothing of this one behind
        trainer_mod.autocast = autocast
        trainer_mod.close_process_group()


def _run(rank, device, spec):
    from moe.config import load_config, load_train_config
    from moe.data.instruct import Packed
    from moe.layout import Layout
    from moe.parallel import checkpoint as dist_checkpoint
    from moe.parallel.trainer import DistributedTrainer

    cfg = load_config("tiny", **{**SMALL, **spec.get("model", {})})
    train_cfg = load_train_config("tiny", **TRAIN)
    trainer = DistributedTrainer.build(cfg, train_cfg, Layout(**spec["layout"]), device)
    done = 0
    if spec.get("load"):
        done = dist_checkpoint.load(spec["load"], trainer.module, trainer.optimizer)["step"]
    results = []
    tally: dict = {}
    undo = record_collectives(tally) if spec.get("record") else (lambda: None)
    sizes = spec.get("sizes") or [train_cfg.batch_size] * (done + spec["steps"])  # a ramp: the first rows
    try:
        for (x, y), b in list(zip(batches(cfg, train_cfg, done + spec["steps"], spec.get("packed")), sizes))[done:]:
            rows = trainer.batch_rows(b)  # as the loop does: each rank is given only its rows
            tally.clear()
            x = Packed(x.idx_BT[:b][rows], x.doc_BT[:b][rows]) if spec.get("packed") else x[:b][rows]
            r = trainer.step(x, y[:b][rows], train_cfg.lr)
            results.append((r.loss, r.grad_norm, dict(tally)) if spec.get("record") else (r.loss, r.grad_norm))
        step = done + spec["steps"]
        dist_checkpoint.save(
            spec["out"], trainer.module, trainer.optimizer, cfg, train_cfg, trainer.par.layout, {"step": step}, step
        )
        if rank == 0:
            with open(os.path.join(spec["out"], "results.json"), "w") as f:
                json.dump(results, f)
    finally:
        undo()


def _serve(rank, jobs, done):
    """A pooled process: run each (world, port, spec) it is given, report (rank, error or None)."""
    while (job := jobs.get()) is not None:
        try:
            run(rank, *job)
            done.put((rank, None))
        except BaseException:
            done.put((rank, traceback.format_exc()))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pool:
    """`size` processes spawned once; run(world, spec) trains a layout on the first `world` of them.
    A case that fails fails at once, with the first rank's error (its peers may be stuck in a
    collective), and the processes are replaced, so later cases still run."""

    def __init__(self, size: int = 4, timeout: float = 300):
        self.size, self.timeout = size, timeout
        self._spawn()

    def _spawn(self) -> None:
        ctx = torch.multiprocessing.get_context("spawn")
        self.jobs = [ctx.Queue() for _ in range(self.size)]
        self.done = ctx.Queue()
        self.procs = [
            ctx.Process(target=_serve, args=(r, self.jobs[r], self.done), daemon=True) for r in range(self.size)
        ]
        for p in self.procs:
            p.start()

    def run(self, world: int, spec: dict) -> None:
        port = _port()
        for r in range(world):
            self.jobs[r].put((world, port, spec))
        for _ in range(world):
            try:
                _, error = self.done.get(timeout=self.timeout)
            except queue.Empty:
                error = f"a distributed case did not finish in {self.timeout} s"
            if error:
                self.close()
                self._spawn()
                raise RuntimeError(error)

    def close(self) -> None:
        for q in self.jobs:
            q.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
