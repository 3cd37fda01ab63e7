import pytest
import torch
from conftest import shrunk

from moe.model import MoETransformer, Positions
from moe.model.attention import Attention
from moe.model.rope import apply_rope, rope_tables
from moe.serving.generate import generate, sample_next


@pytest.mark.parametrize("kv_heads", [1, 2, 4])  # multi-query, grouped-query, multi-head
@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_kv_cache_decode_equals_full_forward(kv_heads, activation):
    model = MoETransformer(shrunk("tiny", n_kv_heads=kv_heads, activation=activation)).double().eval()
    idx = torch.randint(0, 256, (2, 20))
    full = model(idx).logits
    model.setup_caches(2, 32)
    step_logits = [model(idx[:, :7], Positions.at(torch.arange(7))).logits]  # prefill 7
    for t in range(7, 12):  # then one token at a time
        step_logits.append(model(idx[:, t : t + 1], Positions.at(torch.tensor([t]))).logits)
    step_logits.append(model(idx[:, 12:], Positions.at(torch.arange(12, 20))).logits)  # a second chunk
    # float64 everywhere but the router, which routes in float32 by design: a 1e-16 difference in its
    # input can move a float32 routing weight by one ulp (~1e-8 relative). A cache bug is O(1).
    torch.testing.assert_close(torch.cat(step_logits, dim=1), full, atol=1e-7, rtol=1e-6)


def test_attention_is_causal_and_rope_is_relative():
    cfg = shrunk("tiny")
    attn = Attention(cfg).double()
    cos, sin = rope_tables(cfg.head_dim, 16, cfg.rope_theta)
    x = torch.randn(1, 10, 32, dtype=torch.float64)
    y = attn(x, (cos[:10], sin[:10]))  # no positions: 0..T-1, no cache
    x2 = x.clone()
    x2[:, 6:] += 1.0  # changing the future must not change the past
    torch.testing.assert_close(attn(x2, (cos[:10], sin[:10]))[:, :6], y[:, :6])
    # Rotary: q.k depends on positions only through their difference.
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)
    c, s = rope_tables(8, 64, 10000.0)
    dot = lambda i, j: (apply_rope(q, c[i : i + 1], s[i : i + 1]) * apply_rope(k, c[j : j + 1], s[j : j + 1])).sum()
    torch.testing.assert_close(dot(5, 2), dot(40, 37))


def test_forward_returns_logits_aux_and_routing():
    cfg = shrunk("tiny")
    model = MoETransformer(cfg)
    idx = torch.randint(0, 256, (3, 9))
    out = model(idx, targets=idx)
    assert out.logits.shape == (3, 9, 256)
    assert len(out.routing) == cfg.n_layers
    assert all(r.tokens_per_expert.sum() == 27 * cfg.top_k for r in out.routing)
    torch.testing.assert_close(out.aux_loss, sum(r.aux_loss for r in out.routing))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits.view(-1, 256), idx.view(-1)))


def test_tied_embeddings_share_one_tensor():
    model = MoETransformer(shrunk("tiny", tie_embeddings=True))
    assert model.lm_head.weight is model.tok_emb.weight


def test_bad_tokens_and_lengths():
    model = MoETransformer(shrunk("tiny"))
    with pytest.raises(ValueError, match="out of range.*vocab_size is 256"):
        model(torch.tensor([[1, 256]]))
    with pytest.raises(ValueError, match="out of range"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="exceeds max_seq_len 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="longer than max_seq_len"):
        generate(model, [1] * 65, 1)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        generate(model, [1] * 60, 10)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, [1], 2, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [1], 2, top_p=1.5)
    model.setup_caches(1, 8)
    with pytest.raises(ValueError, match="past the KV cache"):
        model(torch.zeros(1, 1, dtype=torch.long), Positions.at(torch.tensor([8])))
    model.setup_paged_caches(n_pages=4, page_size=4)
    one = torch.zeros(1, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="past the 2 pages of 4"):
        model(one, Positions.paged(torch.tensor([[8]]), torch.tensor([[0, 1]]), 4))
    with pytest.raises(ValueError, match="pages of 8, but the cache's hold 4"):
        model(one, Positions.paged(torch.tensor([[3]]), torch.tensor([[0]]), 8))
    with pytest.raises(ValueError, match="B and T >= 1"):
        Positions.paged(torch.zeros(1, 0, dtype=torch.long), torch.tensor([[0]]), 4)


def test_greedy_generate_equals_argmax_of_full_forward():
    model = MoETransformer(shrunk("tiny")).double()
    prompt = [5, 17, 99]
    new = generate(model, prompt, 12, greedy=True)
    seq = list(prompt)
    for _ in range(12):  # no cache: recompute the whole sequence each time
        seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert new == seq[len(prompt) :]
    assert generate(model, prompt, 5, seed=3) == generate(model, prompt, 5, seed=3)


def test_sampling_filters():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    assert {sample_next(logits, top_k=2, generator=gen) for _ in range(200)} == {0, 1}
    # top_p = 0.5: token 0 alone has 64% of the mass, so it is the only one kept.
    assert {sample_next(logits, top_p=0.5, generator=gen) for _ in range(100)} == {0}
    assert sample_next(logits, greedy=True) == 0 and sample_next(logits, temperature=0) == 0
    counts = torch.bincount(torch.tensor([sample_next(logits, generator=gen) for _ in range(4000)]), minlength=5)
    torch.testing.assert_close(counts.double() / 4000, logits.softmax(-1).double(), atol=0.03, rtol=0)


def test_gpt4_builds_on_meta_device():
    from moe.config import load_config

    with torch.device("meta"):
        model = MoETransformer(load_config("gpt4"))
    assert 1.78e12 < sum(p.numel() for p in model.parameters()) < 1.83e12
    assert model.blocks[0].moe.w_up.shape == (16, 10752, 43008)
    assert model.blocks[0].attn.wk.weight.shape == (128, 10752)  # one K/V head


@pytest.mark.parametrize("kv_heads", [1, 2, 6])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "per_row"])
def test_attend_cached_equals_sdpa_with_expanded_kv_heads(kv_heads, mask_kind):
    from moe.model.attention import attend_cached

    B, H, T, S, d = 2, 6, 3, 9, 8
    q = torch.randn(B, H, T, d, dtype=torch.float64)
    k, v = (torch.randn(B, kv_heads, S, d, dtype=torch.float64) for _ in range(2))
    mask = {
        "none": None,
        "causal": torch.arange(S) <= torch.arange(S - T, S)[:, None],
        "per_row": torch.rand(B, 1, T, S) < 0.7,
    }[mask_kind]
    if mask is not None:
        mask[..., 0] = True  # every query sees something
    # the reference: each query head's K/V head copied out explicitly (head h reads K/V head h // (H/G))
    expand = lambda t: t.repeat_interleave(H // kv_heads, dim=1)  # noqa: E731
    want = torch.nn.functional.scaled_dot_product_attention(q, expand(k), expand(v), attn_mask=mask)
    torch.testing.assert_close(attend_cached(q, k, v, mask), want)


def test_init_is_per_parameter_and_the_same_built_on_meta():
    """moe/model/init.py: a model built on the meta device and materialized equals one built on the
    host with the same seed, bit for bit; each parameter's values come from its own stream (a deeper
    model shares the shallower one's unscaled weights), with the stated std."""
    import math

    from moe.model.init import materialize

    cfg = shrunk("tiny")
    host = MoETransformer(cfg)
    host.init_weights(7)
    with torch.device("meta"):
        meta = MoETransformer(cfg)
    materialize(meta, cfg, "cpu", 7)
    for (name, a), b in zip(host.state_dict().items(), meta.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(host.rotary.cos, meta.rotary.cos) and torch.equal(host.rotary.sin, meta.rotary.sin)

    deeper = MoETransformer(shrunk("tiny", n_layers=cfg.n_layers + 1))
    deeper.init_weights(7)
    assert torch.equal(deeper.blocks[0].attn.wq.weight, host.blocks[0].attn.wq.weight)
    assert torch.equal(deeper.blocks[0].moe.w_up, host.blocks[0].moe.w_up)
    assert not torch.equal(host.blocks[0].moe.w_up, host.blocks[1].moe.w_up)

    residual = cfg.init_std / math.sqrt(2 * cfg.n_layers)
    for name, p in host.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
            continue
        want = residual if name.endswith(("attn.wo.weight", "moe.w_down")) else cfg.init_std
        n = p.numel()  # five standard errors of the sample's std and mean
        assert abs(p.double().std().item() / want - 1) < 5 / math.sqrt(2 * n), name
        assert abs(p.double().mean().item()) < 5 * want / math.sqrt(n), name
