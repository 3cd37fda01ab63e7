"""Routing: which experts each token goes to, and with what weight. Legend: T tokens, D width, E
experts, K experts per token (top-k), G expert groups.

Rules (`route`, `expert_choice`; the float64 loops in moe/testing/reference.py spell each out):
    softmax_topk   p = softmax(logits); the k largest p; weights p, optionally renormalized to sum 1.
                   Mixtral (renormalized), Qwen2-MoE / Qwen3-MoE / OLMoE (their norm_topk_prob),
                   Switch Transformer (k = 1, not renormalized, with capacity and jitter).
    topk_softmax   the k largest logits; weights softmax over those k alone (gpt-oss, whose gate has
                   a bias: router_bias).
    sigmoid_topk   s = sigmoid(logits); the k largest s; weights s, optionally renormalized
                   (DeepSeek-V3; Llama 4 with k = 1, unnormalized, and the input scaled instead of
                   the output: moe/model/moe_layer.py).
    expert_choice  p = softmax(logits) per token, then each expert takes the `capacity` tokens of
                   largest p (Zhou et al. 2022); weights p. Not causal (a token's experts depend on
                   the tokens after it), so training only: generation refuses it.
Every rule then multiplies the weights by `scale` (DeepSeek-V3's routed_scaling_factor).

The choice (never the weights) may be steered by:
    score_bias b_E  added to p or s when choosing only (DeepSeek-V3's e_score_correction_bias, its
                    auxiliary-loss-free balancing). With bias_update_rate u > 0 it is learned outside
                    the gradient: after each optimizer step, b_i += u * sign(mean_j load_j - load_i),
                    load counted over the step's tokens (all data ranks): `update_balance_biases`.
    groups G        the experts split into G equal groups; a group's score is the sum of its two best
                    (biased) scores; only the topk_groups best groups are chosen from (DeepSeek-V3).
Order: scores in float32, whatever the model's dtype; ties go to the lower expert (or group, or
for expert choice the earlier token) index, unlike torch.topk, which promises no order.

Load-balancing loss (Switch Transformer, extended to top-k):
                    L_balance = E * sum_i f_i * P_i
                    f_i = (assignments to expert i) / (T * k), counted before capacity drops,
                    P_i = mean over tokens of p_i (sigmoid_topk: of s_i / sum_j s_j, DeepSeek-V3's
                    normalised scores).
                    sum_i f_i = sum_i P_i = 1. When assignments are spread evenly (f_i = 1/E) it is
                    exactly 1, whatever P; all tokens on k experts pushes it toward E / k.
                    f carries no gradient (it is a count); the gradient reaches the gate through P.
                    Data parallel: f counts the tokens of all ranks (`count_group` all-reduces
                    the counts) and P stays local, so the mean of the ranks' losses, and of their
                    gradients, is the single-process loss and gradient over the whole batch.
Router z-loss (ST-MoE):  L_z = mean over tokens of logsumexp(logits)^2.
Capacity (optional): capacity = ceil(capacity_factor * T * k / E) assignments per expert. Overflow is
                    chosen by position: assignments are taken in token order (token t's j-th choice is
                    assignment t*k + j) and those past an expert's capacity are dropped. A dropped
                    assignment contributes zero; the token still flows through the residual stream.
                    Expert choice takes the same capacity per expert (capacity_factor 0 counts as 1)
                    and returns all E experts per token, with `keep` marking the ones that chose it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from kernels.permute import count_per_expert

RULES = ("softmax_topk", "topk_softmax", "sigmoid_topk", "expert_choice")
TOKEN_CHOICE = RULES[:3]  # causal: a token's experts depend on that token alone


def scores(logits_TE: torch.Tensor, rule: str) -> torch.Tensor:
    """float32 [T, E]: what a rule's weights are taken from (topk_softmax: the logits themselves)."""
    logits_TE = logits_TE.float()
    if rule == "sigmoid_topk":
        return logits_TE.sigmoid()
    if rule == "topk_softmax":
        return logits_TE
    return logits_TE.softmax(dim=-1)


def route(
    logits: torch.Tensor,
    top_k: int,
    *,
    renormalize: bool = True,
    rule: str = "softmax_topk",
    score_bias: torch.Tensor | None = None,
    groups: int = 1,
    topk_groups: int = 1,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights float32 [T, k], experts int64 [T, k]) from router logits [T, E] by a token-choice
    rule; see the module doc."""
    if logits.dim() != 2:
        raise ValueError(f"route expects logits [T, E], got shape {tuple(logits.shape)}")
    if rule not in TOKEN_CHOICE:
        raise ValueError(
            f"route: rule must be one of {TOKEN_CHOICE} (expert_choice has its own function), got {rule!r}"
        )
    E = logits.shape[-1]
    if not 1 <= top_k <= E:
        raise ValueError(f"route: top_k must be in [1, {E}], got {top_k}")
    if E % groups or not 1 <= topk_groups <= groups or top_k > topk_groups * (E // groups):
        raise ValueError(f"route: {groups} groups of {E} experts, {topk_groups} chosen, cannot give top_k {top_k}")
    s_TE = scores(logits, rule)
    choice_TE = s_TE.detach() if score_bias is None else s_TE.detach() + score_bias.float()
    if groups > 1:
        choice_TE = best_groups_only(choice_TE, groups, topk_groups)
    experts_TK = top_k_indices(choice_TE, top_k)
    weights_TK = s_TE.gather(-1, experts_TK)
    if rule == "topk_softmax":
        weights_TK = weights_TK.softmax(dim=-1)
    elif renormalize:  # + 1e-20: sigmoid scores may all underflow; never changes a softmax's sum (>= 1/E)
        weights_TK = weights_TK / (weights_TK.sum(dim=-1, keepdim=True) + 1e-20)
    if scale != 1:
        weights_TK = weights_TK * scale
    return weights_TK, experts_TK


def best_groups_only(choice_TE: torch.Tensor, groups: int, topk_groups: int) -> torch.Tensor:
    """choice_TE with -inf outside each token's topk_groups best groups, a group scored by the sum of
    its two best entries (one, for groups of one expert)."""
    T, E = choice_TE.shape
    per_group = E // groups
    group_TG = choice_TE.view(T, groups, per_group).topk(min(2, per_group), dim=-1).values.sum(dim=-1)
    chosen_TG = torch.zeros_like(group_TG, dtype=torch.bool).scatter_(-1, top_k_indices(group_TG, topk_groups), True)
    return choice_TE.masked_fill(~chosen_TG.repeat_interleave(per_group, dim=1), float("-inf"))


def expert_choice(
    logits: torch.Tensor, capacity: int, *, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights float32 [T, E], experts int64 [T, E] = 0..E-1 in every row, keep bool [T, E]): each
    expert takes the `capacity` tokens of largest softmax probability (ties to the earlier token);
    a token's weight for an expert that did not take it is zero."""
    if logits.dim() != 2:
        raise ValueError(f"expert_choice expects logits [T, E], got shape {tuple(logits.shape)}")
    if capacity < 1:
        raise ValueError(f"expert_choice: capacity must be >= 1, got {capacity}")
    T, E = logits.shape
    p_TE = scores(logits, "expert_choice")
    taken_EC = top_k_indices(p_TE.detach().T, min(capacity, T))
    # contiguous: torch.compile (2.13, CPU) differentiates p * (a scatter_-built mask, transposed) wrongly
    keep_TE = torch.zeros(E, T, dtype=torch.bool, device=logits.device).scatter_(-1, taken_EC, True).T.contiguous()
    weights_TE = p_TE * keep_TE
    if scale != 1:
        weights_TE = weights_TE * scale
    experts_TE = torch.arange(E, device=logits.device).repeat(T, 1)
    return weights_TE, experts_TE, keep_TE


def top_k_indices(scores_TE: torch.Tensor, k: int) -> torch.Tensor:
    """int64 [T, k]: the k largest entries of each row, largest first, ties to the lower index.
    Up to 4, k rounds of argmax (which returns the first of equal maxima), each masking its pick: on
    the CPU 3x faster than a stable sort of the row at top-2 of 16 (0.17 against 0.50 ms for 2,048
    tokens); beyond, a stable descending sort. Both deterministic, unlike torch.topk."""
    if k > 4:
        return torch.sort(scores_TE, dim=-1, descending=True, stable=True).indices[:, :k]
    left_TE = scores_TE.clone()
    picks = []
    for _ in range(k):
        e_T1 = left_TE.argmax(dim=-1, keepdim=True)
        picks.append(e_T1)
        left_TE.scatter_(-1, e_T1, float("-inf"))
    return torch.cat(picks, dim=-1)


def capacity_keep_mask(experts_TK: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """bool [T, k]: whether each assignment fits in its expert's first `capacity` slots, in position order."""
    one_hot_AE = F.one_hot(experts_TK.reshape(-1), n_experts)
    position_A = ((one_hot_AE.cumsum(dim=0) - 1) * one_hot_AE).sum(dim=-1)  # slot within its expert
    return (position_A < capacity).view_as(experts_TK)


@dataclass
class RouterOutput:
    weights: torch.Tensor  # float32 [T, k] (expert choice: [T, E]); zero where the assignment was dropped
    experts: torch.Tensor  # int64 [T, k]; the chosen experts (also for dropped ones; expert choice: all E)
    logits: torch.Tensor  # float32 [T, E]
    keep: torch.Tensor | None  # bool [T, k], or None when dropless
    tokens_per_expert: torch.Tensor  # int64 [E]: assignments each expert computes (after drops)
    n_dropped: torch.Tensor  # int64 scalar
    f_E: torch.Tensor  # float32 [E]: each expert's share of the assignments (of every rank's, data parallel)
    balance_coef: float = 0.0
    z_coef: float = 0.0
    rule: str = "softmax_topk"
    scale: float = 1.0

    @property
    def unit_weights(self) -> bool:
        """Whether one expert's weight is exactly 1 (a softmax over it, unscaled): the dense twin."""
        return self.rule in ("softmax_topk", "topk_softmax") and self.scale == 1 and self.keep is None

    # The losses are computed when read (training reads them; serving never does, and skips their ops).

    @property
    def balance_loss(self) -> torch.Tensor:
        """L_balance (unscaled)."""
        if self.rule == "sigmoid_topk":
            s_TE = self.logits.sigmoid()
            p_TE = s_TE / s_TE.sum(dim=-1, keepdim=True)
        else:
            p_TE = self.logits.softmax(dim=-1)
        return self.f_E.numel() * (self.f_E * p_TE.mean(dim=0)).sum()

    @property
    def z_loss(self) -> torch.Tensor:
        """L_z (unscaled)."""
        return torch.logsumexp(self.logits, dim=-1).pow(2).mean()

    @property
    def aux_loss(self) -> torch.Tensor:
        """balance_coef * L_balance + z_coef * L_z: add this to the training loss."""
        return self.balance_coef * self.balance_loss + self.z_coef * self.z_loss


class TopKRouter(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_experts: int,
        top_k: int,
        *,
        renormalize: bool = True,
        balance_coef: float = 0.01,
        z_coef: float = 0.001,
        jitter: float = 0.0,
        capacity_factor: float = 0.0,
        rule: str = "softmax_topk",
        bias: bool = False,
        score_bias: bool = False,
        bias_update_rate: float = 0.0,
        groups: int = 1,
        topk_groups: int = 1,
        scale: float = 1.0,
    ):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"TopKRouter: top_k must be in [1, n_experts={n_experts}], got {top_k}")
        if rule not in RULES:
            raise ValueError(f"TopKRouter: rule must be one of {RULES}, got {rule!r}")
        self.gate = nn.Linear(d_model, n_experts, bias=bias)
        self.n_experts, self.top_k, self.renormalize, self.rule = n_experts, top_k, renormalize, rule
        self.balance_coef, self.z_coef = balance_coef, z_coef
        self.jitter, self.capacity_factor = jitter, capacity_factor
        self.groups, self.topk_groups, self.scale = groups, topk_groups, scale
        self.bias_update_rate = bias_update_rate
        if score_bias:  # steers the choice only; a buffer, so no gradient and no optimizer touches it
            self.register_buffer("score_bias", torch.zeros(n_experts))
            self.register_buffer("load_E", torch.zeros(n_experts, dtype=torch.int64), persistent=False)
        else:
            self.score_bias = None
        self.count_group = None  # a process group: take f from the expert counts of all its ranks

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """The score bias at zero, no load counted (after a build on the meta device)."""
        if self.score_bias is not None:
            self.score_bias.zero_()
            self.load_E.zero_()

    def capacity(self, n_tokens: int) -> int | None:
        factor = self.capacity_factor or (1.0 if self.rule == "expert_choice" else 0.0)
        if not factor:
            return None
        return math.ceil(factor * n_tokens * self.top_k / self.n_experts)

    def forward(self, x_TD: torch.Tensor) -> RouterOutput:
        if self.training and self.jitter > 0:  # perturbs what the router sees, never the experts' input
            x_TD = x_TD * torch.empty_like(x_TD).uniform_(1 - self.jitter, 1 + self.jitter)
        with torch.autocast(x_TD.device.type, enabled=False):  # routing decisions in float32
            bias = None if self.gate.bias is None else self.gate.bias.float()
            logits_TE = F.linear(x_TD.float(), self.gate.weight.float(), bias)
        T, E = logits_TE.shape
        capacity = self.capacity(T)
        keep_TK = None
        if self.rule == "expert_choice":
            weights_TK, experts_TK, keep_TK = expert_choice(logits_TE, capacity, scale=self.scale)
            counts_E = keep_TK.sum(dim=0)
            capacity = None  # the rule is its own capacity
        else:
            weights_TK, experts_TK = route(
                logits_TE,
                self.top_k,
                renormalize=self.renormalize,
                rule=self.rule,
                score_bias=self.score_bias,
                groups=self.groups,
                topk_groups=self.topk_groups,
                scale=self.scale,
            )
            counts_E = count_per_expert(experts_TK, E)
        all_counts_E = counts_E
        if self.count_group is not None:
            all_counts_E = counts_E.clone()
            dist.all_reduce(all_counts_E, group=self.count_group)
        f_E = all_counts_E.float() / all_counts_E.sum().clamp(min=1)  # = counts / (T * k) in one process
        if self.training and self.bias_update_rate > 0:
            self.load_E += all_counts_E

        n_dropped = counts_E.new_zeros(())
        if capacity is not None:
            keep_TK = capacity_keep_mask(experts_TK, E, capacity)
            weights_TK = weights_TK * keep_TK
            n_dropped = (~keep_TK).sum()
            counts_E = counts_E.clamp(max=capacity)
        return RouterOutput(
            weights=weights_TK,
            experts=experts_TK,
            logits=logits_TE,
            keep=keep_TK,
            tokens_per_expert=counts_E,
            n_dropped=n_dropped,
            f_E=f_E,
            balance_coef=self.balance_coef,
            z_coef=self.z_coef,
            rule=self.rule,
            scale=self.scale,
        )

    @torch.no_grad()
    def update_balance_bias(self) -> None:
        """The auxiliary-loss-free step (module doc): move the score bias against each expert's load
        since the last call, then forget the load. No-op without a bias update rate."""
        if self.score_bias is None or self.bias_update_rate <= 0:
            return
        load_E = self.load_E.float()
        self.score_bias += self.bias_update_rate * torch.sign(load_E.mean() - load_E)
        self.load_E.zero_()


def update_balance_biases(model: nn.Module) -> None:
    """After an optimizer step: every router's auxiliary-loss-free bias update."""
    for m in model.modules():
        if isinstance(m, TopKRouter):
            m.update_balance_bias()
