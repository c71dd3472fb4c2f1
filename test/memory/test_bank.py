"""Algorithm 1 (batch) and the streaming memory bank."""
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from m3_ros.memory.bank import COS_EPS, MemoryBank, similarity_reduction


def literal_algorithm1(x: torch.Tensor, theta: float, prekept: torch.Tensor | None = None) -> list[int]:
    """Row-by-row transcription of the method note's Algorithm 1 (slow oracle)."""
    xn = torch.nn.functional.normalize(x.double(), dim=-1)
    n = x.shape[0]
    taken = [bool(x[i].abs().sum() == 0) for i in range(n)]
    if prekept is not None and prekept.shape[0]:
        pk = torch.nn.functional.normalize(prekept.double(), dim=-1)
        for i in range(n):
            if (pk @ xn[i]).max() >= theta - COS_EPS:
                taken[i] = True
    kept = []
    for i in range(n):
        if taken[i]:
            continue
        nbrs = [j for j in range(n) if float(xn[i] @ xn[j]) >= theta - COS_EPS]
        if not any(taken[j] for j in nbrs):
            kept.append(i)
            for j in nbrs:
                taken[j] = True
    return kept


# Few distinct directions with small noise, so neighbourhoods overlap and the look-ahead matters.
rows_strategy = st.builds(
    lambda seed, n, d, k, noise: _clustered(seed, n, d, k, noise),
    st.integers(0, 10_000), st.integers(1, 60), st.integers(2, 6), st.integers(1, 6), st.floats(0.05, 0.8))


def _clustered(seed: int, n: int, d: int, k: int, noise: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g)
    x = centres[torch.randint(0, k, (n,), generator=g)] + noise * torch.randn(n, d, generator=g)
    return x * torch.rand(n, 1, generator=g).add(0.5)  # raw rows are not unit length


@settings(max_examples=60, deadline=None)
@given(x=rows_strategy, theta=st.floats(0.3, 0.99))
def test_batch_matches_literal_and_properties(x, theta):
    kept = similarity_reduction(x, theta, chunk_size=7).tolist()
    assert kept == literal_algorithm1(x, theta)
    xn = torch.nn.functional.normalize(x, dim=-1)
    K = xn[kept]
    # Kept rows are pairwise below theta.
    off = K @ K.T - 2 * torch.eye(len(kept))
    assert (off < theta - COS_EPS).all()
    # Every dropped row is within theta of a kept row, or of a row that is (the look-ahead).
    covered = (xn @ K.T >= theta - COS_EPS).any(-1)  # [n]
    for i in range(x.shape[0]):
        if i in kept:
            continue
        nb = xn @ xn[i] >= theta - COS_EPS
        assert covered[i] or (nb & covered).any()


def test_lookahead_counterexample():
    # Angles 0, 15, 8 degrees with theta = cos 10: the 15-degree row has no kept row within theta,
    # yet Algorithm 1 drops it because its neighbour (8 degrees) was taken by the 0-degree row.
    ang = np.deg2rad([0.0, 15.0, 8.0])
    x = torch.tensor(np.stack([np.cos(ang), np.sin(ang)], -1), dtype=torch.float32)
    theta = float(np.cos(np.deg2rad(10.0)))
    assert similarity_reduction(x, theta).tolist() == [0]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 40), d=st.integers(2, 8))
def test_theta_one_keeps_all_distinct_rows(seed, n, d):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g)
    un = torch.nn.functional.normalize(base, dim=-1)
    assume(bool((un @ un.T - 2 * torch.eye(n)).max() < 1 - 1e-4))  # distinct directions
    x = torch.cat([base, base[: n // 2] * 3.0])  # duplicates in direction (scaled copies)
    kept = similarity_reduction(x, 1.0)
    assert kept.tolist() == list(range(n))


@settings(max_examples=60, deadline=None)
@given(x=rows_strategy, theta=st.floats(0.3, 0.99))
def test_streaming_one_call_equals_batch(x, theta):
    bank = MemoryBank(x.shape[1], theta, max_rows=10_000, chunk_size=5)
    assign = bank.add(x)
    kept = similarity_reduction(x, theta)
    torch.testing.assert_close(bank.rows, x[kept], rtol=0, atol=0)
    # Kept rows stand for themselves.
    assert assign[kept].tolist() == list(range(len(kept)))


@settings(max_examples=40, deadline=None)
@given(x=rows_strategy, theta=st.floats(0.3, 0.99), cut=st.integers(0, 60))
def test_streaming_two_calls_equal_algorithm1_with_bank_prekept(x, theta, cut):
    cut = min(cut, x.shape[0])
    bank = MemoryBank(x.shape[1], theta, max_rows=10_000)
    bank.add(x[:cut])
    first = literal_algorithm1(x[:cut], theta)
    bank.add(x[cut:])
    second = literal_algorithm1(x[cut:], theta, prekept=x[:cut][first])
    expect = torch.cat([x[:cut][first], x[cut:][second]])
    torch.testing.assert_close(bank.rows, expect, rtol=0, atol=0)
    # A row is added only if no bank row had cosine >= theta with it.
    un = torch.nn.functional.normalize(bank.rows, dim=-1)
    assert ((un @ un.T - 2 * torch.eye(len(bank))) < theta - COS_EPS).all()


def test_bound_merges_most_similar_pair_into_count_weighted_mean():
    e = torch.eye(4)
    bank = MemoryBank(4, 0.99, max_rows=3)
    bank.add(torch.stack([e[0], e[0], e[0], e[1], e[2]]))  # row 0 stands for three features
    assert len(bank) == 3 and bank.counts.tolist() == [3.0, 1.0, 1.0]
    near = torch.tensor([[0.95, 0.0, 0.0, 0.3122]])  # cos 0.95 with e0: below theta, so admitted
    assign = bank.add(near)
    # Four rows exceed the bound: the most similar pair (e0, near) merges, weighted 3 : 1.
    assert len(bank) == 3 and bank.merges == 1
    torch.testing.assert_close(bank.rows[0], (3 * e[0] + near[0]) / 4)
    torch.testing.assert_close(bank.rows[1:], torch.stack([e[1], e[2]]))
    assert assign.tolist() == [0] and bank.counts.tolist() == [4.0, 1.0, 1.0]


@settings(max_examples=30, deadline=None)
@given(x=rows_strategy, cap=st.integers(2, 8), split=st.integers(1, 5))
def test_bank_never_exceeds_bound_and_assigns_every_row(x, cap, split):
    bank = MemoryBank(x.shape[1], 0.95, max_rows=cap, chunk_size=4)
    for part in torch.tensor_split(x, split):
        before = bank.version
        assign = bank.add(part)
        assert len(bank) <= cap
        assert ((assign >= 0) & (assign < len(bank))).all()
        if len(bank):
            assert bank.version >= before
    # Every offered feature is counted once, by the row that stands for it now or was merged into it.
    assert float(bank.counts.sum()) == x.shape[0]
    assert bank.unit_rows.shape == bank.rows.shape


def test_centring_keeps_rows_a_common_component_hides():
    # Tokens sharing a large common component (as DINOv2's do): raw cosines are all > 0.9.
    g = torch.Generator().manual_seed(0)
    common = 10 * torch.nn.functional.normalize(torch.randn(32, generator=g), dim=0)
    centres = torch.randn(12, 32, generator=g)
    x = common + centres[torch.randint(0, 12, (400,), generator=g)] + 0.05 * torch.randn(400, 32, generator=g)
    raw = MemoryBank(32, 0.75, 1000)
    raw.add(x)
    cen = MemoryBank(32, 0.75, 1000, centre=True)
    for part in torch.tensor_split(x, 4):
        cen.add(part)
    assert len(raw) == 1
    assert len(cen) >= 10
    # Rows stay raw features (the values attention mixes live in the model's space) ...
    assert all(bool((x == r).all(-1).any()) for r in cen.rows)
    # ... while the keys are the centred rows, normalised.
    torch.testing.assert_close(cen.centre, x.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cen.unit_rows, torch.nn.functional.normalize(cen.rows - cen.centre, dim=-1))


@settings(max_examples=40, deadline=None)
@given(x=rows_strategy, theta=st.floats(0.3, 0.99))
def test_centred_streaming_one_call_equals_batch_on_centred_rows(x, theta):
    x = torch.cat([x, torch.zeros(2, x.shape[1])])  # zero rows: no feature, not in the mean
    bank = MemoryBank(x.shape[1], theta, max_rows=10_000, centre=True)
    assign = bank.add(x)
    mean = x[:-2].mean(0)
    xc = torch.where((x.abs().sum(-1) > 0)[:, None], x - mean, 0.0)
    assume(bool((xc[:-2].norm(dim=-1) > 1e-3).all()))  # a row at the mean has no direction
    kept = similarity_reduction(xc, theta)
    torch.testing.assert_close(bank.rows, x[kept], rtol=0, atol=0)
    assert assign[kept].tolist() == list(range(len(kept))) and assign[-2:].tolist() == [-1, -1]


def test_zero_rows_ignored_and_bad_input():
    bank = MemoryBank(4, 0.8, max_rows=5)
    x = torch.tensor([[0.0, 0, 0, 0], [1.0, 0, 0, 0]])
    assert bank.add(x).tolist() == [-1, 0]
    assert len(bank) == 1
    with pytest.raises(ValueError, match="theta"):
        MemoryBank(4, 1.5, 5)
    with pytest.raises(ValueError, match=r"\[n, 4\]"):
        bank.add(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="theta"):
        similarity_reduction(x, 0.0)
    with pytest.raises(ValueError, match="max_rows"):
        MemoryBank(4, 0.8, 1)
    with pytest.raises(ValueError, match="max_rows"):
        bank.set_rows(torch.ones(6, 4))
