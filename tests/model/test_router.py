"""The router against float64 references written from the formulas in moe/model/router.py
(moe/testing/reference.py; tests/testing runs every rule through the conformance kit)."""

import math

import pytest
import torch

from moe.model.router import TopKRouter, capacity_keep_mask, route, update_balance_biases
from moe.testing import route_reference


@pytest.mark.parametrize("T, E, k", [(1, 2, 1), (7, 16, 2), (33, 8, 3), (5, 4, 4)])
@pytest.mark.parametrize("renormalize", [True, False])
def test_route_matches_reference(T, E, k, renormalize):
    logits = torch.randn(T, E) * 3
    w, e = route(logits, k, renormalize=renormalize)
    w_ref, e_ref = route_reference(logits, k, renormalize=renormalize)
    assert w.dtype == torch.float32 and e.dtype == torch.int64 and w.shape == e.shape == (T, k)
    assert torch.equal(e, e_ref)
    torch.testing.assert_close(w.double(), w_ref, atol=1e-6, rtol=1e-5)
    assert all(len(set(row)) == k for row in e.tolist())  # distinct experts per token
    if renormalize:
        torch.testing.assert_close(w.sum(-1), torch.ones(T))


@pytest.mark.parametrize("renormalize", [True, False])
def test_route_weights_gradient_matches_float64(renormalize):
    """The weights are differentiable in the logits (the chosen experts are not): against autograd
    through a float64 softmax, with the reference's choice of experts."""
    torch.manual_seed(0)
    logits = (torch.randn(11, 8) * 2).requires_grad_()
    c = torch.randn(11, 2, dtype=torch.float64)
    w, _ = route(logits, 2, renormalize=renormalize)
    (w.double() * c).sum().backward()
    logits64 = logits.detach().double().requires_grad_()
    _, e_ref = route_reference(logits64.detach(), 2, renormalize=renormalize)
    w64 = logits64.softmax(-1).gather(-1, e_ref)
    if renormalize:
        w64 = w64 / w64.sum(-1, keepdim=True)
    (w64 * c).sum().backward()
    torch.testing.assert_close(logits.grad.double(), logits64.grad, atol=1e-6, rtol=1e-5)


def test_ties_go_to_the_lower_index():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0], [2.0, 5.0, 2.0, 5.0, 2.0]])
    _, e = route(logits, 2)
    assert e.tolist() == [[1, 2], [0, 1], [1, 3]]
    _, e3 = route(logits, 3)
    assert e3.tolist() == [[1, 2, 3], [0, 1, 2], [1, 3, 0]]


def test_route_half_precision_logits_are_routed_in_float32():
    logits = torch.randn(9, 8).to(torch.bfloat16)
    w, e = route(logits, 2)
    w_ref, e_ref = route_reference(logits.float(), 2)
    assert w.dtype == torch.float32 and torch.equal(e, e_ref)


def test_route_rejects_bad_k():
    with pytest.raises(ValueError, match="top_k"):
        route(torch.randn(3, 4), 5)


def _router(E=8, k=2, D=16, **kw):
    return TopKRouter(D, E, k, **kw).double()


def test_aux_losses_match_formulas():
    r = _router(balance_coef=0.3, z_coef=0.7)
    x = torch.randn(50, 16, dtype=torch.float64)
    out = r(x)
    logits = x @ r.gate.weight.double().T
    p = logits.softmax(-1)
    _, e_ref = route_reference(logits, 2)
    f = torch.tensor([(e_ref == i).sum().item() / (50 * 2) for i in range(8)], dtype=torch.float64)
    balance = 8 * (f * p.mean(0)).sum()
    z = (torch.logsumexp(logits, -1) ** 2).mean()
    tol = dict(atol=1e-6, rtol=1e-5)  # the router computes in float32 by design
    torch.testing.assert_close(out.balance_loss.double(), balance, **tol)
    torch.testing.assert_close(out.z_loss.double(), z, **tol)
    torch.testing.assert_close(out.aux_loss.double(), 0.3 * balance + 0.7 * z, **tol)
    assert out.tokens_per_expert.tolist() == [(e_ref == i).sum().item() for i in range(8)]


def test_data_parallel_balance_takes_f_from_every_ranks_counts(monkeypatch):
    """With a count group the router all-reduces its expert counts and takes f from the sum, while
    P (and the reported counts) stay local: here a stand-in group whose other rank routed other
    tokens, against the formula over both ranks' counts and this rank's P."""
    import moe.model.router as router_mod

    r = _router()
    x, x_other = torch.randn(40, 16), torch.randn(24, 16)
    calls = []

    alone, other = r(x), r(x_other)

    def all_reduce(t, group=None):
        calls.append(group)
        t += other.tokens_per_expert

    monkeypatch.setattr(router_mod.dist, "all_reduce", all_reduce)
    r.count_group = "data group"
    together = r(x)
    assert calls == ["data group"]
    counts = (alone.tokens_per_expert + other.tokens_per_expert).double()
    f = counts / counts.sum()
    balance = 8 * (f * (x.double() @ r.gate.weight.double().T).softmax(-1).mean(0)).sum()
    torch.testing.assert_close(together.balance_loss.double(), balance, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(together.balance_loss, alone.balance_loss)  # the other rank's counts mattered
    assert torch.equal(together.tokens_per_expert, alone.tokens_per_expert)  # the local counts are reported


def test_balance_loss_is_one_at_uniform_routing_and_grows_when_collapsed():
    E, k = 8, 2
    r = _router(E, k)
    with torch.no_grad():
        r.gate.weight.zero_()  # equal logits: every P_i = 1/E
    x = torch.randn(64, 16, dtype=torch.float64)
    out = r(x)
    # Ties all go to experts 0 and 1, yet P is uniform, so E * sum f_i / E = 1 exactly.
    assert abs(out.balance_loss.item() - 1) < 1e-6
    # Uniform assignments with non-uniform P: still exactly 1 (the floor of the balanced case).
    logits = torch.randn(E * 10, E, dtype=torch.float64)
    experts = torch.arange(E * 10).remainder(E)
    f = torch.bincount(experts, minlength=E).double() / (E * 10)
    assert abs(E * (f * logits.softmax(-1).mean(0)).sum().item() - 1) < 1e-12
    # Collapsed routing: one expert gets nearly all probability mass -> close to E / k.
    with torch.no_grad():
        r.gate.weight.zero_()
        r.gate.weight[3, 0] = 50.0
        r.gate.weight[5, 0] = 49.0
    x = torch.randn(64, 16, dtype=torch.float64).abs() + 1
    assert r(x).balance_loss.item() > 0.99 * E / k


def capacity_reference(experts, E, capacity):
    """Walk the assignments in token order (t, then j), counting per expert."""
    used = [0] * E
    keep = []
    for row in experts.tolist():
        keep.append([])
        for e in row:
            keep[-1].append(used[e] < capacity)
            used[e] += 1
    return torch.tensor(keep)


@pytest.mark.parametrize("capacity_factor", [0.5, 1.0, 1.25])
def test_capacity_drops_by_position(capacity_factor):
    T, E, k = 40, 4, 2
    r = _router(E, k, capacity_factor=capacity_factor)
    x = torch.randn(T, 16, dtype=torch.float64)
    with torch.no_grad():
        r.gate.weight[0] += 0.5  # skew toward expert 0 so it overflows
    out = r(x)
    capacity = math.ceil(capacity_factor * T * k / E)
    keep_ref = capacity_reference(out.experts, E, capacity)
    assert torch.equal(out.keep, keep_ref)
    assert out.n_dropped.item() == (~keep_ref).sum().item()
    assert (out.weights[~keep_ref] == 0).all()
    assert out.tokens_per_expert.tolist() == [min(capacity, (out.experts == e).sum().item()) for e in range(E)]
    assert out.tokens_per_expert.max().item() <= capacity


def test_dropless_by_default():
    out = _router()(torch.randn(30, 16, dtype=torch.float64))
    assert out.keep is None and out.n_dropped.item() == 0
    assert out.tokens_per_expert.sum().item() == 30 * 2


def test_capacity_keep_mask_direct():
    experts = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0]])
    assert capacity_keep_mask(experts, 3, 2).tolist() == [[True, True], [True, True], [False, True], [False, False]]


def test_jitter_only_in_training_and_only_on_the_router_input():
    r = _router(jitter=0.5)
    x = torch.randn(20, 16, dtype=torch.float64)
    r.eval()
    a, b = r(x), r(x)
    assert torch.equal(a.logits, b.logits)
    torch.testing.assert_close(a.logits, (x @ r.gate.weight.T).float())  # clean input: no jitter in eval
    r.train()
    c = r(x)
    assert not torch.allclose(c.logits, a.logits)
    x_before = x.clone()
    r(x)
    assert torch.equal(x, x_before)  # the caller's tensor (the experts' input) is untouched


def test_gate_is_float32_under_autocast():
    r = TopKRouter(16, 8, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = r(torch.randn(5, 16))
    assert out.logits.dtype == torch.float32 and out.weights.dtype == torch.float32


def test_the_configs_rule_names_are_the_routers():
    from moe.config import ROUTER_RULES
    from moe.model.router import RULES

    assert ROUTER_RULES == RULES


def test_balancing_bias_steers_the_choice_never_the_weights_and_learns_from_load():
    """DeepSeek-V3's auxiliary-loss-free balancing: after a training forward, one update moves each
    expert's bias by rate * sign(mean load - its load); the weights stay the unbiased scores."""
    torch.manual_seed(0)
    r = TopKRouter(16, 8, 2, rule="sigmoid_topk", score_bias=True, bias_update_rate=0.01).double()
    with torch.no_grad():
        r.gate.weight[0] += 0.4  # skew toward expert 0
    x = torch.randn(64, 16, dtype=torch.float64).abs()
    out = r.train()(x)
    load = out.tokens_per_expert.double()
    assert r.score_bias.requires_grad is False and "score_bias" in r.state_dict()
    update_balance_biases(r)
    torch.testing.assert_close(r.score_bias.double(), 0.01 * torch.sign(load.mean() - load), atol=1e-7, rtol=0)
    assert r.score_bias[0] < 0  # the overloaded expert is pushed down
    update_balance_biases(r)  # no forward since: nothing counted, nothing moves
    torch.testing.assert_close(r.score_bias.double(), 0.01 * torch.sign(load.mean() - load), atol=1e-7, rtol=0)
    with torch.no_grad():
        r.score_bias.copy_(torch.tensor([-5.0, 5, 0, 0, 0, 0, 0, 0]))  # never expert 0, always expert 1
    out = r.eval()(x)
    assert (out.experts != 0).all() and (out.experts == 1).any(-1).all()
    s = (x @ r.gate.weight.T).sigmoid()
    torch.testing.assert_close(
        out.weights.double(),
        (s.gather(-1, out.experts) / s.gather(-1, out.experts).sum(-1, keepdim=True)),
        atol=1e-6,
        rtol=1e-5,
    )
    r(x)
    update_balance_biases(r)  # eval forwards count nothing
    assert r.score_bias.tolist() == [-5.0, 5, 0, 0, 0, 0, 0, 0]


def test_balancing_bias_evens_the_load_over_steps():
    torch.manual_seed(0)
    r = TopKRouter(16, 8, 2, rule="sigmoid_topk", score_bias=True, bias_update_rate=0.02).double()
    with torch.no_grad():
        r.gate.weight[0] += 0.5
    x = torch.randn(256, 16, dtype=torch.float64).abs()
    first = r.train()(x).tokens_per_expert
    for _ in range(60):
        r(x)
        update_balance_biases(r)
    last = r(x).tokens_per_expert
    assert last.max() - last.min() < (first.max() - first.min()) / 3, (first.tolist(), last.tolist())


@pytest.mark.parametrize("rule", ["softmax_topk", "sigmoid_topk", "topk_softmax", "expert_choice"])
def test_gate_bias_and_rule_reach_the_logits(rule):
    r = TopKRouter(16, 8, 2, rule=rule, bias=True)
    with torch.no_grad():
        r.gate.bias.copy_(torch.arange(8.0))
    x = torch.randn(12, 16)
    out = r(x)
    torch.testing.assert_close(out.logits, x @ r.gate.weight.T + torch.arange(8.0))
    assert out.rule == rule


def test_expert_choice_takes_capacity_tokens_per_expert():
    r = TopKRouter(16, 8, 2, rule="expert_choice", capacity_factor=1.5)
    out = r(torch.randn(40, 16))
    capacity = math.ceil(1.5 * 40 * 2 / 8)
    assert out.experts.shape == (40, 8) and out.keep.sum(0).tolist() == [capacity] * 8
    assert out.tokens_per_expert.tolist() == [capacity] * 8
    assert (out.weights[~out.keep] == 0).all() and (out.weights[out.keep] > 0).all()
