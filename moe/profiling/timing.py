"""The timing harness every benchmark shares (the method is written out in bench/README.md): CUDA
events after warm-up, the median of many runs, and the device's own ceilings (a dense bf16 matmul
and a device-to-device copy) measured in the same process, so results are percentages of what this
GPU did today rather than of a datasheet; and the device, versions and date saved beside results."""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import time

import torch


def median_ms(fn, sets, reps: int, cuda: bool) -> float:
    """Median milliseconds of fn(sets[i % len(sets)]) over reps calls, after 3 warm-up calls.
    Cycling through input sets that together exceed the L2 cache keeps repeats honest."""
    for i in range(3):
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


def device_ceilings(device, dtype, cuda: bool, reps: int) -> tuple[float, float]:
    """(dense matmul TFLOP/s, copy GB/s counting bytes read plus bytes written), measured here:
    an 8192^3 matmul and a 1 GiB copy on a GPU, 1024^3 and 64 MiB on a CPU."""
    n = 8192 if cuda else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    flops = 2 * n**3 / median_ms(lambda _: a @ b, [None], reps, cuda) / 1e9
    numel = (2**30 if cuda else 2**26) // 2
    src, dst = torch.randn(numel, device=device, dtype=dtype), torch.empty(numel, device=device, dtype=dtype)
    copy = 2 * src.numel() * src.element_size() / median_ms(lambda _: dst.copy_(src), [None], reps, cuda) / 1e6
    return flops, copy


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
    return dict(device=torch.cuda.get_device_name() if cuda else f"CPU, {os.cpu_count()} cores ({platform.machine()})",
                torch=torch.__version__, triton=triton_version, cuda=torch.version.cuda,
                python=platform.python_version(), date=datetime.date.today().isoformat())
