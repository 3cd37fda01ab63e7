"""A reading-order window: a learned prior, added to attention scores, that a query at position q
looks near key position a q + b (Graves' location window, 2013, made a straight line).

Legend: N rows, H heads, Q queries, K keys.

    bias[n, h, q, k] = -((key_pos[n, k] - (a_h qpos[n, q] + b_h)) / w_h)^2
    (a, b, log w) = start + shift,  shift [3 H] learned from zeros

Why: a line of text is read left to right, so the j-th thing read sits at a place that grows with j.
Content alone (a query per position, softmax over every column) does not find that place in a few
hundred steps on 2 CPU cores; with this prior it does, and learns the pitch itself
(bench.vision_probe: 20% against 99.7% character accuracy at step 600, a = 1.502 columns per
character from a start of 1). Two places use it when vision.reading_window is on:

    the resampler   fixed: latent l reads the patch columns near l * columns / L (w = 0.5 column), so
                    the visual tokens keep the image's left-to-right order
    gated blocks    learned: the text token d tokens after its image reads visual tokens near a d + b

The resampler's window is fixed because two learned lines in a row are one line too many: only their
product is pinned by the data, and in an exploratory probe run they wandered together (a reader over
such a resampler was at 53% of characters at step 600, one over the fixed one at 75%, the same init).

Off (the default), neither exists and the model is Flamingo's as published.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class ReadingWindow(nn.Module):
    def __init__(self, n_heads: int, slope, start: float, width: float, learned: bool = True):
        """slope: one number, or one per head (a bank of reading speeds)."""
        super().__init__()
        if width <= 0:
            raise ValueError(f"a reading window's width must be > 0, got {width}")
        # Plain floats, not buffers: a model built on the meta device (every trainer builds it so) gets
        # them back intact, and a fixed window has no state at all.
        slopes = tuple(float(x) for x in slope) if isinstance(slope, (list, tuple)) else (float(slope),) * n_heads
        if len(slopes) != n_heads:
            raise ValueError(f"a reading window of {n_heads} heads needs 1 or {n_heads} slopes, got {len(slopes)}")
        self.n_heads, self.start = n_heads, (slopes, (float(start),) * n_heads, (math.log(width),) * n_heads)
        # The learned change, zeros (the init rule for '*.shift', moe/model/init.py). Flat, so AdamW's
        # weight decay, which takes matrices only (moe/training/optim.py), does not pull it back.
        self.shift = nn.Parameter(torch.zeros(3 * n_heads)) if learned else None

    def line(self, dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a, b, w) per head, [H] each (a learned window in its parameters' dtype, a fixed one in `dtype`)."""
        if self.shift is None:
            a, b, log_w = torch.tensor(self.start, dtype=dtype, device=device)
        else:
            shift = self.shift.view(3, -1)
            a, b, log_w = torch.tensor(self.start, dtype=shift.dtype, device=shift.device) + shift
        return a, b, log_w.exp()

    def forward(self, query_pos_NQ: torch.Tensor, key_pos_NHK: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """The additive score bias [N, H, Q, K] (dtype: a fixed window's). query_pos [Q] or [N, Q];
        key_pos [K] or [N, K] (the same for every head) or [N, H, K]."""
        a, b, w = self.line(dtype, query_pos_NQ.device)
        centre_NHQ = a[:, None] * query_pos_NQ[..., None, :].to(a.dtype) + b[:, None]
        if key_pos_NHK.dim() < 3:
            key_pos_NHK = key_pos_NHK.reshape(-1, 1, key_pos_NHK.shape[-1])
        return -(((key_pos_NHK[..., None, :].to(a.dtype) - centre_NHQ[..., None]) / w[:, None, None]) ** 2)
