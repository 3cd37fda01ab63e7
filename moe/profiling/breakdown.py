"""Where the time goes: a torch.profiler trace summed into the model's named ranges (moe/attention,
moe/norm, moe/router, moe/permutation, moe/expert_matmuls, moe/combine; everything else is "other").

Backward work has no range of its own: each autograd node is charged to the range of the forward
op that created it (matched by the autograd sequence number).
"""

from __future__ import annotations

from collections import defaultdict

RANGES = ("attention", "norm", "router", "permutation", "expert_matmuls", "combine")
CATEGORIES = (*RANGES, "other")
_PREFIX = "moe/"
_BACKWARD = "autograd::engine::evaluate_function: "


def _range_of(event) -> str | None:
    """The innermost named range around an event, or the autograd node it belongs to."""
    while event is not None:
        if event.name.startswith(_PREFIX) and event.name[len(_PREFIX) :] in RANGES:
            return event.name[len(_PREFIX) :]
        if event.name.startswith(_BACKWARD):
            return f"seq:{event.sequence_nr}"
        event = event.cpu_parent
    return None


def breakdown(events, cuda: bool, steps: int = 1, backward_only: bool = False) -> dict[str, float]:
    """Milliseconds per step in each category: the device (kernel) time on a GPU, the CPU time of
    the ops on a CPU, each event's own time (children excluded), so the categories add up.
    backward_only: count only the work of autograd nodes."""
    # autograd sequence number -> range of the forward op that made the node. Ops that make no node
    # report the number the next one will take, so the op that made node n is the last forward event
    # numbered n (the ones before it may sit in an earlier range).
    forward_range = {}
    for e in events:
        if e.sequence_nr >= 0 and not e.name.startswith(_BACKWARD):
            r = _range_of(e)
            if r is not None and not r.startswith("seq:"):
                forward_range[e.sequence_nr] = r
    totals = defaultdict(float)
    for e in events:
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if not us:
            continue
        r = _range_of(e)
        backward = r is not None and r.startswith("seq:")
        if backward:
            r = forward_range.get(int(r[4:]))
        if backward or not backward_only:
            totals[r or "other"] += us / 1e3 / steps
    return {c: totals.get(c, 0.0) for c in CATEGORIES}
