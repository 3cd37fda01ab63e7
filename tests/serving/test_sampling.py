"""Sampling and the speculative acceptance rule, against exact distributions (moe/serving/sampling.py)."""

import itertools

import pytest
import torch

from moe.serving.sampling import SamplingParams, accept_draft, probabilities, sample


def tv(p, q) -> float:
    return 0.5 * float((p - q).abs().sum())


def test_inverse_cdf_sampling_matches_the_distribution_and_skips_zeros():
    p = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.3, 0.0])
    n = 200_000
    u = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tokens = sample(p.expand(n, -1), u)
    assert set(tokens.unique().tolist()) == {1, 3, 4}
    assert tv(torch.bincount(tokens, minlength=6) / n, p) < 0.005
    assert sample(p[None], torch.tensor([0.0])).item() == 1  # u = 0: the first token with mass
    assert sample(torch.tensor([[2.0, 2.0]]), torch.tensor([0.75])).item() == 1  # unnormalized is fine


def test_probabilities_apply_temperature_top_k_and_top_p():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    torch.testing.assert_close(probabilities(logits, SamplingParams(temperature=0.5)), (logits / 0.5).softmax(-1))
    assert probabilities(logits, SamplingParams(greedy=True)).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert probabilities(logits, SamplingParams(temperature=0)).tolist() == [1.0, 0.0, 0.0, 0.0]
    top2 = probabilities(logits, SamplingParams(top_k=2))
    torch.testing.assert_close(top2, torch.tensor([1.0, torch.e**-1, 0, 0]) / (1 + torch.e**-1))
    # top_p 0.7: token 0 has 64%, so tokens 0 and 1 (88%) are kept
    assert (probabilities(logits, SamplingParams(top_p=0.7)) > 0).tolist() == [True, True, False, False]


def test_sampling_params_reject_unknown_and_bad_settings():
    with pytest.raises(ValueError, match=r"unknown sampling setting\(s\) \['temprature'\]"):
        SamplingParams.parse({"temprature": 0.5})
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams.parse({"temperature": -1})
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams(top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    assert SamplingParams.parse(None) == SamplingParams()


def _markov_speculative(P, Q, k, n_rows, length, seed):
    """Speculative decoding of n_rows sequences from token 0, where the target's next-token
    distribution is row P[prev] of a Markov table and the draft's is Q[prev]; vectorized over rows.
    Returns the first `length` emitted tokens of every row [n_rows, length]."""
    g = torch.Generator().manual_seed(seed)
    out = torch.full((n_rows, length + k + 1), -1, dtype=torch.long)
    n_out = torch.zeros(n_rows, dtype=torch.long)
    last = torch.zeros(n_rows, dtype=torch.long)
    rows = torch.arange(n_rows)
    while (n_out < length).any():
        drafts, q, prev = [], [], last
        for _ in range(k):
            q.append(Q[prev])
            prev = sample(Q[prev], torch.rand(n_rows, generator=g, dtype=torch.float64))
            drafts.append(prev)
        d = torch.stack(drafts, 1) if k else torch.zeros(n_rows, 0, dtype=torch.long)
        ctx = torch.cat([last[:, None], d], 1)  # the target scores k + 1 positions
        p = P[ctx]  # [n, k + 1, V]
        qq = torch.stack(q, 1) if k else torch.zeros(n_rows, 0, P.shape[1])
        n_acc, nxt = accept_draft(
            p,
            qq,
            d,
            torch.rand(n_rows, k, generator=g, dtype=torch.float64),
            torch.rand(n_rows, generator=g, dtype=torch.float64),
        )
        active = n_out < length
        for j in range(k + 1):  # emit d[:n_acc] then nxt
            tok = torch.where(j < n_acc, d[:, j], nxt) if j < k else nxt
            take = (j <= n_acc) & active
            out[rows[take], n_out[take] + j] = tok[take]
        n_out += (n_acc + 1) * active
        last = nxt
    return out[:, :length]


@pytest.mark.parametrize("k", [1, 3])
def test_speculative_sampling_emits_the_target_distribution(k):
    """Three emitted tokens of 300k sequences: their joint distribution is the target chain's, within
    total variation 0.01 (sampling noise here is ~0.003), though the draft's chain is 0.3 away."""
    P = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]], dtype=torch.float64)
    Q = torch.tensor([[0.2, 0.2, 0.6], [0.4, 0.5, 0.1], [0.3, 0.4, 0.3]], dtype=torch.float64)

    def joint(T):  # exact distribution of the first three tokens after token 0
        return torch.tensor([T[0, a] * T[a, b] * T[b, c] for a, b, c in itertools.product(range(3), repeat=3)])

    assert tv(joint(P), joint(Q)) > 0.3  # the test can tell the draft from the target
    n = 300_000
    seqs = _markov_speculative(P, Q, k, n, 3, seed=k)
    codes = seqs[:, 0] * 9 + seqs[:, 1] * 3 + seqs[:, 2]
    empirical = torch.bincount(codes, minlength=27).double() / n
    assert tv(empirical, joint(P)) < 0.01


def test_a_draft_equal_to_the_target_is_always_accepted():
    V, k, n = 7, 4, 2000
    g = torch.Generator().manual_seed(1)
    p = torch.rand(n, k + 1, V, generator=g, dtype=torch.float64).softmax(-1)
    d = sample(p[:, :k].reshape(-1, V), torch.rand(n * k, generator=g, dtype=torch.float64)).view(n, k)
    n_acc, _ = accept_draft(
        p,
        p[:, :k],
        d,
        torch.rand(n, k, generator=g, dtype=torch.float64),
        torch.rand(n, generator=g, dtype=torch.float64),
    )
    assert (n_acc == k).all()


def test_greedy_rule_accepts_the_matching_prefix_then_emits_the_target_argmax():
    V = 5
    target_argmax = torch.tensor([2, 4, 1, 3])  # at the k + 1 = 4 scored positions
    p = torch.nn.functional.one_hot(target_argmax, V).double()[None]
    for draft, want_n, want_next in [([2, 4, 1], 3, 3), ([2, 0, 1], 1, 4), ([0, 4, 1], 0, 2)]:
        q = torch.nn.functional.one_hot(torch.tensor(draft), V).double()[None]
        n_acc, nxt = accept_draft(
            p, q, torch.tensor([draft]), torch.rand(1, 3, dtype=torch.float64), torch.rand(1, dtype=torch.float64)
        )
        assert (int(n_acc), int(nxt)) == (want_n, want_next)


def test_a_tiny_temperature_is_the_argmax_not_nan():
    logits = torch.tensor([1.0, 3.0, 2.0, -50.0])
    p = probabilities(logits, SamplingParams(temperature=1e-40))
    assert torch.isfinite(p).all() and p.argmax() == 1 and float(p[1]) == 1.0
