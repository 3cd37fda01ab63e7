"""The timing harness every benchmark shares (the method is written out in bench/README.md): CUDA
events after warm-up, the median of many runs, and the device's own ceilings (a dense bf16 matmul
and a device-to-device copy) measured in the same process, so results are percentages of what this
GPU did today rather than of a datasheet; and the device, versions and date saved beside results.
median_ms, device_slug and environment live in kernels/measure.py (the kernels' own tools time and
stamp with them too, and kernels may not import moe); they are re-exported here."""

from __future__ import annotations

import torch

from kernels.measure import device_slug, environment, median_ms  # noqa: F401  (one copy: the kernels' tools use it)


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
