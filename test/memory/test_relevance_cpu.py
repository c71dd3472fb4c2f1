"""The compiled relevance moments (csrc/relevance_cpu.cpp) against their PyTorch twin and full decoding."""
import dataclasses
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from m3_ros.memory import _relevance_cpu, build_ext
from m3_ros.memory.attention import decode_chunked
from m3_ros.memory.relevance import RelevanceIndex


@pytest.fixture(scope="module")
def kernel():
    """The cached library, built here if setup.sh has not (a build failure fails the tests)."""
    if not _relevance_cpu.available():
        build_ext.build_relevance()
        importlib.reload(_relevance_cpu)  # the same module object, which relevance.py holds
    assert _relevance_cpu.available(), _relevance_cpu.load_error()
    return _relevance_cpu


def _index(t, d=48, l=16, separated=False, tau=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    if separated:  # rows inside W_m's row space: peaked attention
        basis = torch.randn(l, d, generator=g)
        rows = torch.randn(t, l, generator=g) @ basis + 0.2 * torch.randn(t, d, generator=g)
        Wm = torch.randn(l, l, generator=g) @ basis
    else:  # random rows: attention spreads over many of them
        rows = torch.randn(t, d, generator=g) + 0.5 * torch.randn(d, generator=g)
        Wm = torch.randn(l, d, generator=g)
    unit = F.normalize(rows, dim=-1)
    idx = RelevanceIndex.build(Wm, rows, unit, torch.randn(d, generator=g), tau)
    return idx, Wm, rows, unit, g


@pytest.mark.parametrize("t,l,separated,tau", [(1000, 16, False, 0.05), (777, 16, True, 0.05), (301, 7, False, 0.05),
                                               (65, 16, True, 0.005), (3, 5, False, 0.05)])
def test_kernel_moments_match_the_torch_twin(kernel, t, l, separated, tau):
    # Odd pixel, row and column counts exercise the partial 16-pixel group, the row-block tail, the
    # per-row logit tail and every accumulator tail; tau = 0.005 makes logits up to ~290 in log2
    # units, which takes the kernel's per-pixel max pass (unshifted weights would overflow).
    idx, *_, g = _index(t, l=l, separated=separated, tau=tau)
    y = idx.unit(torch.randn(37, l, generator=g))
    for c in (1, 7, 9, 17, 100):
        cols = torch.randn(t, c, generator=g) * torch.rand(t, 1, generator=g) * 5
        got = dataclasses.replace(idx, compiled=True)._moments(y, cols)
        ref = dataclasses.replace(idx, compiled=False)._moments(y, cols)
        # sums of signed terms: compare against the size of the terms, not of the sum
        w = torch.softmax(y @ idx.B / tau, dim=-1)
        scale = w @ cols.abs()
        assert bool(((got[0] - ref[0]).abs() <= 1e-5 * scale + 1e-7).all()), (c, (got[0] - ref[0]).abs().max())
        torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=1e-9)
        # and the twin is the softmax's moments (float32 logits: relative errors ~1e-6/tau in the weights)
        torch.testing.assert_close(ref[1], (w * w).sum(-1), rtol=1e-4, atol=1e-9)
        assert bool(((ref[0] - w @ cols).abs() <= 1e-4 * scale + 1e-7).all())


def test_kernel_is_what_relevance_image_uses(kernel, monkeypatch):
    idx, *_, g = _index(500)
    calls = []
    original = kernel.moments
    monkeypatch.setattr(kernel, "moments", lambda *a: calls.append(1) or original(*a))
    idx.relevance_image(idx.unit(torch.randn(6, 7, 16, generator=g)), share_rows=0)
    assert calls


def _diffuse_image(t, H=24, W=31, seed=3, noise=0.01, d=64):
    """A query image of 3x3-pixel regions over a diffuse bank, and its fully decoded relevance."""
    idx, Wm, rows, unit, g = _index(t, d=d, seed=seed)
    target = unit[torch.randint(0, t, (-(-H // 3), -(-W // 3)), generator=g)]
    q = torch.linalg.lstsq(Wm.T, target.reshape(-1, d).T).solution.T.reshape(*target.shape[:2], 16)
    q = q.repeat_interleave(3, 0).repeat_interleave(3, 1)[:H, :W]
    q = q * (1 + noise * torch.randn(q.shape, generator=g))
    text = torch.randn(d, generator=g)
    idx = RelevanceIndex.build(Wm, rows, unit, text, 0.05)
    ref = F.cosine_similarity(decode_chunked(q.reshape(-1, 16), Wm, rows, unit, 0.05), text[None], dim=-1)
    return idx, q, ref.view(H, W)


@pytest.mark.parametrize("t,tile_rows,share_rows", [(1500, 0, 0), (1500, 10**9, 0), (600, 10**9, 10**9)])
def test_relevance_image_with_the_kernel_within_its_bound_and_equal_to_the_torch_path(kernel, t, tile_rows,
                                                                                       share_rows):
    idx, q, ref = _diffuse_image(t)
    mask = torch.rand(q.shape[:2], generator=torch.Generator().manual_seed(1)) < 0.8
    for max_err in (0.05, 0.01):
        maps, levels = [], []
        for compiled in (True, False):
            st = {}
            maps.append(dataclasses.replace(idx, compiled=compiled).relevance_image(
                q, mask, max_err, tile=4, tile_rows=tile_rows, share_rows=share_rows, stats=st))
            levels.append(st)
            err = (maps[-1] - ref).abs()[mask]
            assert err.max().item() <= max_err + 1e-4, (compiled, max_err, err.max().item(), st)
            assert bool((maps[-1][~mask] == 0).all())
        # the levels test bounds against max_err, so a pixel near the edge may leave at another level
        # on one path; its answer still holds, and everywhere else the two paths agree closely
        assert sum(levels[0].values()) == sum(levels[1].values()) == int(mask.sum())
        diff = (maps[0] - maps[1]).abs()[mask]
        assert (diff <= 1e-4).float().mean().item() >= 0.99, (diff.max().item(), levels)
        assert diff.max().item() <= 2 * max_err + 1e-4


def test_second_step_of_principal_directions_runs_and_the_answers_hold(kernel):
    # A diffuse bank of rank 128 > SPECTRAL_RANK: FIRST_RANK directions leave some pixels too loose at a
    # tight max_err, so all SPECTRAL_RANK run, the second pass adding only the other 80 to ‖e·P_k‖².
    idx, q, ref = _diffuse_image(1500, d=128, noise=0.002)
    assert idx._ranks() == [16, 96]
    widths = []
    original = idx._moments
    spy = dataclasses.replace(idx)
    spy._moments = lambda y, cols: widths.append(cols.shape[1]) or original(y, cols)
    for max_err in (0.02, 0.005):
        st = {}
        rel = spy.relevance_image(q, None, max_err, tile_rows=10**9, share_rows=10**9, stats=st)
        assert (rel - ref).abs().max().item() <= max_err + 1e-4, st
    assert widths.count(2 + 16) == 2 and widths.count(80) == 2, widths


def test_shared_level_leaders_take_the_second_step_only_where_a_bound_needs_it(kernel):
    # The same diffuse bank in smooth regions: leaders first take FIRST_RANK directions with the two
    # sharing columns (4 + 16), and only the leaders with a member still too loose take the other 80.
    idx, q, ref = _diffuse_image(1500, d=128, noise=0.002)
    widths, sizes = [], []
    original = idx._moments
    spy = dataclasses.replace(idx)
    spy._moments = lambda y, cols: widths.append(cols.shape[1]) or sizes.append(y.shape[0]) or original(y, cols)
    st = {}
    rel = spy.relevance_image(q, None, 0.02, tile_rows=10**9, share_rows=0, stats=st)
    assert (rel - ref).abs().max().item() <= 0.02 + 1e-4, st
    assert st["shared"] > 0 and widths[:2] == [4 + 16, 80], widths
    assert 0 < sizes[1] < sizes[0], sizes  # some leaders, not all, took the second step


def test_stale_or_missing_library_falls_back_to_torch(kernel, monkeypatch):
    idx, *_, g = _index(300)
    y = idx.unit(torch.randn(20, 16, generator=g))
    cols = torch.randn(300, 5, generator=g)
    ref = dataclasses.replace(idx, compiled=False)._moments(y, cols)
    monkeypatch.setattr(kernel, "_fn", None)
    monkeypatch.setattr(kernel, "_load_error", None)
    monkeypatch.setattr(build_ext, "relevance_source_hash", lambda: "0" * 64)
    assert not kernel.available() and "stale" in kernel.load_error()
    got = idx._moments(y, cols)
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=0)


def test_kernel_refuses_sizes_it_does_not_take(kernel):
    y = torch.rand(4, 200)  # more query dims than the kernel holds: None, and the caller falls back
    assert kernel.moments(y, torch.rand(10, 200), torch.rand(10, 3), False) is None
    got = kernel.moments(torch.rand(4, 16), torch.rand(10, 16), torch.rand(10, 3), False)
    assert math.isfinite(float(got[1].sum()))


@pytest.mark.parametrize("seed", range(6))
def test_kernel_leaders_match_the_torch_twin(kernel, seed):
    # Regions of 4x4 pixels with per-pixel noise near SHARE_RADIUS, odd sizes (partial blocks) and a
    # random mask: the kernel must pick the same leaders, in the same order, and join the same pixels.
    from m3_ros.memory.relevance import SHARE_RADIUS
    idx, *_, g = _index(50, seed=seed)
    H, W = int(torch.randint(5, 70, (1,), generator=g)), int(torch.randint(5, 70, (1,), generator=g))
    base = torch.randn(-(-H // 4), -(-W // 4), 16, generator=g)
    noise = [0.002, 0.01, 0.03][seed % 3]
    q = base.repeat_interleave(4, 0).repeat_interleave(4, 1)[:H, :W]
    y = idx.unit(q * (1 + noise * torch.randn(H, W, 16, generator=g)))
    free = torch.rand(H, W, generator=g) > 0.2
    lead, dist = dataclasses.replace(idx, compiled=True)._share_leaders(y, free)
    lead_ref, dist_ref = dataclasses.replace(idx, compiled=False)._share_leaders(y, free)
    joined = lead_ref >= 0
    assert 0 < int(joined.sum()) < int(free.sum())  # some pixels join, some do not
    assert not bool((lead_ref[~free.reshape(-1)] >= 0).any())
    # a distance within float32 rounding of the radius may fall either side of it (whichever side joined
    # records it); nothing else may differ
    edge = ((dist_ref - SHARE_RADIUS).abs() <= 1e-6) | ((dist - SHARE_RADIUS).abs() <= 1e-6)
    assert bool(((lead == lead_ref) | edge).all())
    torch.testing.assert_close(dist[lead == lead_ref], dist_ref[lead == lead_ref], rtol=1e-6, atol=1e-7)
