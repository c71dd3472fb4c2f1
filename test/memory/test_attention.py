"""Memory attention and chunked decoding (relevance maps: test_relevance.py)."""
import torch
import torch.nn.functional as F

from m3_ros.memory.attention import attention_logits, decode_chunked, memory_attention


def _setup(t=300, d=48, l=8, M=500, seed=0, peaky=True):
    g = torch.Generator().manual_seed(seed)
    # Bank rows span an l-dim subspace that W_m's row space covers (as a PCA-initialised W_m does).
    basis = torch.randn(l, d, generator=g)
    rows = torch.randn(t, l, generator=g) @ basis + 0.3 * basis[0]
    unit = F.normalize(rows, dim=-1)
    W = torch.randn(l, l, generator=g) @ basis
    if peaky:
        # Queries whose Q·W_m points at a bank row (as seeded Gaussians do), blended a little.
        target = unit[torch.randint(0, t, (M,), generator=g)]
        q = torch.linalg.lstsq(W.T, target.T).solution.T  # [M, l]
        q = q + 0.05 * torch.randn(M, l, generator=g)
    else:
        q = torch.randn(M, l, generator=g)
    text = torch.randn(d, generator=g)
    return rows, unit, W, q, text


def test_decode_chunked_equals_dense():
    rows, unit, W, q, _ = _setup()
    dense = memory_attention(q, W, rows, unit, 0.05)
    chunked = decode_chunked(q, W, rows, unit, 0.05, budget_bytes=20_000)
    torch.testing.assert_close(chunked, dense, rtol=1e-5, atol=1e-5)


def test_logits_equal_normalised_embedding_cosine():
    rows, unit, W, q, _ = _setup()
    ref = F.normalize(q @ W, dim=-1) @ unit.T / 0.05
    torch.testing.assert_close(attention_logits(q, W, unit, 0.05), ref, rtol=1e-4, atol=1e-3)


def test_topk_attention_close_and_exact_at_t():
    rows, unit, W, q, _ = _setup()
    full = memory_attention(q, W, rows, unit, 0.05)
    torch.testing.assert_close(memory_attention(q, W, rows, unit, 0.05, topk=rows.shape[0]), full)
    sparse = memory_attention(q, W, rows, unit, 0.05, topk=32)
    assert F.cosine_similarity(sparse, full, dim=-1).min() > 0.98
    # Gradients flow to queries and W_m through the sparse path.
    qg, Wg = q.clone().requires_grad_(), W.clone().requires_grad_()
    memory_attention(qg, Wg, rows, unit, 0.05, topk=8).sum().backward()
    assert qg.grad.abs().sum() > 0 and Wg.grad.abs().sum() > 0


def test_queries_stay_valid_when_bank_grows():
    # W_m maps into feature space: adding rows far from a query's target barely changes its decoding.
    rows, unit, W, q, _ = _setup()
    before = decode_chunked(q, W, rows, unit, 0.05)
    extra = -rows[:10]  # opposite directions: cos ~ -1 with the targets
    rows2 = torch.cat([rows, extra])
    after = decode_chunked(q, W, rows2, F.normalize(rows2, dim=-1), 0.05)
    e = F.normalize(q @ W, dim=-1)
    far = (e @ F.normalize(extra, dim=-1).T).max(-1).values < (e @ unit.T).max(-1).values - 0.3
    assert far.sum() > 100
    assert F.cosine_similarity(before[far], after[far], dim=-1).min() > 0.99


def test_ssim_matches_direct_2d_window():
    from m3_ros.memory.losses import _G1, ssim
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(20, 24, 3, generator=g), torch.rand(20, 24, 3, generator=g)
    assert abs(float(ssim(a, a)) - 1.0) < 1e-5
    w2 = (_G1[:, None] * _G1[None, :]).expand(3, 1, -1, -1)
    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    c = lambda z: F.conv2d(z, w2, padding=5, groups=3)  # noqa: E731
    mx, my = c(x), c(y)
    sxx, syy, sxy = c(x * x) - mx ** 2, c(y * y) - my ** 2, c(x * y) - mx * my
    ref = ((2 * mx * my + 1e-4) * (2 * sxy + 9e-4)) / ((mx ** 2 + my ** 2 + 1e-4) * (sxx + syy + 9e-4))
    torch.testing.assert_close(ssim(a, b), ref.mean(), rtol=1e-4, atol=1e-5)


def test_candidate_rows_cover_peaky_queries():
    from m3_ros.memory.attention import candidate_rows
    rows, unit, W, q, _ = _setup(t=2000, M=1500)
    cand = candidate_rows(q, W, unit, 0.05, max_rows=300, sample=256, generator=torch.Generator().manual_seed(0))
    assert cand.numel() <= 300 and torch.equal(cand, torch.sort(torch.unique(cand)).values)
    full = memory_attention(q, W, rows, unit, 0.05)
    sub = memory_attention(q, W, rows[cand], unit[cand], 0.05, topk=32)
    # Most points decode as with the whole bank (their rows were voted in by the subsample).
    assert F.cosine_similarity(sub, full, dim=-1).median() > 0.95
    assert torch.equal(candidate_rows(q, W, unit, 0.05, max_rows=5000), torch.arange(2000))


