"""Conformance checks for a router: any function from logits to a routing, ours or yours, held to the
contract its RouterSpec declares. Each check is small and names what it found; `check_router` runs
them all and raises one RouterConformanceError listing every failure.

    from moe.testing import RouterSpec, check_router
    spec = RouterSpec(n_experts=64, top_k=8, rule="softmax_topk", renormalize=False)   # OLMoE's
    check_router(my_router, spec)     # my_router(logits [T, E]) -> (weights [T, k], experts [T, k])

A router may return a third tensor, keep [T, k] (bool), where it drops assignments (expert choice
does: its k is E). The checks:
    shapes          float32 weights and int64 experts of [T, k]; distinct experts, each in range
    reference       the same experts, and weights to float32 rounding, as the float64 loop of the
                    declared rule (moe/testing/reference.py) on logits of several scales
    sums            weights summing to `scale` where the rule normalizes (renormalize, topk_softmax)
    ties            equal scores go to the lower expert index, largest first (torch.topk promises no
                    order), and the same call twice gives the same routing
    permutation     permuting the tokens permutes the routing, exactly
    batch           a token routed alone gets what it gets in a batch, exactly (token-choice rules)
    gradient        d(sum weights * c)/d logits against central finite differences of the float64 rule
    precision       bfloat16 logits routed in float32: the weights of the float32 rule, not of a
                    bfloat16 softmax
Apart, for the pieces a router module adds around its rule:
    check_capacity_order(keep_fn)   drops past an expert's capacity in token order (t, then j)
    check_balance_loss(loss_fn)     E * sum_i f_i P_i on crafted routings (Switch Transformer)
    check_z_loss(loss_fn)           mean logsumexp(logits)^2, also where exp overflows float32 (ST-MoE)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from moe.testing.reference import expert_choice_reference, route_reference


class RouterConformanceError(AssertionError):
    """One or more checks failed; `failures` maps each check's name to what it found."""

    def __init__(self, failures: dict[str, str]):
        self.failures = failures
        super().__init__("router fails " + "; ".join(f"{name}: {why}" for name, why in failures.items()))


@dataclass(frozen=True)
class RouterSpec:
    """What a router promises: moe/model/router.py's module doc defines each field."""

    n_experts: int
    top_k: int
    rule: str = "softmax_topk"
    renormalize: bool = True
    score_bias: tuple[float, ...] | None = None
    groups: int = 1
    topk_groups: int = 1
    scale: float = 1.0
    capacity: int | None = None  # expert_choice: tokens each expert takes

    @property
    def per_token(self) -> bool:
        return self.rule != "expert_choice"

    @property
    def normalized(self) -> bool:
        return self.per_token and (self.rule == "topk_softmax" or self.renormalize)

    def rule_kwargs(self) -> dict:
        """The keyword arguments of route() and route_reference() for a token-choice rule."""
        return dict(
            renormalize=self.renormalize,
            rule=self.rule,
            score_bias=self.score_bias,
            groups=self.groups,
            topk_groups=self.topk_groups,
            scale=self.scale,
        )

    def reference(self, logits: torch.Tensor):
        """(weights, experts, keep or None) in float64."""
        if not self.per_token:
            return expert_choice_reference(logits, self.capacity, scale=self.scale)
        w, e = route_reference(logits, self.top_k, **self.rule_kwargs())
        return w, e, None


def _call(router, logits):
    out = router(logits)
    weights, experts = out[0], out[1]
    keep = out[2] if len(out) > 2 else None
    return weights, experts, keep


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def _close(a: torch.Tensor, b: torch.Tensor, atol=2e-6, rtol=2e-5) -> float | None:
    """The worst error past tolerance, or None."""
    err = (a.double() - b.double()).abs() - (atol + rtol * b.double().abs())
    return None if (err <= 0).all() else float((a.double() - b.double()).abs().max())


def _logits(spec: RouterSpec, T: int, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, spec.n_experts, generator=g) * scale


def check_shapes(router, spec: RouterSpec, seed: int = 0) -> None:
    T = 13
    weights, experts, keep = _call(router, _logits(spec, T, 1.0, seed))
    k = spec.top_k if spec.per_token else spec.n_experts
    assert weights.dtype == torch.float32, f"weights are {weights.dtype}, not float32"
    assert experts.dtype == torch.int64, f"experts are {experts.dtype}, not int64"
    assert tuple(weights.shape) == tuple(experts.shape) == (T, k), (
        f"weights {tuple(weights.shape)} and experts {tuple(experts.shape)}, expected ({T}, {k})"
    )
    assert ((experts >= 0) & (experts < spec.n_experts)).all(), "an expert index out of range"
    assert all(len(set(row)) == k for row in experts.tolist()), "a token routed twice to one expert"
    assert keep is None or (keep.dtype == torch.bool and keep.shape == experts.shape), "keep is not bool [T, k]"


def check_reference(router, spec: RouterSpec, seed: int = 0) -> None:
    for i, scale in enumerate((0.1, 1.0, 4.0)):
        logits = _logits(spec, 29, scale, seed + i)
        weights, experts, keep = _call(router, logits)
        w_ref, e_ref, keep_ref = spec.reference(logits)
        assert torch.equal(experts, e_ref), f"other experts than the {spec.rule} rule chooses (logits x {scale})"
        assert _same(keep, keep_ref), f"other assignments kept than the {spec.rule} rule keeps (logits x {scale})"
        err = _close(weights, w_ref)
        assert err is None, f"weights differ from the {spec.rule} rule's by up to {err:.3g} (logits x {scale})"


def check_sums(router, spec: RouterSpec, seed: int = 0) -> None:
    if not spec.normalized:
        return
    weights, _, _ = _call(router, _logits(spec, 17, 3.0, seed))
    err = _close(weights.sum(-1), torch.full((17,), float(spec.scale)))
    assert err is None, f"a token's weights sum to {weights.sum(-1).tolist()[:3]}..., not {spec.scale}"


def _tied_logits(spec: RouterSpec) -> torch.Tensor:
    E = spec.n_experts
    rows = [torch.zeros(E), torch.ones(E) * 2]  # all equal
    alternating = torch.zeros(E)
    alternating[1::2] = 1.0  # half the experts tied at the top
    rows += [alternating, alternating.flip(0)]
    return torch.stack(rows)


def check_ties(router, spec: RouterSpec, seed: int = 0) -> None:
    logits = _tied_logits(spec)  # rows 0 and 1 tie for every expert too: expert choice's token ties
    first, second = _call(router, logits), _call(router, logits)
    assert all(_same(a, b) for a, b in zip(first, second)), "two calls on the same logits route differently"
    _, e_ref, keep_ref = spec.reference(logits)
    assert torch.equal(first[1], e_ref) and _same(first[2], keep_ref), (
        f"ties broken as {first[1].tolist()[:2]}..., not to the lower index ({e_ref.tolist()[:2]}...)"
    )


def check_permutation(router, spec: RouterSpec, seed: int = 0) -> None:
    logits = _logits(spec, 21, 2.0, seed)
    perm = torch.randperm(21, generator=torch.Generator().manual_seed(seed))
    whole, permuted = _call(router, logits), _call(router, logits[perm])
    for name, a, b in zip(("weights", "experts", "keep"), whole, permuted):
        assert _same(None if a is None else a[perm], b), f"permuting the tokens changed their {name}"


def check_batch(router, spec: RouterSpec, seed: int = 0) -> None:
    if not spec.per_token:
        return
    logits = _logits(spec, 9, 2.0, seed)
    together = _call(router, logits)
    for t in range(9):
        alone = _call(router, logits[t : t + 1])
        for name, a, b in zip(("weights", "experts", "keep"), together, alone):
            assert _same(None if a is None else a[t : t + 1], b), f"token {t}'s {name} depend on the other tokens"


def check_gradient(router, spec: RouterSpec, seed: int = 0, h: float = 1e-4) -> None:
    """Against central differences of the float64 rule at logits far from any tie (the choice stays)."""
    T, E = 5, spec.n_experts
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randperm(T * E, generator=g).view(T, E).double() / (T * E) * 6 - 3).float()  # distinct
    c = torch.randn(T, spec.top_k if spec.per_token else E, generator=g, dtype=torch.float64)
    x = logits.clone().requires_grad_()
    weights, _, _ = _call(router, x)
    (weights.double() * c).sum().backward()
    assert x.grad is not None, "no gradient reaches the logits"
    fd = torch.zeros(T, E, dtype=torch.float64)
    base = logits.double()
    for t in range(T):
        for e in range(E):
            up, down = base.clone(), base.clone()
            up[t, e] += h
            down[t, e] -= h
            fd[t, e] = ((spec.reference(up)[0] - spec.reference(down)[0]) * c).sum() / (2 * h)
    err = _close(x.grad, fd, atol=1e-4, rtol=1e-3)
    assert err is None, f"gradient differs from float64 finite differences by up to {err:.3g}"


def check_precision(router, spec: RouterSpec, seed: int = 0) -> None:
    logits = (_logits(spec, 19, 3.0, seed)).to(torch.bfloat16)
    weights, experts, _ = _call(router, logits)
    w_ref, e_ref, _ = spec.reference(logits.float())
    assert torch.equal(experts, e_ref), "bfloat16 logits choose other experts than float32 routing of them"
    err = _close(weights, w_ref)
    assert err is None, f"bfloat16 logits give weights off by {err:.3g}: routed below float32"


CHECKS = {
    "shapes": check_shapes,
    "reference": check_reference,
    "sums": check_sums,
    "ties": check_ties,
    "permutation": check_permutation,
    "batch": check_batch,
    "gradient": check_gradient,
    "precision": check_precision,
}


def check_router(router, spec: RouterSpec, *, seed: int = 0) -> list[str]:
    """Run every check; the names of those that passed, or RouterConformanceError naming each failure."""
    failures = {}
    for name, check in CHECKS.items():
        try:
            check(router, spec, seed)
        except Exception as e:  # a router that raises fails the check, it does not stop the others
            failures[name] = str(e) or type(e).__name__
    if failures:
        raise RouterConformanceError(failures)
    return list(CHECKS)


def check_capacity_order(keep_fn) -> None:
    """keep_fn(experts [T, k], n_experts, capacity) -> keep bool [T, k]: assignments taken in token
    order (token t's j-th choice is assignment t*k + j), the first `capacity` of each expert kept."""
    g = torch.Generator().manual_seed(0)
    for T, k, E, capacity in ((12, 1, 3, 2), (20, 2, 4, 5), (9, 3, 4, 1)):
        rows = [torch.randperm(E, generator=g)[:k] for _ in range(T)]
        for row in rows[: T // 2]:  # crowd expert 0 so it overflows
            row[row == 0] = row[0]
            row[0] = 0
        experts = torch.stack(rows)
        used, want = [0] * E, []
        for row in experts.tolist():
            want.append([])
            for e in row:
                want[-1].append(used[e] < capacity)
                used[e] += 1
        got = keep_fn(experts, E, capacity)
        if not torch.equal(got.bool(), torch.tensor(want)):
            raise RouterConformanceError({"capacity": f"drops not in token order at T={T}, k={k}, capacity={capacity}"})


def check_balance_loss(loss_fn) -> None:
    """loss_fn(logits [T, E], experts [T, k]) -> L_balance = E * sum_i f_i P_i (unscaled)."""
    E, k = 8, 2
    g = torch.Generator().manual_seed(0)
    cases = []
    spread = torch.stack([torch.tensor([i % E, (i + 1) % E]) for i in range(4 * E)])  # f_i = 1/E
    cases.append((torch.randn(4 * E, E, generator=g), spread, 1.0))  # exactly 1 whatever P
    collapsed = torch.full((32, E), -30.0)
    collapsed[:, :k] = 30.0  # all mass on experts 0 and 1, all assignments there
    cases.append((collapsed, torch.tensor([[0, 1]] * 32), E / k))
    logits = torch.randn(40, E, generator=g) * 2
    experts = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(40)])
    f = torch.bincount(experts.reshape(-1), minlength=E).double() / experts.numel()
    cases.append((logits, experts, float(E * (f * logits.double().softmax(-1).mean(0)).sum())))
    for logits, experts, want in cases:
        got = float(loss_fn(logits, experts))
        if not math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6):
            raise RouterConformanceError({"balance_loss": f"{got:.6g} where E * sum f_i P_i = {want:.6g}"})


def check_z_loss(loss_fn) -> None:
    """loss_fn(logits [T, E]) -> mean over tokens of logsumexp(logits)^2, finite for large logits."""
    g = torch.Generator().manual_seed(0)
    for logits in (torch.randn(16, 8, generator=g) * 3, torch.randn(4, 8, generator=g) + 100.0):
        want = float((torch.logsumexp(logits.double(), -1) ** 2).mean())
        got = float(loss_fn(logits))
        if not math.isclose(got, want, rel_tol=1e-5):
            raise RouterConformanceError({"z_loss": f"{got:.6g} where mean logsumexp^2 = {want:.6g}"})


def spec_of(cfg, *, score_bias=None, capacity: int = 3) -> RouterSpec:
    """The RouterSpec a ModelConfig's router promises, given its score bias (a checkpoint's values)
    and, for expert choice, the tokens each expert takes."""
    return RouterSpec(
        n_experts=cfg.n_experts,
        top_k=cfg.top_k,
        rule=cfg.router_rule,
        renormalize=cfg.router_renormalize,
        score_bias=None if score_bias is None else tuple(float(b) for b in score_bias),
        groups=cfg.router_groups,
        topk_groups=cfg.router_topk_groups,
        scale=cfg.router_scale,
        capacity=capacity if cfg.router_rule == "expert_choice" else None,
    )


def our_router(spec: RouterSpec):
    """moe's own fast routing of the spec's rule (moe/model/router.py), as the checks call a router."""
    from moe.model.router import expert_choice, route

    if not spec.per_token:
        return lambda logits: expert_choice(logits, spec.capacity, scale=spec.scale)
    kwargs = spec.rule_kwargs()
    if spec.score_bias is not None:
        kwargs["score_bias"] = torch.tensor(spec.score_bias)
    return lambda logits: route(logits, spec.top_k, **kwargs)
