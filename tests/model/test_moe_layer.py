"""The MoE layer against the per-token loop, in float64, for both activations."""

import pytest
import torch
import torch.nn.functional as F
from conftest import ROUTING, shrunk

from moe.model.moe_layer import MoELayer, moe_layer_reference


def layer_for(**overrides):
    return MoELayer(shrunk("tiny", **overrides)).double()


def starve_experts(layer, experts):
    """Make some experts unreachable so the test covers experts that receive no tokens."""
    with torch.no_grad():
        layer.router.gate.weight[experts] = 0
        layer.router.gate.weight[experts, 0] = -100.0


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
@pytest.mark.parametrize("top_k", [1, 2, 3])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (33,)])
def test_matches_per_token_loop(activation, top_k, shape):
    layer = layer_for(activation=activation, top_k=top_k, n_experts=8)
    starve_experts(layer, [1, 6])
    x = torch.randn(*shape, 32, dtype=torch.float64)
    x[..., 0] = x[..., 0].abs() + 0.1  # so the starved experts' -100 weight keeps them unchosen
    y, routing = layer(x)
    assert y.shape == x.shape
    assert routing.tokens_per_expert[[1, 6]].sum() == 0
    torch.testing.assert_close(y, moe_layer_reference(layer, x), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_gradients_match_per_token_loop(activation):
    layer = layer_for(activation=activation, n_experts=4)
    x = torch.randn(2, 5, 32, dtype=torch.float64, requires_grad=True)
    y, _ = layer(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
    y_ref = moe_layer_reference(layer, x)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), [x, *layer.parameters()], allow_unused=True)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref if g_ref is not None else torch.zeros_like(g), atol=1e-10, rtol=1e-8)


def test_capacity_drops_match_loop_and_dropped_tokens_add_zero():
    layer = layer_for(n_experts=4, capacity_factor=0.5)
    x = torch.randn(24, 32, dtype=torch.float64)
    y, r = layer(x)
    assert r.n_dropped.item() > 0
    torch.testing.assert_close(y, moe_layer_reference(layer, x, r), atol=1e-12, rtol=1e-10)
    fully_dropped = ~r.keep.any(dim=1)
    if fully_dropped.any():
        assert (y[fully_dropped] == 0).all()


def test_one_expert_top1_is_a_dense_mlp():
    for activation in ("gelu", "swiglu"):
        layer = layer_for(n_experts=1, top_k=1, activation=activation)
        x = torch.randn(4, 6, 32, dtype=torch.float64)
        y, r = layer(x)
        up = x @ layer.w_up[0]
        h = F.silu(x @ layer.w_gate[0]) * up if activation == "swiglu" else F.gelu(up)
        torch.testing.assert_close(y, h @ layer.w_down[0], atol=1e-12, rtol=1e-10)
        assert r.tokens_per_expert.tolist() == [24]


def test_experts_see_clean_input_under_jitter():
    layer = layer_for(n_experts=4, router_jitter=0.3).train()
    x = torch.randn(10, 32, dtype=torch.float64)
    torch.manual_seed(1)
    y, r = layer(x)
    # Reusing the jittered routing, the loop on the clean x must give the same output.
    torch.testing.assert_close(y, moe_layer_reference(layer, x, r), atol=1e-12, rtol=1e-10)


def test_mixtral_weight_layout_round_trip():
    """Hugging Face Mixtral: w1 = gate, w3 = up, w2 = down, each nn.Linear [out, in]."""
    layer = layer_for(activation="swiglu", n_experts=2, top_k=1)
    e = 1
    w1, w3, w2 = layer.w_gate[e].T, layer.w_up[e].T, layer.w_down[e].T
    x = torch.randn(3, 32, dtype=torch.float64)
    hf = F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)
    ours = (F.silu(x @ layer.w_gate[e]) * (x @ layer.w_up[e])) @ layer.w_down[e]
    torch.testing.assert_close(hf, ours)


@pytest.mark.parametrize("rule", ROUTING)
def test_every_rule_compiles_to_the_eager_layer(rule):
    """torch.compile of the layer against eager, a training step: outputs, the router's gradient
    (expert choice's once came out wrong compiled, from a transposed keep mask) and the bias update."""
    from moe.model.router import update_balance_biases

    torch.manual_seed(0)
    eager = MoELayer(shrunk("tiny", n_experts=8, activation="swiglu", **ROUTING[rule]))
    same = MoELayer(eager.cfg)
    same.load_state_dict(eager.state_dict())
    compiled = torch.compile(same)
    x = torch.randn(24, 32)
    ys = []
    for layer in (eager, compiled):
        y, r = layer(x)
        (y.pow(2).sum() + r.aux_loss).backward()
        update_balance_biases(layer)
        ys.append(y)
    torch.testing.assert_close(ys[1], ys[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(same.router.gate.weight.grad, eager.router.gate.weight.grad, atol=1e-6, rtol=1e-5)
    if eager.router.score_bias is not None:
        assert eager.router.score_bias.abs().sum() > 0
        torch.testing.assert_close(same.router.score_bias, eager.router.score_bias)


@pytest.mark.parametrize("rule", ["deepseek-v3", "expert-choice"])
def test_rules_on_the_triton_backend_match_the_per_token_loop(rule):
    """The Triton expert kernels (interpreted on a CPU) under a rule's weights: sigmoid weights that
    do not sum to one beside a shared expert, and expert choice's E assignments per token, most
    dropped; forward and the gradients of the input and the router."""
    torch.manual_seed(0)
    layer = MoELayer(shrunk("tiny", n_experts=8, expert_backend="triton", **ROUTING[rule]))
    x = torch.randn(12, 32, requires_grad=True)
    y, r = layer(x)
    x_ref = x.detach().clone().requires_grad_()
    ref = moe_layer_reference(layer, x_ref)  # its own routing of x_ref: the router path in its gradient too
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)
    c = torch.randn_like(y)
    grads = torch.autograd.grad((y * c).sum(), (x, layer.router.gate.weight))
    grads_ref = torch.autograd.grad((ref * c).sum(), (x_ref, layer.router.gate.weight))
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)
