"""Run by tests/parallel/test_serving.py in each pooled process (tests/parallel/dist_worker.py): load
a layout's shards of a float64 checkpoint and serve a workload through the DistributedEngine on
rank 0 (the other ranks follow), once per case; rank 0 writes what every request returned.

`workload` is also the one-process reference: the same submissions at the same steps."""

import json
import os

import torch
from dist_worker import record_collectives

from moe.serving import Request


def requests(case) -> list[Request]:
    return [Request(**r) for r in case["requests"]]


def workload(engine, reqs: list[Request], late: int) -> list[dict]:
    """Submit reqs[:late], run 3 steps, submit the rest (arrivals while others decode), run to the end."""
    ids = [engine.submit(r) for r in reqs[:late]]
    for _ in range(3):
        engine.step()
    ids += [engine.submit(r) for r in reqs[late:]]
    while engine.has_work():
        engine.step()
    return [
        {"tokens": engine.results[i].tokens, "finish": engine.results[i].finish_reason, "lp": _lp(engine.results[i])}
        for i in ids
    ]


def _lp(result) -> list[float]:
    return [t.logprob for t in result.prompt_logprobs if t is not None]


def recorded(run_plan, log: list):
    """run_plan, each call's bytes in every torch.distributed exchange tallied by name (record_collectives)."""

    def run(shard, plan):
        tally: dict = {}
        undo = record_collectives(tally)
        try:
            return run_plan(shard, plan)
        finally:
            undo()
            mine = plan.group_B == shard.par.rank["ep"]  # the rows of this rank's expert-parallel group
            log.append(dict(B=int(mine.sum()), T=plan.idx_BT.shape[1], n=int(plan.n_B[mine].sum()), tally=tally))

    return run


def serve(rank: int, spec: dict) -> None:
    from moe.layout import Layout
    from moe.parallel import serving
    from moe.parallel.serving import DistributedEngine, follow, load_shard
    from moe.training import load_model

    default, run_plan, log = torch.get_default_dtype(), serving.run_plan, []
    torch.set_default_dtype(torch.float64)  # the shards are built, then read from the float64 file
    serving.run_plan = recorded(run_plan, log)
    try:
        shard = load_shard(spec["checkpoint"], Layout(**spec["layout"]), "cpu")
        results = []
        for case in spec["cases"]:
            if rank != 0:
                follow(shard)
                continue
            draft = load_model(case["draft"]) if case.get("draft") else None
            engine = DistributedEngine(shard, draft=draft, **case["engine"])
            results.append(workload(engine, requests(case), case["late"]))
            results[-1].append({"free_pages": len(engine.free_pages), "n_pages": engine.n_pages})
            engine.close()
        if rank == 0:
            with open(os.path.join(spec["out"], "results.json"), "w") as f:
                json.dump(results, f)
        place = dict(shard.par.rank, layers=len(shard.stage.blocks), first=shard.stage.first, last=shard.stage.last)
        with open(os.path.join(spec["out"], f"traffic-{rank}.json"), "w") as f:
            json.dump(dict(place, steps=log), f)
    finally:
        torch.set_default_dtype(default)
        serving.run_plan = run_plan
