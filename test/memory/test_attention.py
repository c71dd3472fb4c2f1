"""Memory attention, chunked decoding and relevance without decoding."""
import torch
import torch.nn.functional as F

from m3_ros.memory.attention import RelevanceIndex, attention_logits, decode_chunked, memory_attention


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


def test_relevance_matches_decode_then_cosine():
    rows, unit, W, q, text = _setup()
    ref = F.cosine_similarity(decode_chunked(q, W, rows, unit, 0.05), text[None], dim=-1)
    idx = RelevanceIndex.build(W, rows, unit, text, 0.05)
    # All rows and k = t: exact up to float error.
    torch.testing.assert_close(idx.relevance(q, topk=rows.shape[0]), ref, rtol=1e-4, atol=1e-4)


def test_relevance_truncation_error_small_and_shrinks_with_k():
    for peaky, tol in ((True, 0.02), (False, 0.15)):
        rows, unit, W, q, text = _setup(peaky=peaky)
        ref = F.cosine_similarity(decode_chunked(q, W, rows, unit, 0.05), text[None], dim=-1)
        idx = RelevanceIndex.build(W, rows, unit, text, 0.05)
        errs = [(idx.relevance(q, topk=k) - ref).abs().max().item() for k in (2, 16, 64, 300)]
        assert errs[1] < tol, (peaky, errs)
        assert errs[-1] < 1e-4
        assert errs[0] >= errs[1] - 1e-6 and errs[1] >= errs[2] - 1e-6


def test_candidate_truncation_close_on_peaky_queries():
    rows, unit, W, q, text = _setup()
    ref = F.cosine_similarity(decode_chunked(q, W, rows, unit, 0.05), text[None], dim=-1)
    idx = RelevanceIndex.build(W, rows, unit, text, 0.05)
    cand = idx.candidates(q[::4], per_query=16)
    assert cand.numel() < rows.shape[0]
    err = (idx.relevance(q, candidates=cand) - ref).abs()
    assert err.median() < 0.02 and err.max() < 0.2


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


def test_tiled_relevance_image_exact_with_all_rows_and_close_with_few():
    rows, unit, W, q, text = _setup(t=120, M=30 * 44)
    ref = F.cosine_similarity(decode_chunked(q, W, rows, unit, 0.05), text[None], dim=-1).view(30, 44)
    idx = RelevanceIndex.build(W, rows, unit, text, 0.05)
    img = q.view(30, 44, -1)  # 30 x 44: tiles of 16 leave partial tiles on both edges
    # Every subsampled pixel votes for every row: softmax and norm exact over the whole bank.
    exact = idx.relevance_image(img, stride=4, per_query=120, max_rows=120, tile=16)
    torch.testing.assert_close(exact, ref, rtol=1e-4, atol=1e-4)
    # Piecewise-constant queries (objects): a few rows per tile, chosen by the tile's own pixels.
    g = torch.Generator().manual_seed(1)
    blocks = q[torch.randint(0, q.shape[0], (8, 11), generator=g)]  # [8, 11, l] one query per 4x4 block
    img = blocks.repeat_interleave(4, 0).repeat_interleave(4, 1)[:30, :44]
    img = img + 0.01 * torch.randn(img.shape, generator=g)
    ref = F.cosine_similarity(decode_chunked(img.reshape(-1, img.shape[-1]), W, rows, unit, 0.05), text[None],
                              dim=-1).view(30, 44)
    approx = idx.relevance_image(img, stride=4, per_query=8, max_rows=64, tile=16)
    err = (approx - ref).abs()
    # Median is tight; a few pixels whose rows no voter in their tile picked stay off (as in the bench).
    assert err.median() < 0.01 and err.max() < 0.6
