"""The leak's training recipe at full scale, for `python -m moe figures`: the batch-size ramp to 60M
tokens a step, and the checkpoint interval that loses the least work to failures on 25,000 GPUs.
Imports no torch.

The ramp is the one `train --batch-size-ramp` runs (TrainConfig.batch_size_at, Megatron's rule over
tokens). The leak says only that the batch "was gradually ramped up over a number of days" to 60M
tokens; the start (an eighth of it), the step (an eighth) and the span (the first 1T of the 13T
tokens, about a week at the leak's ~100 days) are our choice, stated in the table.

Checkpoint interval: with checkpoints costing C seconds, restarts R, and the cluster failing every M
seconds on average (M = one GPU's mean time between failures / GPUs), Young's interval
tau = sqrt(2 C M) minimises the first-order waste C / tau + tau / (2 M); Daly's higher-order one,
tau = sqrt(2 C M) (1 + sqrt(C / 2M) / 3 + (C / 2M) / 9) - C (for C < 2M), is what is shown, with the
wall time lost in Daly's exact model of exponential failures (lost_fraction).
The default failure rate is Llama 3's published one: 419 unexpected interruptions in 54 days on
16,384 GPUs, one per ~50,000 GPU-hours.
"""

from __future__ import annotations

import math

from moe.config import ModelConfig, TrainConfig
from moe.estimates.leak import LEAK_TRAIN_BATCH_TOKENS, TRAIN_TOKENS
from moe.estimates.units import si

LEAK_GPUS = 25_000  # leak: "~25,000 A100s for 90 to 100 days"
GPU_MTBF_HOURS = 16_384 * 54 * 24 / 419  # Llama 3: 419 unexpected interruptions, 54 days, 16,384 GPUs
RAMP_TOKENS = 1e12  # our choice: the ramp spans the first 1T tokens


def leak_ramp(seq_len: int = 8192) -> TrainConfig:
    """The ramp to the leak's 60M-token batch, as a TrainConfig over the leak's 13T tokens."""
    final = int(LEAK_TRAIN_BATCH_TOKENS // seq_len // 8 * 8)  # sequences, a multiple of the 8 ramp steps
    return TrainConfig(
        batch_size=final,
        seq_len=seq_len,
        max_steps=int(TRAIN_TOKENS // (final * seq_len)),
        warmup_steps=0,
        ramp_start_batch=final // 8,
        ramp_increment=final // 8,
        ramp_tokens=int(RAMP_TOKENS),
    )


def ramp_rows(cfg: ModelConfig, train: TrainConfig) -> list[tuple[str, ...]]:
    """Per batch size of the ramp: tokens a step, tokens each expert of a layer takes a step on
    average (tokens x top_k / experts), the steps at that size and the tokens they hold."""
    steps = train.steps_by_batch_size()
    tokens = sum(n * b * train.seq_len for b, n in steps.items())
    rows = [
        (
            f"{b:,} x {train.seq_len:,}",
            si(b * train.seq_len),
            si(b * train.seq_len * cfg.top_k / cfg.n_experts),
            f"{n:,}",
            si(n * b * train.seq_len),
        )
        for b, n in steps.items()
    ]
    fixed = train.max_steps
    rows.append(("all", "-", "-", f"{sum(steps.values()):,} ({fixed:,} at 60M from the start)", si(tokens)))
    return rows


def young_daly_s(checkpoint_s: float, mtbf_s: float) -> float:
    """Daly's checkpoint interval (seconds of work between checkpoints) for cost C and cluster MTBF M."""
    c, m = checkpoint_s, mtbf_s
    if c >= 2 * m:
        return m  # Daly: checkpointing costs more than the failures it saves; one per MTBF
    r = c / (2 * m)
    return math.sqrt(2 * c * m) * (1 + math.sqrt(r) / 3 + r / 9) - c


def lost_fraction(interval_s: float, checkpoint_s: float, restart_s: float, mtbf_s: float) -> float:
    """The share of wall time that produces no kept work, in Daly's model of exponentially
    distributed failures: a segment of tau work plus C writing completes in expected time
    M e^(R/M) (e^((tau+C)/M) - 1), so the run takes that over tau per unit of work."""
    m = mtbf_s
    per_work = m * math.exp(restart_s / m) * math.expm1((interval_s + checkpoint_s) / m) / interval_s
    return 1 - 1 / per_work


def checkpoint_rows(
    gpus: int = LEAK_GPUS,
    gpu_mtbf_hours: float = GPU_MTBF_HOURS,
    costs_s=(60, 300, 900, 1800),
    restart_s: float = 600,
) -> list[tuple[str, ...]]:
    mtbf_s = gpu_mtbf_hours * 3600 / gpus
    rows = []
    for c in costs_s:
        tau = young_daly_s(c, mtbf_s)
        rows.append(
            (
                f"{c / 60:.0f} min",
                f"{tau / 60:.0f} min",
                f"{lost_fraction(tau, c, restart_s, mtbf_s):.1%}",
                f"{lost_fraction(4 * tau, c, restart_s, mtbf_s):.1%}",
            )
        )
    return rows
