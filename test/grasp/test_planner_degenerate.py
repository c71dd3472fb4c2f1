"""The planner never returns a non-finite pose: too few points at the target is a clear failure."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from m3_ros.grasp import GraspConfig, plan_grasp


def table(support_z, half=0.3, step=0.01):
    g = np.arange(-half, half + 1e-9, step)
    xx, yy = np.meshgrid(g, g)
    return np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, support_z)], axis=1)


def test_a_few_points_on_the_table_are_too_few_to_grasp():
    speck = np.array([[0.0, 0.0, 0.43], [0.004, 0.0, 0.432], [0.0, 0.004, 0.431]])  # 3 points, one blob
    with pytest.raises(ValueError, match="too few to plan a grasp"):
        plan_grasp(np.array([0.0, 0.0, 0.43]), np.concatenate([table(0.4), speck]))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), seed=st.integers(0, 10_000), spread=st.floats(1e-4, 0.2))
def test_random_sparse_clouds_plan_finitely_or_fail_clearly(n, seed, spread):
    rng = np.random.default_rng(seed)
    blob = rng.normal([0.0, 0.0, 0.45], spread, size=(n, 3))
    pts = np.concatenate([table(0.4, step=0.02), blob])
    try:
        plan = plan_grasp(np.array([0.0, 0.0, 0.45]), pts, GraspConfig())
    except ValueError as e:
        assert str(e)
        return
    assert np.all(np.isfinite(plan.T_world_tcp)) and np.isfinite(plan.width)
    R = plan.T_world_tcp[:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-6)
