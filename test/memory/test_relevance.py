"""Relevance maps without decoding: every pixel within max_err of full decoding, at every level."""
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from m3_ros.memory.attention import decode_chunked
from m3_ros.memory.relevance import SHARE_RADIUS, RelevanceIndex, _blocks, _bounded, _unblocks

LEVELS = ("level1", "shared", "level2", "level3")


def _image_setup(t, d=64, l=16, H=30, W=44, seed=0, block=4, noise=0.02, separated=True):
    """A rendered query image [H, W, l] of block x block regions, each pointing at one bank row.

    separated: rows mostly inside W_m's row space, so attention is peaked (a trained memory);
    otherwise rows are random in d dims and attention spreads over many of them.
    """
    g = torch.Generator().manual_seed(seed)
    if separated:
        basis = torch.randn(l, d, generator=g)
        rows = torch.randn(t, l, generator=g) @ basis + 0.2 * torch.randn(t, d, generator=g)
        Wm = torch.randn(l, l, generator=g) @ basis
    else:
        rows = torch.randn(t, d, generator=g) + 0.5 * torch.randn(d, generator=g)
        Wm = torch.randn(l, d, generator=g)
    unit = F.normalize(rows, dim=-1)
    target = unit[torch.randint(0, t, (-(-H // block), -(-W // block)), generator=g)]
    q = torch.linalg.lstsq(Wm.T, target.reshape(-1, d).T).solution.T.reshape(*target.shape[:2], l)
    q = q.repeat_interleave(block, 0).repeat_interleave(block, 1)[:H, :W]
    q = q * (1 + noise * torch.randn(q.shape, generator=g))
    text = torch.randn(d, generator=g)
    ref = F.cosine_similarity(decode_chunked(q.reshape(-1, l), Wm, rows, unit, 0.05), text[None], dim=-1)
    return RelevanceIndex.build(Wm, rows, unit, text, 0.05), q, ref.view(H, W)


def _check(idx, q, ref, mask, max_err, **kw) -> dict:
    """Asserts the map's guarantee on every pixel of mask (0 outside it); returns the level counts."""
    stats = {}
    rel = idx.relevance_image(q, mask, max_err, stats=stats, **kw)
    m = torch.ones(q.shape[:2], dtype=torch.bool) if mask is None else mask
    err = (rel - ref).abs()[m]
    assert err.max().item() <= max_err + 1e-4, (kw, max_err, err.max().item(), stats)
    assert bool((rel[~m] == 0).all()) and sum(stats.values()) == int(m.sum())
    return stats


def test_relevance_image_within_its_bound_of_full_decoding_at_every_level():
    for t, separated, tile_rows, share_rows in ((20, True, 10**9, 10**9), (300, True, 10**9, 10**9),
                                                (300, True, 0, 10**9), (2000, True, 0, 0), (300, False, 10**9, 0),
                                                (300, False, 0, 0), (300, False, 10**9, 10**9)):
        idx, q, ref = _image_setup(t, separated=separated)
        for max_err in (0.2, 0.05, 0.005):
            _check(idx, q, ref, None, max_err, tile=4, tile_rows=tile_rows, share_rows=share_rows)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), separated=st.booleans(), max_err=st.sampled_from([0.1, 0.03, 0.01]),
       noise=st.sampled_from([0.0, 0.005, 0.05]), H=st.integers(5, 37), W=st.integers(5, 37))
def test_relevance_bound_holds_on_random_images_and_masks(seed, separated, max_err, noise, H, W):
    # Odd sizes put pixels in partial blocks at the right and bottom edges; a random mask leaves
    # holes inside blocks and whole empty blocks; every level is forced to run.
    idx, q, ref = _image_setup(600, H=H, W=W, seed=seed, noise=noise, separated=separated, block=3)
    mask = torch.rand(H, W, generator=torch.Generator().manual_seed(seed)) < 0.7
    for tile_rows, share_rows in ((0, 0), (10**9, 0), (10**9, 10**9)):
        _check(idx, q, ref, mask, max_err, tile=4, tile_rows=tile_rows, share_rows=share_rows)


def test_shared_level_answers_smooth_regions_within_the_bound():
    # Diffuse attention (level 1 cannot hold it): pixels of a region take a leader's weights.
    idx, q, ref = _image_setup(2000, separated=False, noise=0.001, H=40, W=50, block=10)
    st_ = _check(idx, q, ref, None, 0.05, share_rows=0)
    assert st_["shared"] > 0.5 * q.shape[0] * q.shape[1], st_
    # The same image with noise far past SHARE_RADIUS: nothing is shared, the answers still hold.
    idx, q, ref = _image_setup(2000, separated=False, noise=0.5, H=40, W=50, block=10)
    st_ = _check(idx, q, ref, None, 0.05, share_rows=0)
    assert st_["shared"] < 0.05 * q.shape[0] * q.shape[1], st_


def test_relevance_levels_carry_what_they_should():
    # Peaked attention: level 1 (blocks) answers the pixels when asked to run.
    idx, q, ref = _image_setup(300, noise=0.0)
    assert _check(idx, q, ref, None, 0.05, tile=4, tile_rows=0)["level1"] == q.shape[0] * q.shape[1]
    # A bank the spectral directions cover (rank 20) is exact at level 2.
    idx, q, ref = _image_setup(20)
    stats = {}
    rel = idx.relevance_image(q, None, 1e-3, stats=stats)
    assert stats["level2"] == q.shape[0] * q.shape[1] and float(idx.sigma2[-1]) < 1e-3 * idx.P.norm() ** 2
    torch.testing.assert_close(rel, ref, rtol=1e-4, atol=1e-4)
    # Diffuse attention over a bank of higher rank than SPECTRAL_RANK asked for a tight answer: the
    # spectral bound is too loose for some pixels, which are decoded (level 3), and the answer holds.
    idx, q, ref = _image_setup(300, d=256, separated=False)
    assert idx.P.shape[1] < 256 and _check(idx, q, ref, None, 0.001, share_rows=10**9)["level3"] > 0


def test_relevance_image_mask_and_empty_bank():
    idx, q, ref = _image_setup(300)
    mask = torch.zeros(q.shape[:2], dtype=torch.bool)
    mask[5:20, 10:30] = True
    _check(idx, q, ref, mask, 0.05)
    empty = RelevanceIndex.build(torch.randn(16, 64), torch.zeros(0, 64), torch.zeros(0, 64), torch.randn(64), 0.05)
    assert bool((empty.relevance_image(q) == 0).all())


@settings(max_examples=50, deadline=None)
@given(n=st.floats(-5, 5), f=st.floats(1.5, 10), lo=st.floats(0, 1), hi=st.floats(0, 1), en=st.floats(0, 1),
       ef=st.floats(0, 0.4), u=st.floats(0, 1), v=st.floats(0, 1))
def test_bounded_covers_every_ratio_in_the_box(n, f, lo, hi, en, ef, u, v):
    # any n' in n ± en and f' in [f - lo - ef, f + hi + ef] gives n'/f' (clamped) within the half-width
    lo_, hi_ = torch.tensor([f - lo]), torch.tensor([f + hi])
    est, err = _bounded(torch.tensor([n]), lo_, hi_, torch.tensor([en]), torch.tensor([ef]))
    n2 = n - en + 2 * en * u
    f2 = (f - lo - ef) + (hi + lo + 2 * ef) * v
    assert abs(max(-1.0, min(1.0, n2 / f2)) - float(est)) <= float(err) + 1e-6


def test_blocks_round_trip_at_odd_sizes():
    x = torch.arange(7 * 9).view(7, 9)
    for tile in (1, 4, 16):
        b = _blocks(x, tile, -1)
        assert b.shape[1] == tile * tile and int((b >= 0).sum()) == 63
        assert torch.equal(_unblocks(b, 7, 9), x.reshape(-1))


def test_shared_bound_is_tight_where_weights_move_most():
    # Two rows with b = e1, e2 and the text on row 1: relevance = e1 / ‖(e1, e2)‖ turns fastest at
    # 45°, where every row's weight moves by nearly the factor the bound allows. A bound a few
    # times too narrow shares pixels that are off by more than max_err.
    rows = torch.eye(2)
    idx = RelevanceIndex.build(torch.eye(2), rows, rows, torch.tensor([1.0, 0.0]), 0.05)
    theta = torch.pi / 4 + SHARE_RADIUS * torch.linspace(-1.0, 1.0, 9)
    q = torch.stack([theta.cos(), theta.sin()], -1).view(1, 9, 2)
    ref = (theta.cos() / 0.05).exp() / ((2 * theta.cos() / 0.05).exp() + (2 * theta.sin() / 0.05).exp()).sqrt()
    shared = 0
    for max_err in torch.linspace(0.02, 0.4, 20).tolist():
        shared += _check(idx, q, ref.view(1, 9), None, max_err, share_rows=0)["shared"]
    assert shared > 0
