"""The conformance kit (moe.testing): every built-in rule passes it, each classic routing bug planted
into a correct router is rejected by the check named for it, and it runs on transformers' routers."""

import pytest
import torch
import torch.nn.functional as F

from moe.model.router import TopKRouter, capacity_keep_mask, route
from moe.testing import (
    RouterConformanceError,
    RouterSpec,
    check_balance_loss,
    check_capacity_order,
    check_router,
    check_z_loss,
    our_router,
)

BIAS = tuple((torch.randn(16, generator=torch.Generator().manual_seed(3)) * 0.2).tolist())
BUILT_IN = {
    "mixtral": RouterSpec(8, 2),
    "olmoe": RouterSpec(16, 4, renormalize=False),
    "switch": RouterSpec(8, 1, renormalize=False),
    "gpt-oss": RouterSpec(8, 4, rule="topk_softmax"),
    "deepseek-v3": RouterSpec(16, 4, rule="sigmoid_topk", score_bias=BIAS, groups=4, topk_groups=2, scale=2.5),
    "llama4": RouterSpec(8, 1, rule="sigmoid_topk", renormalize=False),
    "expert-choice": RouterSpec(8, 2, rule="expert_choice", capacity=3),
    "fine-grained": RouterSpec(64, 8),
}


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_rule_conforms(name):
    spec = BUILT_IN[name]
    assert check_router(our_router(spec), spec) == [
        "shapes",
        "reference",
        "sums",
        "ties",
        "permutation",
        "batch",
        "gradient",
        "precision",
    ]


def test_the_router_module_conforms_at_its_logits():
    """TopKRouter, fed logits through an identity gate, is the rule its config names."""
    r = TopKRouter(16, 16, 4, rule="sigmoid_topk", score_bias=True, groups=4, topk_groups=2, scale=2.5)
    with torch.no_grad():
        r.gate.weight.copy_(torch.eye(16))
        r.score_bias.copy_(torch.tensor(BIAS))

    def router(logits):
        out = r(logits)
        return out.weights, out.experts

    check_router(router, BUILT_IN["deepseek-v3"])


def _fails(router, spec, *expected):
    with pytest.raises(RouterConformanceError) as err:
        check_router(router, spec)
    assert set(expected) <= set(err.value.failures), err.value.failures
    return err.value.failures


def _topk(x, k):  # the classic: torch.topk, whose order among equal values is unspecified
    return torch.topk(x, k, dim=-1)


def test_mutant_top_k_on_logits_then_softmax_is_rejected():
    spec = BUILT_IN["olmoe"]  # softmax over all experts, not renormalised: the weights do not sum to 1

    def mutant(logits):
        experts = route(logits, 4)[1]
        return logits.float().gather(-1, experts).softmax(-1), experts

    _fails(mutant, spec, "reference")


def test_mutant_missing_renormalisation_is_rejected():
    spec = BUILT_IN["mixtral"]
    _fails(lambda logits: route(logits, 2, renormalize=False), spec, "reference", "sums")


def test_mutant_balancing_bias_in_the_weights_is_rejected():
    spec = BUILT_IN["deepseek-v3"]
    bias = torch.tensor(BIAS)

    def mutant(logits):
        w, e = our_router(spec)(logits)
        s = logits.float().sigmoid() + bias  # the bias leaks into the weights
        w = s.gather(-1, e)
        return 2.5 * w / w.sum(-1, keepdim=True), e

    _fails(mutant, spec, "reference")


def test_mutant_low_precision_softmax_is_rejected():
    spec = BUILT_IN["mixtral"]

    def mutant(logits):
        e = route(logits, 2)[1]
        w = logits.softmax(-1).gather(-1, e)  # in the logits' dtype: bfloat16 under autocast
        return (w / w.sum(-1, keepdim=True)).float(), e

    assert set(_fails(mutant, spec, "precision")) == {"precision"}


def test_mutant_tie_order_left_to_torch_topk_is_rejected():
    spec = BUILT_IN["fine-grained"]

    def mutant(logits):
        p = logits.float().softmax(-1)
        w, e = _topk(p, 8)
        return w / w.sum(-1, keepdim=True), e

    assert set(_fails(mutant, spec, "ties")) == {"ties"}


def test_mutant_batch_dependent_router_is_rejected():
    spec = BUILT_IN["mixtral"]

    def mutant(logits):  # logits centred over the batch: a token's route depends on its neighbours
        return route(logits - logits.mean(0), 2)

    _fails(mutant, spec, "batch")


def test_mutant_detached_weights_are_rejected():
    spec = BUILT_IN["switch"]

    def mutant(logits):
        w, e = route(logits, 1, renormalize=False)
        return w.detach(), e

    _fails(mutant, spec, "gradient")


def test_capacity_order_ours_passes_and_priority_by_weight_is_rejected():
    check_capacity_order(capacity_keep_mask)

    def reversed_order(experts, E, capacity):  # the last tokens first
        return capacity_keep_mask(experts.flip(0), E, capacity).flip(0)

    with pytest.raises(RouterConformanceError, match="capacity"):
        check_capacity_order(reversed_order)


def _router_losses(logits, experts):
    """Our RouterOutput's losses for given logits and choices (an identity gate)."""
    from moe.model.router import RouterOutput

    counts = torch.bincount(experts.reshape(-1), minlength=logits.shape[1])
    return RouterOutput(
        weights=None,
        experts=experts,
        logits=logits.float(),
        keep=None,
        tokens_per_expert=counts,
        n_dropped=None,
        f_E=counts.float() / counts.sum(),
    )


def test_balance_and_z_loss_ours_and_transformers_pass_mutants_do_not():
    import transformers

    st = transformers.models.switch_transformers.modeling_switch_transformers
    check_balance_loss(lambda logits, experts: _router_losses(logits, experts).balance_loss)
    check_z_loss(lambda logits: _router_losses(logits, torch.zeros(len(logits), 1, dtype=torch.long)).z_loss)

    def switch_balance(logits, experts):  # transformers' Switch loss, fed the top-k as k Switch choices
        probs = logits.softmax(-1)
        return (
            sum(st.load_balancing_loss_func(probs[None], experts[None, :, j]) for j in range(experts.shape[1]))
            / (experts.shape[1])
        )

    check_balance_loss(switch_balance)
    check_z_loss(lambda logits: st.router_z_loss_func(logits[None]))

    with pytest.raises(RouterConformanceError, match="balance_loss"):  # the factor E forgotten
        check_balance_loss(lambda logits, experts: _router_losses(logits, experts).balance_loss / logits.shape[1])
    with pytest.raises(RouterConformanceError, match="z_loss"):  # log(sum(exp)) overflows at logits of 100
        check_z_loss(lambda logits: torch.log(torch.exp(logits).sum(-1)).pow(2).mean())


def test_transformers_routers_break_ties_by_torch_topk():
    """Run on theirs: Qwen3-MoE's router (an identity gate, so the logits are the input) is the
    softmax_topk rule in everything but ties, which torch.topk orders its own way."""
    import transformers

    cfg = transformers.Qwen3MoeConfig(hidden_size=64, num_experts=64, num_experts_per_tok=8, norm_topk_prob=True)
    router = transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeTopKRouter(cfg)
    with torch.no_grad():
        router.weight.copy_(torch.eye(64))

    def theirs(logits):
        _, w, e = router(logits.float())
        return w, e

    failures = _fails(theirs, RouterSpec(64, 8), "ties")
    assert set(failures) == {"ties"}, failures
    assert F.one_hot(theirs(torch.zeros(1, 64))[1], 64).sum() == 8  # eight distinct experts all the same
