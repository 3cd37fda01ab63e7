"""Each routing rule against the MoE block of the family that uses it, as transformers implements
it: transformers' own module with random weights, its weights copied into our MoELayer, then the
same chosen experts, the same weights, the same output and the same gradients, to float32 rounding.
gpt-oss is held at its router (GptOssTopKRouter): its experts' clamped SwiGLU with biases is not
one of our activations."""

import pytest
import torch
from conftest import shrunk

from moe.model.moe_layer import MoELayer

D, F_, E = 32, 24, 8
TOL = dict(atol=2e-6, rtol=2e-5)


def _ours(**overrides):
    return MoELayer(shrunk("tiny", d_model=D, n_heads=2, d_ff=F_, n_experts=E, activation="swiglu", **overrides))


def _randomize(module, std=0.3):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(std=std)


def _copy_fused_experts(layer, experts, layout="out_in"):
    """transformers' stacked experts: gate_up_proj [E, 2F, D] with gate first, down [E, D, F]
    ("out_in", Mixtral / Qwen / OLMoE / DeepSeek), or [E, D, 2F] and [E, F, D] ("in_out", Llama 4)."""
    gu, down = experts.gate_up_proj.detach(), experts.down_proj.detach()
    if layout == "out_in":
        gu, down = gu.transpose(1, 2), down.transpose(1, 2)
    layer.w_gate.data.copy_(gu[..., :F_])
    layer.w_up.data.copy_(gu[..., F_:])
    layer.w_down.data.copy_(down)


def _copy_mlp(shared, mlp):
    for ours, theirs in ((shared.gate, mlp.gate_proj), (shared.up, mlp.up_proj), (shared.down, mlp.down_proj)):
        ours.weight.data.copy_(theirs.weight)


def _compare(layer, block, x, their_router, grads):
    """Forward and backward through both; their_router(x_TD) -> (weights [T, k], experts [T, k])."""
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, r = layer(x_ours)
    y_theirs = block(x_theirs)
    y_theirs = y_theirs[0] if isinstance(y_theirs, tuple) else y_theirs
    with torch.no_grad():
        w_theirs, e_theirs = their_router(x.reshape(-1, D))
    order, order_theirs = r.experts.argsort(-1), e_theirs.argsort(-1)  # some peers leave the k unsorted
    assert torch.equal(r.experts.gather(-1, order), e_theirs.gather(-1, order_theirs))
    torch.testing.assert_close(r.weights.gather(-1, order), w_theirs.float().gather(-1, order_theirs), **TOL)
    torch.testing.assert_close(y, y_theirs.reshape(y.shape), **TOL)
    c = torch.randn_like(y)
    (y * c).sum().backward()
    (y_theirs.reshape(y.shape) * c).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, **TOL)
    for ours, theirs in grads:
        torch.testing.assert_close(ours(), theirs(), **TOL)


@pytest.mark.parametrize(
    "family, norm_topk_prob",  # Mixtral always renormalises
    [("mixtral", True), ("qwen3_moe", True), ("qwen3_moe", False), ("olmoe", True), ("olmoe", False)],
)
def test_softmax_topk_against_mixtral_qwen3_olmoe(family, norm_topk_prob):
    import transformers as tf

    if family == "mixtral":
        cfg = tf.MixtralConfig(hidden_size=D, intermediate_size=F_, num_local_experts=E, num_experts_per_tok=2)
        block = tf.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock(cfg)
    elif family == "qwen3_moe":
        cfg = tf.Qwen3MoeConfig(
            hidden_size=D, moe_intermediate_size=F_, num_experts=E, num_experts_per_tok=2, norm_topk_prob=norm_topk_prob
        )
        block = tf.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeSparseMoeBlock(cfg)
    else:
        cfg = tf.OlmoeConfig(
            hidden_size=D, intermediate_size=F_, num_experts=E, num_experts_per_tok=2, norm_topk_prob=norm_topk_prob
        )
        block = tf.models.olmoe.modeling_olmoe.OlmoeSparseMoeBlock(cfg)
    _randomize(block)
    layer = _ours(top_k=2, router_renormalize=norm_topk_prob)
    layer.router.gate.weight.data.copy_(block.gate.weight)
    _copy_fused_experts(layer, block.experts)

    def theirs(x):
        _, w, e = block.gate(x)
        return w, e

    grads = [
        (lambda: layer.router.gate.weight.grad, lambda: block.gate.weight.grad),
        (lambda: layer.w_down.grad, lambda: block.experts.down_proj.grad.transpose(1, 2)),
    ]
    _compare(layer, block, torch.randn(2, 9, D), theirs, grads)


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_shared_gated_expert_against_qwen2_moe(norm_topk_prob):
    import transformers as tf

    cfg = tf.Qwen2MoeConfig(
        hidden_size=D,
        moe_intermediate_size=F_,
        shared_expert_intermediate_size=40,
        num_experts=E,
        num_experts_per_tok=2,
        norm_topk_prob=norm_topk_prob,
    )
    block = tf.models.qwen2_moe.modeling_qwen2_moe.Qwen2MoeSparseMoeBlock(cfg)
    _randomize(block)
    layer = _ours(top_k=2, router_renormalize=norm_topk_prob, shared_d_ff=40, shared_gate=True)
    layer.router.gate.weight.data.copy_(block.gate.weight)
    _copy_fused_experts(layer, block.experts)
    _copy_mlp(layer.shared, block.shared_expert)
    layer.shared_gate.weight.data.copy_(block.shared_expert_gate.weight)

    def theirs(x):
        _, w, e = block.gate(x)
        return w, e

    grads = [
        (lambda: layer.shared_gate.weight.grad, lambda: block.shared_expert_gate.weight.grad),
        (lambda: layer.shared.up.weight.grad, lambda: block.shared_expert.up_proj.weight.grad),
        (lambda: layer.router.gate.weight.grad, lambda: block.gate.weight.grad),
    ]
    _compare(layer, block, torch.randn(2, 9, D), theirs, grads)


def test_topk_softmax_with_bias_against_gpt_oss_router():
    import transformers as tf

    cfg = tf.GptOssConfig(hidden_size=D, intermediate_size=F_, num_local_experts=E, num_experts_per_tok=4)
    router = tf.models.gpt_oss.modeling_gpt_oss.GptOssTopKRouter(cfg)
    _randomize(router)
    layer = _ours(top_k=4, router_rule="topk_softmax", router_bias=True)
    layer.router.gate.weight.data.copy_(router.weight)
    layer.router.gate.bias.data.copy_(router.bias)
    x = torch.randn(40, D)
    x_theirs = x.clone().requires_grad_()
    r = layer.router(x.clone().requires_grad_())
    _, w_theirs, e_theirs = router(x_theirs)
    assert torch.equal(r.experts, e_theirs)  # both sorted by logit, largest first
    torch.testing.assert_close(r.weights, w_theirs, **TOL)
    torch.testing.assert_close(r.weights.sum(-1), torch.ones(40))
    c = torch.randn(40, 4)
    (r.weights * c).sum().backward()
    (w_theirs * c).sum().backward()
    torch.testing.assert_close(layer.router.gate.weight.grad, router.weight.grad, **TOL)
    torch.testing.assert_close(layer.router.gate.bias.grad, router.bias.grad, **TOL)


@pytest.mark.parametrize("n_group, topk_group, norm", [(1, 1, True), (4, 2, True), (4, 1, False)])
def test_sigmoid_groups_and_balancing_bias_against_deepseek_v3(n_group, topk_group, norm):
    import transformers as tf

    cfg = tf.DeepseekV3Config(
        hidden_size=D,
        moe_intermediate_size=F_,
        n_routed_experts=E,
        num_experts_per_tok=2,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=norm,
        routed_scaling_factor=2.5,
        n_shared_experts=2,
    )
    block = tf.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3MoE(cfg)
    _randomize(block)
    with torch.no_grad():  # a bias large enough to change the choice, which must not reach the weights
        block.gate.e_score_correction_bias.copy_(torch.randn(E) * 0.5)
    layer = _ours(
        top_k=2,
        router_rule="sigmoid_topk",
        router_renormalize=norm,
        router_score_bias=True,
        router_groups=n_group,
        router_topk_groups=topk_group,
        router_scale=2.5,
        shared_d_ff=2 * F_,
    )
    layer.router.gate.weight.data.copy_(block.gate.weight)
    layer.router.score_bias.copy_(block.gate.e_score_correction_bias)
    _copy_fused_experts(layer, block.experts)
    _copy_mlp(layer.shared, block.shared_experts)

    def theirs(x):
        _, w, e = block.gate(x)
        return w, e

    grads = [(lambda: layer.router.gate.weight.grad, lambda: block.gate.weight.grad)]
    _compare(layer, block, torch.randn(2, 9, D), theirs, grads)


def test_top1_capacity_against_switch_transformers():
    import transformers as tf

    T, capacity = 32, 3  # ours: ceil(0.75 * 32 * 1 / 8) = 3 per expert; theirs per sequence, one here
    cfg = tf.SwitchTransformersConfig(
        d_model=D, d_ff=F_, num_experts=E, expert_capacity=capacity, dense_act_fn="gelu", router_bias=False
    )
    block = tf.models.switch_transformers.modeling_switch_transformers.SwitchTransformersSparseMLP(cfg).eval()
    _randomize(block)
    layer = MoELayer(
        shrunk(
            "tiny",
            d_model=D,
            n_heads=2,
            d_ff=F_,
            n_experts=E,
            top_k=1,
            activation="gelu",
            router_renormalize=False,
            capacity_factor=0.75,
        )
    )
    layer.router.gate.weight.data.copy_(block.router.classifier.weight)
    for e in range(E):
        layer.w_up.data[e] = block.experts[f"expert_{e}"].wi.weight.T
        layer.w_down.data[e] = block.experts[f"expert_{e}"].wo.weight.T
    x = torch.randn(1, T, D)
    mask, probs, _ = block.router(x)
    y, r = layer(x.clone())
    kept = mask[0].any(-1)
    assert 0 < (~kept).sum() and torch.equal(r.keep[:, 0], kept)  # some overflow, the same tokens dropped
    assert torch.equal(r.experts[kept, 0], mask[0][kept].argmax(-1))
    torch.testing.assert_close(r.weights[:, 0], probs[0, :, 0] * kept, **TOL)

    def theirs(x_TD):
        m, p, _ = block.router(x_TD.view(1, T, D))
        return p[0], m[0].argmax(-1, keepdim=True)  # weights compared where kept, above

    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, _ = layer(x_ours)
    y_theirs = block(x_theirs)
    torch.testing.assert_close(y, y_theirs, **TOL)
    c = torch.randn_like(y)
    (y * c).sum().backward()
    (y_theirs * c).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, **TOL)
    torch.testing.assert_close(layer.router.gate.weight.grad, block.router.classifier.weight.grad, **TOL)


def test_switch_balance_and_z_loss_match_transformers_functions():
    import transformers as tf

    st = tf.models.switch_transformers.modeling_switch_transformers
    logits = torch.randn(1, 40, E) * 2
    layer = _ours(top_k=1, router_renormalize=False)
    with torch.no_grad():
        layer.router.gate.weight.copy_(torch.eye(E, D))
    x = torch.zeros(40, D)
    x[:, :E] = logits[0]
    r = layer.router(x)
    probs = logits.softmax(-1)
    torch.testing.assert_close(r.balance_loss, st.load_balancing_loss_func(probs, probs.argmax(-1)), **TOL)
    torch.testing.assert_close(r.z_loss, st.router_z_loss_func(logits), **TOL)


def test_top1_sigmoid_scaled_input_and_shared_expert_against_llama4():
    import transformers as tf

    cfg = tf.Llama4TextConfig(
        hidden_size=D, intermediate_size=F_, num_local_experts=E, num_experts_per_tok=1, hidden_act="silu"
    )
    block = tf.models.llama4.modeling_llama4.Llama4TextMoe(cfg)
    _randomize(block)
    layer = _ours(
        top_k=1, router_rule="sigmoid_topk", router_renormalize=False, router_scale_input=True, shared_d_ff=F_
    )
    layer.router.gate.weight.data.copy_(block.router.weight)
    _copy_fused_experts(layer, block.experts, layout="in_out")
    _copy_mlp(layer.shared, block.shared_expert)

    def theirs(x):
        scores, _ = block.router(x)
        e = scores.argmax(-1, keepdim=True)
        return scores.gather(-1, e), e

    grads = [
        (lambda: layer.router.gate.weight.grad, lambda: block.router.weight.grad),
        (lambda: layer.w_down.grad, lambda: block.experts.down_proj.grad),
    ]
    _compare(layer, block, torch.randn(2, 9, D), theirs, grads)
