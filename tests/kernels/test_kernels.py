"""kernels.grouped_mm and the permutation ops against the slow references, forward and gradients."""

import pytest
import torch
from conftest import COUNTS, offsets_from

import kernels
from kernels import grouped_matmul as gm

TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.bfloat16: dict(atol=5e-2, rtol=5e-2),
    torch.float16: dict(atol=5e-3, rtol=5e-3),
}


def reference_grads(x, w, offsets, dy):
    x_, w_ = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    y = kernels.grouped_mm_reference(x_, w_, offsets)
    y.backward(dy.double())
    return y, x_.grad, w_.grad


@pytest.mark.parametrize("name", list(COUNTS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("K, N", [(16, 8), (7, 5)])  # aligned (native path on CPU) and odd (padded path)
def test_grouped_mm_matches_reference(name, dtype, K, N):
    counts = COUNTS[name]
    M, E = sum(counts), len(counts)
    offsets = offsets_from(counts)
    x = torch.randn(M, K, dtype=dtype, requires_grad=True)
    w = torch.randn(E, K, N, dtype=dtype, requires_grad=True)
    dy = torch.randn(M, N, dtype=dtype)
    y = kernels.grouped_mm(x, w, offsets)
    y.backward(dy)
    y_ref, dx_ref, dw_ref = reference_grads(x, w, offsets, dy)
    assert y.shape == (M, N) and y.dtype == dtype
    torch.testing.assert_close(y.double(), y_ref, **TOL[dtype])
    torch.testing.assert_close(x.grad.double(), dx_ref, **TOL[dtype])
    torch.testing.assert_close(w.grad.double(), dw_ref, **TOL[dtype])
    for g, c in enumerate(counts):  # an expert with no rows gets exactly zero gradient
        if c == 0:
            assert (w.grad[g] == 0).all()


@pytest.mark.parametrize("path", ["native", "padded"])
def test_both_torch_paths_match(monkeypatch, path):
    """Force each internal path on the same aligned float32 inputs."""
    if path == "padded":
        monkeypatch.setattr(gm, "_native_ok", lambda a, b: False)
    else:
        assert gm._native_ok(torch.zeros(2, 16), torch.zeros(2, 16, 8))
    counts = [4, 0, 9, 1]
    x = torch.randn(14, 16, requires_grad=True)
    w = torch.randn(4, 16, 8, requires_grad=True)
    dy = torch.randn(14, 8)
    kernels.grouped_mm(x, w, offsets_from(counts)).backward(dy)
    y_ref, dx_ref, dw_ref = reference_grads(x, w, offsets_from(counts), dy)
    torch.testing.assert_close(x.grad.double(), dx_ref, **TOL[torch.float32])
    torch.testing.assert_close(w.grad.double(), dw_ref, **TOL[torch.float32])


@pytest.mark.parametrize(
    "counts, padded",
    [
        ([4] * 16, True),  # a decode step: a few rows for every expert
        ([12] + [4] * 13 + [0] * 2, True),  # uneven, padding under 4x
        ([64] + [0] * 15, False),  # padding 16x: grouped_mm
        ([1] * 16, False),  # a row an expert
        ([64] * 16, False),  # many rows
    ],
)
def test_few_rows_on_the_cpu_take_the_padded_matmul(counts, padded):
    """The serving shortcut: which path the rows take, and the same products as the reference
    either way (the forward without autograd, as serving calls it)."""
    x, w = torch.randn(sum(counts), 16), torch.randn(len(counts), 16, 8)
    offsets = offsets_from(counts)
    assert gm._few_rows_on_cpu(x, offsets) == padded
    with torch.no_grad():
        y = kernels.grouped_mm(x, w, offsets)
    y_ref = kernels.grouped_mm_reference(x.double(), w.double(), offsets)
    torch.testing.assert_close(y.double(), y_ref, **TOL[torch.float32])


def test_grouped_mm_gradcheck():
    counts = [2, 0, 3]
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: kernels.grouped_mm(a, b, offsets_from(counts)), (x, w))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.randn(4, 3), torch.randn(2, 4, 5), offsets_from([2, 2])), "K"),
        (lambda: (torch.randn(4, 3), torch.randn(2, 3, 5), offsets_from([2, 1])), "end at 3 but x has 4"),
        (lambda: (torch.randn(4, 3), torch.randn(2, 3, 5), torch.tensor([2, 4])), "int32"),
        (lambda: (torch.randn(4, 3), torch.randn(2, 3, 5), offsets_from([4])), r"\[E=2\]"),
        (lambda: (torch.randn(4, 3), torch.randn(2, 3, 5).double(), offsets_from([2, 2])), "float64"),
        (lambda: (torch.randn(4, 3, 1), torch.randn(2, 3, 5), offsets_from([2, 2])), r"x \[M, K\]"),
    ],
)
def test_grouped_mm_bad_input(make, match):
    x, w, offsets = make()
    with pytest.raises(ValueError, match=match):
        kernels.grouped_mm(x, w, offsets)
    with pytest.raises(ValueError, match=match):
        kernels.grouped_mm_reference(x, w, offsets)


def test_unknown_and_unusable_backends(monkeypatch):
    args = (torch.randn(2, 4), torch.randn(1, 4, 4), offsets_from([2]))
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.grouped_mm(*args, backend="cutlass")
    with pytest.raises(ValueError, match="float64"):
        kernels.grouped_mm(*(t.double() if t.is_floating_point() else t for t in args), backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        kernels.grouped_mm(*args, backend="triton")
    assert gm.resolve_backend("auto", args[0]) == "torch"  # auto never picks Triton for CPU tensors
    from moe.config import EXPERT_BACKENDS

    assert EXPERT_BACKENDS == kernels.BACKENDS  # the config's list, kept apart so the config imports no torch


def test_sort_by_expert_groups_stably_and_drops():
    experts = torch.tensor([2, 0, 2, 1, -1, 0, 2, -1])
    order, offsets = kernels.sort_by_expert(experts, 4, has_dropped=True)
    assert order.tolist() == [1, 5, 3, 0, 2, 6]  # by expert, then by assignment id
    assert offsets.tolist() == [2, 3, 6, 6] and offsets.dtype == torch.int32
    order, offsets = kernels.sort_by_expert(experts.clamp(min=0), 3)
    assert offsets.tolist() == [4, 5, 8] and sorted(order.tolist()) == list(range(8))


def test_combine_weights_and_sums_in_token_order():
    T, k, D = 3, 2, 4
    weights = torch.tensor([[0.7, 0.3], [1.0, 0.0], [0.5, 0.5]])
    order = torch.tensor([5, 0, 3, 2, 1])  # assignment 4 (token 2, slot 0) dropped
    y = torch.arange(5 * D, dtype=torch.float32).view(5, D)
    out = kernels.combine(y, order, weights)
    row_of = {int(a): i for i, a in enumerate(order)}
    expected = torch.zeros(T, D)
    for t in range(T):
        for j in range(k):
            if t * k + j in row_of:
                expected[t] += weights[t, j] * y[row_of[t * k + j]]
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("compiled", [False, True])
def test_gather_rows_and_its_gradient_match_a_loop(compiled):
    """Rows of the sorted assignments and the gradient summed back per token, eager (index_select)
    and under torch.compile (the permutation-write backward), with and without dropped assignments."""
    torch.manual_seed(0)
    T, k, D = 5, 2, 3
    gather = (
        torch.compile(kernels.gather_rows, backend="aot_eager", fullgraph=True) if compiled else kernels.gather_rows
    )
    for order in (torch.randperm(T * k), torch.tensor([7, 0, 3, 9, 4, 1])):  # all ten; six kept
        x = torch.randn(T, D, dtype=torch.float64, requires_grad=True)
        dy = torch.randn(order.numel(), D, dtype=torch.float64)
        y = gather(x, order, k)
        y.backward(dy)
        expected_y = torch.stack([x.detach()[int(a) // k] for a in order])
        expected_dx = torch.zeros(T, D, dtype=torch.float64)
        for r, a in enumerate(order.tolist()):
            expected_dx[a // k] += dy[r]
        torch.testing.assert_close(y.detach(), expected_y, rtol=0, atol=0)
        torch.testing.assert_close(x.grad, expected_dx)


def test_kernels_import_only_torch():
    import ast
    import pathlib
    import sys

    for f in pathlib.Path(kernels.__file__).parent.rglob("*.py"):  # the subpackages (triton/, tuning/) too
        for node in ast.walk(ast.parse(f.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            for n in names:
                assert n.split(".")[0] in {"torch", "triton", "kernels"} | set(sys.stdlib_module_names), (f, n)
