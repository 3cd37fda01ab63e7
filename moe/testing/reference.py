"""The routing rules as float64 loops over tokens, the same signatures as moe/model/router.py's
`route` and `expert_choice`: the slow, obviously correct versions the fast ones are held against
(and the default reference of the conformance checks). Each line is one step of the module doc there.
"""

from __future__ import annotations

import math

import torch


def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def _best(values: list[float], k: int) -> list[int]:
    """The indices of the k largest values, largest first, ties to the lower index."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))[:k]


def route_reference(
    logits,
    top_k: int,
    *,
    renormalize: bool = True,
    rule: str = "softmax_topk",
    score_bias=None,
    groups: int = 1,
    topk_groups: int = 1,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights float64 [T, k], experts int64 [T, k]): route(), one token at a time in float64."""
    bias = [0.0] * logits.shape[-1] if score_bias is None else [float(b) for b in score_bias]
    weights, experts = [], []
    for row in logits.double().tolist():
        if rule == "softmax_topk":
            s = _softmax(row)
        elif rule == "sigmoid_topk":
            s = [1 / (1 + math.exp(-v)) for v in row]
        elif rule == "topk_softmax":
            s = row
        else:
            raise ValueError(f"route_reference: unknown rule {rule!r}")
        choice = [v + b for v, b in zip(s, bias)]
        per = len(row) // groups
        group_score = [sum(sorted(choice[g * per : (g + 1) * per], reverse=True)[:2]) for g in range(groups)]
        allowed = {g * per + i for g in _best(group_score, topk_groups) for i in range(per)}
        choice = [v if i in allowed else -math.inf for i, v in enumerate(choice)]
        chosen = _best(choice, top_k)
        w = [s[i] for i in chosen]
        if rule == "topk_softmax":
            w = _softmax(w)
        elif renormalize:
            w = [v / (sum(w) + 1e-20) for v in w]
        weights.append([v * scale for v in w])
        experts.append(chosen)
    return torch.tensor(weights, dtype=torch.float64), torch.tensor(experts, dtype=torch.int64)


def expert_choice_reference(
    logits, capacity: int, *, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """expert_choice(), in float64: each expert walks the tokens by its probability (ties to the
    earlier token) and takes the first `capacity`."""
    p = [_softmax(row) for row in logits.double().tolist()]
    T, E = len(p), len(p[0])
    keep = [[False] * E for _ in range(T)]
    for e in range(E):
        for t in _best([p[t][e] for t in range(T)], capacity):
            keep[t][e] = True
    weights = [[p[t][e] * scale if keep[t][e] else 0.0 for e in range(E)] for t in range(T)]
    experts = [list(range(E)) for _ in range(T)]
    return torch.tensor(weights, dtype=torch.float64), torch.tensor(experts), torch.tensor(keep)
