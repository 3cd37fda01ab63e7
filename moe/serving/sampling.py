r"""Sampling settings, the distribution they define, and the speculative-decoding acceptance rule.

Legend: V vocab, k draft tokens, B rows.

Every random choice is made from a uniform draw u in [0, 1) taken from the request's own generator,
so a request's output depends on its seed and its own tokens, never on what else shares the batch:
    sample(p, u) = the first token whose cumulative probability exceeds u * sum(p)   (inverse CDF)

Speculative decoding (Leviathan et al. 2023; Chen et al. 2023). The draft proposed d_1..d_k, each
d_i ~ q_i; the target scored the same positions, giving p_1..p_{k+1}:
    accept d_i while u_i < p_i(d_i) / q_i(d_i)        (probability min(1, p/q))
    at the first rejection i:  emit one token ~ normalize(max(0, p_i - q_i))
    if all k were accepted:    emit a bonus token ~ p_{k+1}
The emitted tokens are distributed exactly as if sampled from the target alone. Greedy decoding is the
same rule on one-hot distributions: accept while the draft's token is the target's argmax, then emit
the target's argmax.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None  # sample among the k most likely tokens
    top_p: float | None = None  # nucleus: the smallest set whose probability reaches top_p
    greedy: bool = False  # always the most likely token (same as temperature 0)

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {t!r}")
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1
        ):
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if self.top_p is not None and (
            isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1
        ):  # nan fails the range test too
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.greedy, bool):
            raise ValueError(f"greedy must be true or false, got {self.greedy!r}")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0

    @classmethod
    def parse(cls, settings: SamplingParams | dict | None) -> SamplingParams:
        """From a SamplingParams, a dict of its fields (unknown keys are an error naming them), or None."""
        if settings is None:
            return cls()
        if isinstance(settings, cls):
            return settings
        if not isinstance(settings, dict):
            raise ValueError(f"sampling settings must be a dict or SamplingParams, got {type(settings).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"unknown sampling setting(s) {unknown}; known: {sorted(known)}")
        return cls(**settings)


def probabilities(logits_V: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The float32 distribution [..., V] that `params` samples from: one-hot on the argmax when greedy,
    else softmax(logits / temperature) restricted to the top_k tokens and the top_p nucleus."""
    logits = logits_V.float()
    if params.is_greedy:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = (
        logits - logits.max(-1, keepdim=True).values
    ) / params.temperature  # <= 0: a tiny temperature cannot overflow
    if params.top_k is not None and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_p = sorted_logits.softmax(-1)
        drop = sorted_p.cumsum(-1) - sorted_p >= params.top_p  # keep tokens until the mass reaches top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return logits.softmax(-1)


def sample(p_BV: torch.Tensor, u_B: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: int64 [B] from (unnormalized) distributions [B, V] and uniforms [B] in [0, 1).
    A token of probability 0 is never chosen."""
    cdf_BV = p_BV.double().cumsum(-1)
    target_B1 = (u_B.double() * cdf_BV[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf_BV, target_B1, right=True).squeeze(-1).clamp(max=p_BV.shape[-1] - 1)


def accept_draft(
    p_BKV: torch.Tensor, q_BkV: torch.Tensor, draft_Bk: torch.Tensor, u_Bk: torch.Tensor, u_B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The acceptance rule above for B rows at once. p [B, k+1, V] target distributions, q [B, k, V]
    draft distributions, draft [B, k] proposed tokens, u [B, k] and [B] uniforms in [0, 1).
    Returns (n_accepted [B] in 0..k, the token emitted after them [B])."""
    B, k = draft_Bk.shape
    rows = torch.arange(B)
    if k == 0:
        return torch.zeros(B, dtype=torch.long), sample(p_BKV[:, 0], u_B)
    p_tok = p_BKV[:, :k].gather(-1, draft_Bk.unsqueeze(-1)).squeeze(-1)
    q_tok = q_BkV.gather(-1, draft_Bk.unsqueeze(-1)).squeeze(-1)
    accepted_Bk = u_Bk * q_tok < p_tok  # u < p/q without dividing by q = 0
    n_B = accepted_Bk.long().cumprod(-1).sum(-1)  # accepted prefix length
    residual_BV = p_BKV[rows, n_B].clone()  # the bonus distribution p_{k+1} where all were accepted
    rejected = n_B < k
    if rejected.any():
        i = n_B[rejected]
        diff = (p_BKV[rows[rejected], i] - q_BkV[rows[rejected], i]).clamp(min=0)
        # p = q exactly leaves nothing to correct (a rejection then has probability 0; guard rounding)
        empty = diff.sum(-1, keepdim=True) <= 0
        residual_BV[rejected] = torch.where(empty, p_BKV[rows[rejected], i], diff)
    return n_B, sample(residual_BV, u_B)
