"""The Triton kernels (the kernels/triton package behind grouped_mm and expert_mlp) against the
float64 references, forward and every gradient. Without a GPU they run through Triton's interpreter
(conftest sets TRITON_INTERPRET=1), so the shapes stay small; with one they run compiled, and the
tests marked gpu_only add the shapes the autotuned tile configs need."""

import dataclasses

import pytest
import torch
from conftest import COUNTS, DEVICE, gpu_only, offsets_from, shrunk

import kernels
from moe.config import load_config
from moe.model import MoETransformer
from moe.model.moe_layer import MoELayer

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Largest error allowed, as a fraction of the float64 reference's largest magnitude (at least 1).
TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def assert_near(actual, expected, dtype, what):
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    err = (actual.double() - expected).abs().max().item() if expected.numel() else 0.0
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert err <= TOL[dtype] * scale, f"{what}: max error {err:.2e} > {TOL[dtype]:.0e} x {scale:.2f}"


def grads_of(fn, inputs, dy_seed=1):
    """fn(*inputs) and the gradients of <fn(*inputs), dy> for a fixed random dy, inputs cloned as leaves."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    y = fn(*leaves)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(dy_seed), dtype=torch.float64)
    y.backward(dy.to(device=y.device, dtype=y.dtype))
    return [y] + [t.grad for t in leaves if t is not None and t.requires_grad]


@pytest.mark.parametrize("name", list(COUNTS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K, N", [(40, 24), (7, 70)])  # neither a multiple of the blocks; several K and N tiles
def test_grouped_mm_matches_reference(name, dtype, K, N):
    counts = COUNTS[name]
    M, E = sum(counts), len(counts)
    offsets = offsets_from(counts, DEVICE)
    x, w = torch.randn(M, K, device=DEVICE), torch.randn(E, K, N, device=DEVICE)
    got = grads_of(lambda a, b: kernels.grouped_mm(a, b, offsets, backend="triton"), [x.to(dtype), w.to(dtype)])
    want = grads_of(lambda a, b: kernels.grouped_mm_reference(a, b, offsets), [x.double(), w.double()])
    for what, g, r in zip(["y", "dx", "dw"], got, want):
        assert g.dtype == dtype
        assert_near(g, r, dtype, what)
    for g, c in enumerate(counts):
        if c == 0:
            assert (got[2][g] == 0).all()  # written as exact zeros, not left uninitialised


def test_grouped_mm_takes_strided_views():
    """A column slice of a wider x and a transposed w: the kernel reads through the strides."""
    counts = [3, 0, 6]
    offsets = offsets_from(counts, DEVICE)
    x = torch.randn(9, 2 * 20, device=DEVICE)[:, ::2]
    w = torch.randn(3, 30, 20, device=DEVICE).transpose(1, 2)
    assert not x.is_contiguous() and not w.is_contiguous()
    got = grads_of(lambda a, b: kernels.grouped_mm(a, b, offsets, backend="triton"), [x, w])
    want = grads_of(lambda a, b: kernels.grouped_mm_reference(a, b, offsets), [x.double(), w.double()])
    for what, g, r in zip(["y", "dx", "dw"], got, want):
        assert_near(g, r, torch.float32, what)


@pytest.mark.parametrize("offsets, match", [([2, 3], "end at 3 but x has 4"), ([3, 2, 4], "non-decreasing")])
def test_grouped_mm_bad_offsets(offsets, match):
    offsets = torch.tensor(offsets, dtype=torch.int32, device=DEVICE)
    x, w = torch.randn(4, 8, device=DEVICE), torch.randn(len(offsets), 8, 16, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        kernels.grouped_mm(x, w, offsets, backend="triton")


def routing(case: str, generator: torch.Generator):
    """(T, k, E, weights_TK, experts_A with -1 for dropped) for a named routing pattern."""
    T, k, E = {"random": (12, 2, 5), "drops": (12, 2, 5), "one expert": (9, 1, 4), "one token": (1, 2, 6)}[case]
    logits = torch.randn(T, E, generator=generator)
    weights, experts = logits.softmax(-1).topk(k)
    if case == "one expert":
        experts[:] = 2
    experts_A = experts.reshape(-1).clone()
    if case == "drops":
        experts_A[[3, 4, 11]] = -1  # token 1's second choice, token 2's first, token 5's second
    return T, k, E, weights, experts_A


@pytest.mark.parametrize("case", ["random", "drops", "one expert", "one token"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["gelu", "swiglu"])
def test_expert_mlp_matches_reference(case, dtype, act):
    gen = torch.Generator().manual_seed(0)
    T, k, E, weights, experts_A = routing(case, gen)
    D, F = 24, 40
    order, offsets = kernels.sort_by_expert(experts_A, E, has_dropped=case == "drops")
    x = torch.randn(T, D, generator=gen)
    w_up, w_gate, w_down = (torch.randn(*s, generator=gen) / s[1] ** 0.5 for s in [(E, D, F), (E, D, F), (E, F, D)])
    inputs = [x, weights, w_up, w_gate if act == "swiglu" else None, w_down]

    def run(fn, dtype, device, **kw):
        moved = [
            None if t is None else t.to(device=device, dtype=dtype if t is not weights else t.dtype) for t in inputs
        ]
        o, off = order.to(device), offsets.to(device)
        return grads_of(lambda x_, wt, u, g, d: fn(x_, wt, o, off, u, g, d, activation_name=act, **kw), moved)

    got = run(kernels.expert_mlp, dtype, DEVICE, backend="triton")
    want = run(kernels.expert_mlp_reference, torch.float64, "cpu")
    names = ["y", "dx", "d_weights", "dw_up"] + (["dw_gate"] if act == "swiglu" else []) + ["dw_down"]
    assert len(got) == len(want) == len(names)
    for what, g, r in zip(names, got, want):
        assert_near(g.cpu(), r, dtype, what)
    if case == "drops":
        assert (got[2].cpu().view(-1)[[3, 4, 11]] == 0).all()  # a dropped choice's weight gets no gradient


def test_expert_mlp_is_deterministic():
    """No atomics: the same inputs give bitwise the same output and gradients."""
    gen = torch.Generator().manual_seed(3)
    T, k, E, weights, experts_A = routing("drops", gen)
    order, offsets = (t.to(DEVICE) for t in kernels.sort_by_expert(experts_A, E, has_dropped=True))
    inputs = [
        t.to(DEVICE)
        for t in (torch.randn(T, 16), weights, torch.randn(E, 16, 32), torch.randn(E, 16, 32), torch.randn(E, 32, 16))
    ]

    def run():
        return grads_of(
            lambda x, wt, u, g, d: kernels.expert_mlp(
                x, wt, order, offsets, u, g, d, activation_name="swiglu", backend="triton"
            ),
            inputs,
        )

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("act", ["gelu", "swiglu"])
def test_tma_and_pointer_loads_give_the_same_bits(monkeypatch, act):
    """The tensor-descriptor (TMA) loads and the pointer loads are two ways to fetch the same tiles:
    forward and every gradient agree bit for bit (through the interpreter, which emulates TMA; on a
    Hopper GPU, compiled). The layouts here qualify for TMA (aligned strides), and it is checked that
    the TMA path was taken, for A as well as W (the grouped GEMM and dX's second pair are not gathered),
    with full row tiles whose outputs leave as TMA boxes and partial ones that are stored row by row."""
    from kernels.triton import launch

    gen = torch.Generator().manual_seed(5)
    T, k, E = 30, 2, 3  # 20 rows per expert on average: full 16-row tiles (stored as TMA boxes) and partial ones
    weights, experts = torch.randn(T, E, generator=gen).softmax(-1).topk(k)
    order, offsets = (t.to(DEVICE) for t in kernels.sort_by_expert(experts.reshape(-1), E))
    inputs = [
        t.to(DEVICE)
        for t in (
            torch.randn(T, 24, generator=gen),
            weights,
            torch.randn(E, 24, 40, generator=gen),
            torch.randn(E, 24, 40, generator=gen),
            torch.randn(E, 40, 24, generator=gen),
        )
    ]
    if act == "gelu":
        inputs[3] = None
    x, w = torch.randn(57, 24, generator=gen).to(DEVICE), torch.randn(3, 24, 40, generator=gen).to(DEVICE)
    small = offsets_from([20, 0, 37], DEVICE)
    used = []
    real = launch.use_tma
    monkeypatch.setattr(launch, "use_tma", lambda *a: used.append(real(*a)) or used[-1])

    def run():
        mlp = grads_of(
            lambda x_, wt, u, g, d: kernels.expert_mlp(
                x_, wt, order, offsets, u, g, d, activation_name=act, backend="triton"
            ),
            inputs,
        )
        return mlp + grads_of(lambda a, b: kernels.grouped_mm(a, b, small, backend="triton"), [x, w])

    with_tma = run()
    assert used and all(used)
    monkeypatch.setattr(launch, "TMA_ENABLED", False)
    used.clear()
    for a, b in zip(with_tma, run()):
        assert torch.equal(a, b)
    assert not any(used)


@pytest.mark.parametrize("act", ["gelu", "swiglu"])
def test_split_k_decode_matches_reference_and_is_deterministic(monkeypatch, act):
    """Decode-sized launches (two tokens, few output tiles) on a machine with many programs split K into
    slices whose fp32 partials a second pass sums in a fixed order: the result matches the float64
    reference (and, quantized, the torch path on the same quantized weights), repeats bit for bit,
    and the split was really taken."""
    from kernels.triton import configs, launch

    monkeypatch.setattr(launch, "num_programs", lambda index: 64)  # as on a GPU: 2 tokens are far from two waves
    splits = []
    real = configs.split_k
    monkeypatch.setattr(configs, "split_k", lambda *a: splits.append(real(*a)) or splits[-1])
    gen = torch.Generator().manual_seed(2)
    T, k, E, D, F = 2, 2, 6, 64, 96
    weights, experts = torch.randn(T, E, generator=gen).softmax(-1).topk(k)
    x = torch.randn(T, D, generator=gen)
    ws = [torch.randn(*s, generator=gen) / s[1] ** 0.5 for s in [(E, D, F), (E, D, F), (E, F, D)]]
    gate = 1 if act == "swiglu" else None

    def run(w, backend, dtype=torch.float32, fn=kernels.routed_mlp):
        return fn(
            x.to(dtype),
            weights.to(dtype),
            experts,
            w[0],
            w[1] if gate else None,
            w[2],
            activation_name=act,
            backend=backend,
        )

    got = run(ws, "triton")
    assert splits and min(splits) > 1
    assert_near(got, run([w.double() for w in ws], "torch", torch.float64), torch.float32, "y")
    assert torch.equal(got, run(ws, "triton"))
    for scheme in kernels.SCHEMES:
        q = [kernels.quantize(w, scheme) for w in ws]
        assert_near(
            run(q, "triton", fn=kernels.quantized_mlp),
            run(q, "torch", fn=kernels.quantized_mlp).double(),
            torch.float32,
            scheme,
        )


def test_split_k_policy():
    """The split doubles while the launch has fewer than two waves of tiles, stops at 8 slices or one
    BLOCK_K per slice, and training-sized launches are never split."""
    from kernels.triton.configs import split_k

    meta = dict(BLOCK_M=16, BLOCK_N=128, BLOCK_K=128)
    # GPT-4 decode, batch 1: the down-projection (K = 43,008, N = 10,752) of 2 active rows, 84 column
    # tiles each, on an H100's 132 SMs
    assert split_k(2, 16, 43008, 10752, meta, 132) == 2  # 168 tiles -> 336 >= 264
    assert split_k(1, 16, 43008, 1024, meta, 132) == 8  # 8 tiles: as many slices as allowed
    assert split_k(2, 16, 256, 1024, meta, 132) == 2  # K = 2 blocks: at most 2 slices
    assert split_k(4096, 16, 43008, 10752, dict(meta, BLOCK_M=128), 132) == 1


def test_expert_mlp_bad_input():
    T, k, E, D, F = 4, 2, 3, 8, 16
    x, weights = torch.randn(T, D), torch.rand(T, k)
    order, offsets = kernels.sort_by_expert(torch.tensor([0, 1, 1, 2, 0, 2, 2, 1]), E)
    w_up, w_down = torch.randn(E, D, F), torch.randn(E, F, D)
    call = lambda **kw: kernels.expert_mlp(
        **{
            **dict(
                x_TD=x,
                weights_TK=weights,
                order_M=order,
                offsets_E=offsets,  # noqa: E731
                w_up=w_up,
                w_gate=None,
                w_down=w_down,
                activation_name="gelu",
                backend="triton",
            ),
            **kw,
        }
    )
    with pytest.raises(ValueError, match="w_down is"):
        call(w_down=torch.randn(E, D, F))
    with pytest.raises(ValueError, match="swiglu needs a w_gate"):
        call(activation_name="swiglu")
    with pytest.raises(ValueError, match="activation must be one of"):
        call(activation_name="relu")
    with pytest.raises(ValueError, match="x is torch.float32 but w_up is torch.float16"):
        call(w_up=w_up.half())
    with pytest.raises(ValueError, match="offsets end at 7 but x has 8"):
        call(offsets_E=torch.tensor([2, 5, 7], dtype=torch.int32))


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_moe_layer_triton_matches_torch(activation):
    cfg = shrunk("tiny", activation=activation, n_experts=8, d_ff=40)
    layers = {b: MoELayer(dataclasses.replace(cfg, expert_backend=b)).to(DEVICE) for b in ("torch", "triton")}
    layers["triton"].load_state_dict(layers["torch"].state_dict())
    x = torch.randn(3, 7, cfg.d_model, device=DEVICE)
    out = {}
    for b, layer in layers.items():
        y, _ = layer(x)
        out[b] = [y, *torch.autograd.grad(y.square().sum(), list(layer.parameters()))]
    for a, b in zip(out["torch"], out["triton"]):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=2e-5)


def train_losses(cfg, steps=3, batch=2):
    torch.manual_seed(0)
    model = MoETransformer(cfg).to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, cfg.vocab_size, (batch, cfg.max_seq_len // 2 + 1), generator=gen).to(DEVICE)
    losses = []
    for _ in range(steps):  # the same batch each step, so the loss must fall
        loss = model(idx[:, :-1], targets=idx[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_training_steps_match_torch_backend():
    """A few AdamW steps give the same losses on both backends (the full tiny preset on a GPU, a
    shrunk one through the interpreter)."""
    cfg = shrunk("tiny", d_ff=40, max_seq_len=32, n_experts=4, n_layers=1) if DEVICE == "cpu" else load_config("tiny")
    torch_losses = train_losses(dataclasses.replace(cfg, expert_backend="torch"))
    triton_losses = train_losses(dataclasses.replace(cfg, expert_backend="triton"))
    assert triton_losses[-1] < triton_losses[0]
    assert triton_losses == pytest.approx(torch_losses, rel=1e-4)


@gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows_per_expert", [1, 40, 600])  # decode, small prefill, training: different tile configs
def test_compiled_shapes_on_gpu(dtype, rows_per_expert):
    E, D, F, k = 16, 256, 512, 2
    T = rows_per_expert * E // k
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(T, E, generator=gen) + torch.linspace(0, 3, E)  # skewed: high experts hot
    weights, experts = logits.softmax(-1).topk(k)
    order, offsets = kernels.sort_by_expert(experts.reshape(-1), E)
    x = torch.randn(T, D, generator=gen)
    ws = [torch.randn(*s, generator=gen) / s[1] ** 0.5 for s in [(E, D, F), (E, D, F), (E, F, D)]]
    cuda = [t.to("cuda", dtype) for t in (x, *ws)]
    got = grads_of(
        lambda x_, wt, u, g, d: kernels.expert_mlp(
            x_, wt, order.cuda(), offsets.cuda(), u, g, d, activation_name="swiglu", backend="triton"
        ),
        [cuda[0], weights.cuda(), *cuda[1:]],
    )
    want = grads_of(
        lambda x_, wt, u, g, d: kernels.expert_mlp_reference(x_, wt, order, offsets, u, g, d, activation_name="swiglu"),
        [x.double(), weights, *(w.double() for w in ws)],
    )
    for what, g, r in zip(["y", "dx", "d_weights", "dw_up", "dw_gate", "dw_down"], got, want):
        assert_near(g.cpu(), r, dtype, what)


def _pinned_metas(table):
    """Each distinct launch configuration in a pinned table, once."""
    seen = {}
    for by_bound in table.values():
        for meta in by_bound.values():
            seen[tuple(sorted(meta.items()))] = meta
    return list(seen.values())


@gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_pinned_config_on_gpu(monkeypatch, dtype):
    """Every configuration kernels/pinned_configs.py ships, forced onto every launch in turn (compiled,
    on the GPU), against the float64 references: the expert MLP forward and backward (GELU and SwiGLU)
    and the grouped GEMM through a transposed W, with E = 1 and E = 5 (empty experts, experts with
    fewer rows than a tile, a skewed hot expert), and the quantized forward (int8, int4)."""
    from kernels import pinned_configs
    from kernels.triton import configs, launch

    ROWS, DW = (table[launch.arch(0)] for table in (pinned_configs.ROWS, pinned_configs.DW))
    cases = {"E=1": [37], "E=5 ragged": [0, 3, 0, 130, 9]}
    row_metas, dw_metas = _pinned_metas(ROWS), _pinned_metas(DW)
    for i, row_meta in enumerate(row_metas):
        for dw_meta in dw_metas if i == 0 else dw_metas[:1]:  # every dW config once, with the first row config
            monkeypatch.setattr(
                configs, "pinned", lambda table, key, bound, c, r=row_meta, d=dw_meta: dict(d if table is DW else r)
            )
            for name, counts in cases.items():
                E, M = len(counts), sum(counts)
                offsets = offsets_from(counts, "cuda")
                gen = torch.Generator().manual_seed(E)
                x, w = torch.randn(M, 96, generator=gen), torch.randn(E, 80, 96, generator=gen).transpose(1, 2)
                got = grads_of(
                    lambda a, b: kernels.grouped_mm(a, b, offsets, backend="triton"),
                    [x.to("cuda", dtype), w.to("cuda", dtype)],
                )
                want = grads_of(
                    lambda a, b: kernels.grouped_mm_reference(a, b, offsets.cpu()), [x.double(), w.double()]
                )
                for what, g, r in zip(["y", "dx", "dw"], got, want):
                    assert_near(g.cpu(), r, dtype, f"{row_meta} {name} grouped_mm {what}")
                order, offs = kernels.sort_by_expert(torch.repeat_interleave(torch.arange(E), torch.tensor(counts)), E)
                T = M  # k = 1: each row its own token
                wt = torch.rand(T, 1, generator=gen)
                ws = [torch.randn(*s, generator=gen) / s[1] ** 0.5 for s in [(E, 64, 96), (E, 64, 96), (E, 96, 64)]]
                xt = torch.randn(T, 64, generator=gen)
                for act in ("gelu", "swiglu"):
                    gate = 1 if act == "swiglu" else None

                    def mlp(fn, device, dt):
                        return grads_of(
                            lambda x_, wt_, u, g, d: fn(
                                x_,
                                wt_,
                                order.to(device),
                                offs.to(device),
                                u,
                                g,
                                d,
                                activation_name=act,
                                **({"backend": "triton"} if device == "cuda" else {}),
                            ),
                            [
                                xt.to(device, dt),
                                wt.to(device),
                                ws[0].to(device, dt),
                                ws[1].to(device, dt) if gate else None,
                                ws[2].to(device, dt),
                            ],
                        )

                    got = mlp(kernels.expert_mlp, "cuda", dtype)
                    want = mlp(kernels.expert_mlp_reference, "cpu", torch.float64)
                    for i, (g, r) in enumerate(zip(got, want)):
                        assert_near(g.cpu(), r, dtype, f"{row_meta} {name} {act} output/grad {i}")
                    for scheme in ("int8", "int4"):
                        q = [kernels.quantize(t.to("cuda", dtype), scheme) for t in ws]
                        experts = torch.repeat_interleave(torch.arange(E), torch.tensor(counts)).view(T, 1)
                        args = (
                            xt.to("cuda", dtype),
                            wt.to("cuda", dtype),
                            experts.cuda(),
                            q[0],
                            q[1] if gate else None,
                            q[2],
                        )
                        y = kernels.quantized_mlp(*args, activation_name=act, backend="triton")
                        ref = kernels.quantized_mlp(*args, activation_name=act, backend="torch")
                        assert_near(y.float().cpu(), ref.double().cpu(), dtype, f"{row_meta} {name} {act} {scheme}")
