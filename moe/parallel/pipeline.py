"""Pipeline parallelism: this rank's stage of the model and a torch.distributed.pipelining schedule.

A Stage holds the layers `moe.layout.stage_layers` gives it, under the full model's parameter
names (blocks.<i>.attn.wq.weight, ...), so a distributed checkpoint written by any layout names the
same tensors. The first stage also embeds the tokens; the last also norms and projects to logits.

The router's auxiliary losses are computed inside every stage, but only the last stage has a loss
to call backward on. `with_aux_loss` hands each one to autograd as Megatron does: the hidden state
passes through unchanged, and on the way back the aux loss receives gradient 1, as if it had been
added to the loss. The schedule then divides every gradient by the microbatch count
(scale_grads), which gives the mean over microbatches of (cross-entropy + aux), the same as
gradient accumulation in one process.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleInterleavedZeroBubble,
)

from moe.layout import Layout, rank_chunks
from moe.model import MoETransformer, Positions
from moe.model.transformer import install_paged_caches


class _WithAuxLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, aux):
        ctx.aux_meta = (aux.shape, aux.dtype, aux.device)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        shape, dtype, device = ctx.aux_meta
        return grad, torch.ones(shape, dtype=dtype, device=device)


def with_aux_loss(x: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
    return _WithAuxLoss.apply(x, aux)


class Stage(nn.Module):
    """Layers `layers` of `model` (shared, not copied): token ids -> hidden on the first stage,
    hidden -> hidden in the middle, hidden -> logits on the last. With an interleaved schedule a rank
    runs several stages: `layers` is then their list of ranges, this module holds them all (for the
    optimizer and checkpoints) and `chunks()` gives one Stage per range for the schedule."""

    def __init__(self, model: MoETransformer | Stage, layers: range | list[range]):
        super().__init__()
        self.layer_chunks = [layers] if isinstance(layers, range) else list(layers)
        self.first = self.layer_chunks[0].start == 0
        self.last = self.layer_chunks[-1].stop == model.cfg.n_layers
        if self.first:
            self.tok_emb = model.tok_emb
        blocks = model.blocks  # a model's ModuleList, or the ModuleDict of a rank's Stage
        self.blocks = nn.ModuleDict(  # names as in the model's ModuleList
            {
                str(i): blocks[str(i)] if isinstance(blocks, nn.ModuleDict) else blocks[i]
                for r in self.layer_chunks
                for i in r
            }
        )
        if self.last:
            self.norm, self.lm_head = model.norm, model.lm_head
        self.rotary = model.rotary  # its tables are buffers kept out of state_dict
        self.cfg = model.cfg
        self._chunks: list[Stage] | None = None

    def chunks(self) -> list[Stage]:
        """The stages this rank runs, in order (itself, unless interleaved); the same objects each call."""
        if self._chunks is None:
            self._chunks = [self] if len(self.layer_chunks) == 1 else [Stage(self, r) for r in self.layer_chunks]
        return self._chunks

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x_BTD, _ = self.body(h)
        if self.last:
            return self.lm_head(self.norm(x_BTD))
        # zero bubble's split backward detaches a stage's output in place, which a view (with_aux_loss's) refuses
        return x_BTD.clone() if x_BTD._is_view() else x_BTD

    def body(self, h: torch.Tensor, positions: Positions | None = None):
        """The embedding (first stage) and the blocks: (hidden [B, T, D], each block's routing).
        positions: None for 0..T-1 uncached (training), or a paged batch (serving)."""
        x_BTD = self.tok_emb(h) if self.first else h
        positions = positions or Positions.causal(x_BTD.shape[1], x_BTD.device)
        rope = positions.rope(*self.rotary.tables(positions.length))
        routings = []
        for block in self.blocks.values():
            x_BTD, routing = block(x_BTD, rope, positions)
            if torch.is_grad_enabled():
                x_BTD = with_aux_loss(x_BTD, routing.aux_loss)
            routings.append(routing)
        return x_BTD, routings

    def setup_paged_caches(self, n_pages: int, page_size: int, dtype: torch.dtype | None = None) -> None:
        """The serving engine's page pool in this stage's blocks (see MoETransformer's)."""
        dtype = dtype or next(self.parameters()).dtype
        install_paged_caches(self.blocks.values(), self.cfg, n_pages, page_size, dtype)


def cross_entropy(logits_BTV: torch.Tensor, targets_BT: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits_BTV.float().reshape(-1, logits_BTV.shape[-1]), targets_BT.reshape(-1))


def build_stage(model: MoETransformer, layout: Layout, pp_rank: int) -> Stage:
    chunks = rank_chunks(model.cfg.n_layers, layout)[pp_rank]
    return Stage(model, chunks[0] if len(chunks) == 1 else chunks)


def build_schedule(stage: Stage, layout: Layout, pp_rank: int, pp_group, device: torch.device):
    """The schedule that runs one training step of `layout.microbatches` microbatches: GPipe or
    1F1B over one stage a rank, or interleaved 1F1B or zero bubble (each backward split into input
    and weight gradients, the weight ones filling the bubble) over this rank's stages pp_rank,
    pp_rank + pp, ..."""
    pipe_stages = [
        PipelineStage(chunk, pp_rank + k * layout.pp, layout.stages, device, group=pp_group)
        for k, chunk in enumerate(stage.chunks())
    ]
    if layout.virtual_stages > 1:
        multi = {"interleaved-1f1b": ScheduleInterleaved1F1B, "zero-bubble": ScheduleInterleavedZeroBubble}
        return multi[layout.schedule](
            pipe_stages, n_microbatches=layout.microbatches, loss_fn=cross_entropy, scale_grads=True
        )
    schedule = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe}[layout.schedule]
    return schedule(pipe_stages[0], n_microbatches=layout.microbatches, loss_fn=cross_entropy, scale_grads=True)
