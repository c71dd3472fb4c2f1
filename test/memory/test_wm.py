"""W_m follows a growing bank: rows that arrive after the first keyframe stay reachable by the attention."""
import pytest
import torch

from m3_ros.memory.attention import attention_logits
from m3_ros.memory.gaussians import query_key
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot
from m3_ros.memory.wm import carry_queries, queries_for_rows, refit_wm, span_coverage
from m3_ros.types import FeatureMap
from synthetic_scene import render_view

D = 32


def _cfg(**kw) -> MemoryConfig:
    base = dict(models={"dino": ModelSlot(channels=8, theta=0.9, max_rows=100)}, voxel_size=0.02, seed_stride=1,
                train_scale=1.0, feature_points=200, backend="torch", seed=0)
    base.update(kw)
    return MemoryConfig(**base)


def _keyframe(tx: float, index: int, feature_seed: int):
    """The analytic scene seen from (tx, 0, 0), its three regions carrying features drawn with feature_seed."""
    kf, region = render_view(tx, index=index)
    g = torch.Generator().manual_seed(feature_seed)
    f = torch.randn(3, D, generator=g)[torch.from_numpy(region)]
    kf.features["dino"] = FeatureMap("dino", f.float(), region.shape)
    return kf


def _self_attention(mem: M3Memory) -> torch.Tensor:
    """[t] attention weight a row's own seeded query puts on that row."""
    b, W = mem.banks["dino"], mem.W["dino"].detach()
    q = queries_for_rows(W, b, torch.arange(len(b)))
    return torch.softmax(attention_logits(q, W, b.unit_rows, mem.cfg.tau), -1).diagonal()


def test_span_coverage_is_one_inside_and_zero_outside_the_row_space():
    W = torch.zeros(2, 4)
    W[0, 0], W[1, 1] = 3.0, 1.0
    rows = torch.eye(4)
    assert torch.allclose(span_coverage(W, rows), torch.tensor([1.0, 1.0, 0.0, 0.0]), atol=1e-6)


@pytest.mark.parametrize("refit", [True, False])
def test_rows_seen_later_stay_reachable_only_with_the_refit(refit):
    mem = M3Memory(_cfg(wm_refit_gain=0.05 if refit else 0.0))
    mem.add_keyframe(_keyframe(0.0, 0, feature_seed=1))
    assert len(mem.banks["dino"]) == 3  # W_m's first 3 rows are these rows' principal directions
    first = mem.decode("dino", mem.params[query_key("dino")].detach().clone())
    mem.add_keyframe(_keyframe(0.2, 1, feature_seed=2))  # three new rows, outside that span
    assert len(mem.banks["dino"]) == 6
    own = _self_attention(mem)
    if refit:
        # 6 rows fit in 8 channels: every row's seeded query decodes (almost only) to that row
        assert own.min() > 0.9, own
        # and the Gaussians of the first keyframe still decode what they decoded before the refit
        after = mem.decode("dino", mem.params[query_key("dino")].detach()[: first.shape[0]])
        cos = torch.nn.functional.cosine_similarity(first, after, dim=-1)
        assert cos.min() > 0.99, cos.min()
    else:
        # the failure the refit removes: the later rows' queries land on the first keyframe's rows
        assert own[3:].min() < 0.5, own


def test_refit_keeps_directions_and_carry_keeps_what_queries_point_at():
    g = torch.Generator().manual_seed(0)
    W_old = torch.randn(8, D, generator=g)

    class Bank:
        unit_rows = torch.nn.functional.normalize(torch.randn(5, D, generator=g), dim=-1)

    W_new = refit_wm(W_old, Bank)
    assert torch.allclose(span_coverage(W_new, Bank.unit_rows), torch.ones(5), atol=1e-5)
    assert torch.linalg.matrix_rank(W_new) == 8
    # a query whose q·W_old already lies in the new row space is carried over exactly
    target = Bank.unit_rows[:2] @ torch.linalg.pinv(W_old) @ W_old  # in W_old's space
    q_old = target @ torch.linalg.pinv(W_old)
    q_new = carry_queries(q_old, W_old, W_new)
    proj = (q_old @ W_old) @ torch.linalg.pinv(W_new) @ W_new
    assert torch.allclose(q_new @ W_new, proj, atol=1e-4)
