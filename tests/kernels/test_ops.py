"""The Triton paths as custom operators (kernels/ops.py): torch.library.opcheck holds each to its
schema, its fake (meta) implementation, its autograd registration and AOT dispatch with dynamic
shapes; torch.compile's front end traces the MoE experts without a graph break. On the CPU the
kernels run through Triton's interpreter (conftest), so the shapes stay small."""

import pytest
import torch
from conftest import DEVICE, offsets_from

import kernels
from kernels import ops


def _mlp_inputs(act: str, gen: torch.Generator, requires_grad: bool = True):
    T, k, E, D, F = 6, 2, 3, 16, 32
    weights, experts = torch.randn(T, E, generator=gen).softmax(-1).topk(k)
    order, offsets = kernels.sort_by_expert(experts.reshape(-1), E)
    ws = [torch.randn(*s, generator=gen) / s[1] ** 0.5 for s in [(E, D, F), (E, D, F), (E, F, D)]]
    x = torch.randn(T, D, generator=gen)
    leaves = [t.to(DEVICE).requires_grad_(requires_grad) for t in (x, weights, ws[0], ws[1], ws[2])]
    x, weights, w_up, w_gate, w_down = leaves
    return x, weights, order.to(DEVICE), offsets.to(DEVICE), w_up, w_gate if act == "swiglu" else None, w_down


def test_grouped_mm_ops_pass_opcheck():
    gen = torch.Generator().manual_seed(0)
    offsets = offsets_from([3, 0, 5], DEVICE)
    x = torch.randn(8, 16, generator=gen).to(DEVICE).requires_grad_()
    w = torch.randn(3, 16, 24, generator=gen).to(DEVICE).requires_grad_()
    torch.library.opcheck(torch.ops.moe.grouped_mm.default, (x, w, offsets))
    dy = torch.randn(8, 24, generator=gen).to(DEVICE)
    torch.library.opcheck(torch.ops.moe.grouped_mm_backward.default, (dy, x.detach(), w.detach(), offsets))


@pytest.mark.parametrize("act", ["gelu", "swiglu"])
def test_expert_mlp_ops_pass_opcheck(act):
    gen = torch.Generator().manual_seed(1)
    args = _mlp_inputs(act, gen)
    torch.library.opcheck(torch.ops.moe.expert_mlp.default, (*args, True))
    torch.library.opcheck(
        torch.ops.moe.expert_mlp.default,
        (*(a.detach() if torch.is_tensor(a) else a for a in args), False),
        test_utils=("test_schema", "test_faketensor"),
    )
    y, h, pre_up, pre_gate = ops.expert_mlp(*(a.detach() if torch.is_tensor(a) else a for a in args), True)
    dy = torch.randn(y.shape, generator=gen).to(DEVICE)
    plain = [a.detach() if torch.is_tensor(a) else a for a in args]
    torch.library.opcheck(torch.ops.moe.expert_mlp_backward.default, (dy, *plain, h, pre_up, pre_gate))


def test_expert_mlp_without_saved_activations_refuses_backward():
    """save=False (inference: no pre-activations kept) cannot be differentiated; the error says why."""
    gen = torch.Generator().manual_seed(2)
    args = _mlp_inputs("swiglu", gen)
    y = ops.expert_mlp(*args, False)[0]
    with pytest.raises(RuntimeError, match="save=False"):
        y.sum().backward()


@pytest.mark.parametrize("act", ["gelu", "swiglu"])
def test_dynamo_traces_the_triton_experts_without_a_graph_break(act):
    """torch.compile's front end (dynamo) sees kernels.routed_mlp on the Triton backend as one graph:
    the router's sort and the custom op, no break; the compiled function (eager backend, which runs
    the traced graph) gives the same output and gradients."""
    gen = torch.Generator().manual_seed(3)
    x, weights, order, offsets, w_up, w_gate, w_down = _mlp_inputs(act, gen)
    experts = torch.randint(0, w_up.shape[0], weights.shape, generator=gen).to(DEVICE)

    def fn(x_, wt, u, g, d):
        return kernels.routed_mlp(x_, wt, experts, u, g, d, activation_name=act, backend="triton")

    explained = torch._dynamo.explain(fn)(x, weights, w_up, w_gate, w_down)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="eager", fullgraph=True)
    inputs = [t for t in (x, weights, w_up, w_gate, w_down)]
    got, want = compiled(*inputs), fn(*inputs)
    assert torch.equal(got, want)
    leaves = [t for t in inputs if t is not None]
    g_got = torch.autograd.grad(got.sum(), leaves)
    g_want = torch.autograd.grad(want.sum(), leaves)
    for a, b in zip(g_got, g_want):
        assert torch.equal(a, b)


def test_value_checks_step_aside_while_tracing():
    """The checks that read tensor values (grouped_mm's offsets, the model's token ids) would each
    break a torch.compile graph, so they run eagerly only: traced, the public grouped_mm and the
    token check make no graph break; eagerly they still refuse bad values (tests/kernels/test_kernels.py,
    tests/model/test_model.py)."""
    from conftest import shrunk

    from moe.model import MoETransformer

    gen = torch.Generator().manual_seed(4)
    offsets = offsets_from([3, 0, 5], DEVICE)
    x, w = torch.randn(8, 16, generator=gen).to(DEVICE), torch.randn(3, 16, 24, generator=gen).to(DEVICE)
    explained = torch._dynamo.explain(lambda a, b: kernels.grouped_mm(a, b, offsets, backend="triton"))(x, w)
    assert explained.graph_break_count == 0, explained.break_reasons
    model = MoETransformer(shrunk())
    ids = torch.randint(0, model.cfg.vocab_size, (2, 5))

    def check(t):
        model._check_tokens(t, "ids")
        return t + 1

    explained = torch._dynamo.explain(check)(ids)
    assert explained.graph_break_count == 0, explained.break_reasons
    with pytest.raises(ValueError, match="out of range"):
        check(ids + model.cfg.vocab_size)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the small preset on the Triton experts)")
def test_small_preset_traces_without_a_graph_break_on_a_gpu():
    """torch._dynamo.explain over the small preset's training forward (loss included) under bf16
    autocast, the experts on the Triton custom operators: one graph, no break (the CPU's version is
    the test below)."""
    from moe.config import load_config
    from moe.model import MoETransformer
    from moe.model.init import materialize

    cfg = load_config("small")
    with torch.device("meta"):
        model = MoETransformer(cfg)
    materialize(model, cfg, "cuda", 0)
    ids = torch.randint(0, cfg.vocab_size, (2, 64), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        explained = torch._dynamo.explain(lambda x: model(x, targets=x).loss)(ids)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_pytorch_grouped_matmul_op_passes_opcheck_and_traces_as_one_graph():
    """The PyTorch path's grouped matmul as a custom op (moe::grouped_mm_torch, what torch.compile
    sees): opcheck holds it to its schema, fake implementation and autograd; traced with
    fullgraph=True, with empty experts, its values and gradients equal the per-expert reference; and
    the tiny model's whole training forward is one graph."""
    from conftest import shrunk

    from kernels.grouped_matmul import apply_grouped_mm, grouped_mm_reference, grouped_mm_torch
    from moe.model import MoETransformer

    gen = torch.Generator().manual_seed(5)
    offsets = offsets_from([3, 0, 5, 0], "cpu")
    x = torch.randn(8, 16, generator=gen, requires_grad=True)
    w = torch.randn(4, 16, 24, generator=gen, requires_grad=True)
    torch.library.opcheck(grouped_mm_torch, (x, w, offsets))
    traced = torch.compile(lambda a, b: apply_grouped_mm(a, b, offsets, "torch"), backend="aot_eager", fullgraph=True)
    got, want = traced(x, w), grouped_mm_reference(x, w, offsets)
    assert torch.allclose(got, want, atol=1e-6)
    for a, b in zip(torch.autograd.grad(got.square().sum(), (x, w)), torch.autograd.grad(want.square().sum(), (x, w))):
        assert torch.allclose(a, b, atol=1e-5)
    model = MoETransformer(shrunk())
    ids = torch.randint(0, model.cfg.vocab_size, (2, 16))
    explained = torch._dynamo.explain(lambda t: model(t, targets=t).loss)(ids)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_model_exports_with_the_experts_as_custom_operators(backend):
    """torch.export.export over the whole model's forward (logits): the experts appear in the exported
    graph as our custom operators (moe::grouped_mm_torch on the PyTorch path, moe::expert_mlp on the
    Triton one, interpreted on the CPU), and the exported program gives the eager model's logits on
    tokens it was not traced with."""
    from conftest import shrunk

    from moe.model import MoETransformer

    model = MoETransformer(shrunk(expert_backend=backend, n_layers=1)).to(DEVICE).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, ids):
            return self.model(ids).logits

    exported = torch.export.export(Logits(), (torch.randint(0, 256, (1, 8), device=DEVICE),))
    ops_called = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    op = "moe.grouped_mm_torch" if backend == "torch" else "moe.expert_mlp"
    assert any(name.startswith(op) for name in ops_called), ops_called
    ids = torch.randint(0, 256, (1, 8), device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(ids), model(ids).logits, rtol=1e-5, atol=1e-5)
