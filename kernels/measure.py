"""How a measurement of the kernels is taken and stamped: the median of timed calls (CUDA events after
warm-up), and the device, versions and date saved beside every result, with the folder name results
go under. moe.profiling.timing re-exports these for the model's benchmarks."""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import time

import torch


def median_ms(fn, sets, reps: int, cuda: bool) -> float:
    """Median milliseconds of fn(sets[i % len(sets)]) over reps calls, after warm-up calls (3 on a GPU,
    where the first calls also pick configs and fill caches; 1 on a CPU). Cycling through input sets
    that together exceed the L2 cache keeps repeats honest."""
    for i in range(3 if cuda else 1):
        fn(sets[i % len(sets)])
    if cuda:
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for i, (start, end) in enumerate(events):
            start.record()
            fn(sets[i % len(sets)])
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in events)
    times = []
    for i in range(reps):
        t = time.perf_counter()
        fn(sets[i % len(sets)])
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def device_slug(cuda: bool) -> str:
    """The bench/results/<device> folder name: 'nvidia-h100-80gb-hbm3', 'cpu-2core'."""
    if cuda:
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    return f"cpu-{os.cpu_count()}core"


def environment(cuda: bool) -> dict:
    """Device, versions and date, to commit beside every result."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return dict(
        device=torch.cuda.get_device_name() if cuda else f"CPU, {os.cpu_count()} cores ({platform.machine()})",
        torch=torch.__version__,
        triton=triton_version,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        date=datetime.date.today().isoformat(),
    )
