"""Grasp planning from surface points: top-down on a small box, from the side on a tall one."""
import numpy as np
import pytest

from m3_ros.grasp import GraspConfig, plan_grasp


def box_surface(centre_xy, size, support_z, step=0.005):
    """Points on the top and sides of an axis-aligned box standing on z = support_z."""
    sx, sy, sz = size
    xs = np.arange(-sx / 2, sx / 2 + 1e-9, step)
    ys = np.arange(-sy / 2, sy / 2 + 1e-9, step)
    zs = np.arange(0, sz + 1e-9, step)
    top = np.array([[x, y, sz] for x in xs for y in ys])
    sides = [np.array([[x, y, z] for x in xs for z in zs]) for y in (-sy / 2, sy / 2)]
    sides += [np.array([[x, y, z] for y in ys for z in zs]) for x in (-sx / 2, sx / 2)]
    pts = np.concatenate([top, *sides])
    return pts + np.array([centre_xy[0], centre_xy[1], support_z])


def table(support_z, half=0.3, step=0.01):
    g = np.arange(-half, half, step)
    return np.array([[x, y, support_z] for x in g for y in g])


def test_small_box_top_down_across_its_narrow_side():
    pts = np.concatenate([table(0.4), box_surface((0.05, -0.02), (0.04, 0.09, 0.06), 0.4)])
    plan = plan_grasp(np.array([0.05, -0.02, 0.43]), pts)
    assert plan.approach == "top_down"
    T = plan.T_world_tcp
    assert np.allclose(T[:3, 2], [0, 0, -1], atol=1e-6)            # approach straight down
    assert abs(T[:3, 1] @ [1, 0, 0]) > 0.95                         # fingers close along x, the 4 cm side
    assert np.linalg.norm(T[:2, 3] - [0.05, -0.02]) < 0.01
    assert 0.4 + 0.012 <= T[2, 3] <= 0.46
    assert 0.04 < plan.width <= 0.08
    assert abs(plan.support_z - 0.4) < 0.005 and abs(plan.top_z - 0.46) < 0.01
    assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)


def test_box_near_the_table_edge_stands_on_the_table_not_the_floor():
    # table top at 0.4 spans y in [-0.3, 0.3]; floor points beyond its edge also fall in the ring
    floor = np.array([[x, y, 0.0] for x in np.arange(-0.3, 0.3, 0.01) for y in np.arange(-0.6, -0.3, 0.01)])
    pts = np.concatenate([table(0.4), floor, box_surface((0.0, -0.26), (0.04, 0.06, 0.06), 0.4)])
    plan = plan_grasp(np.array([0.0, -0.26, 0.43]), pts)
    assert abs(plan.support_z - 0.4) < 0.01
    assert plan.approach == "top_down"
    assert np.linalg.norm(plan.T_world_tcp[:2, 3] - [0.0, -0.26]) < 0.015


def test_a_low_plate_touching_the_object_does_not_pull_the_grasp_off_it():
    """A tray's base 1.4 cm above the table touches the object's foot: the connected blob takes the
    plate in, but the grasp is centred on the object (CI, 2026-12-06: the duck beside the tray, planned
    2.8 cm off towards the tray, and the gripper closed on nothing)."""
    g = np.arange(-0.03, 0.03 + 1e-9, 0.005)  # a strip: the table still holds most of the support ring
    plate = np.array([[x, y, 0.414] for x in g for y in np.arange(-0.095, -0.04, 0.005)])
    pts = np.concatenate([table(0.4), plate, box_surface((0.0, 0.0), (0.06, 0.06, 0.07), 0.4)])
    plan = plan_grasp(np.array([0.0, 0.0, 0.43]), pts)
    assert plan.approach == "top_down"
    assert np.linalg.norm(plan.T_world_tcp[:2, 3] - [0.0, 0.0]) < 0.01, plan.T_world_tcp[:3, 3]
    assert plan.width <= 0.06 + GraspConfig().width_margin + 0.005


def test_tall_box_from_the_side_facing_away_from_the_robot():
    pts = np.concatenate([table(0.4), box_surface((0.0, 0.1), (0.05, 0.05, 0.25), 0.4)])
    plan = plan_grasp(np.array([0.0, 0.1, 0.5]), pts, viewpoint=np.array([0.0, -0.6, 0.3]))
    assert plan.approach == "side"
    assert np.allclose(plan.T_world_tcp[:3, 2], [0, 1, 0], atol=0.05)  # from the robot towards the object
    assert abs(plan.T_world_tcp[2, 3] - (0.4 + 0.125)) < 0.02


def test_object_wider_than_the_gripper_scores_low():
    pts = np.concatenate([table(0.4), box_surface((0, 0), (0.12, 0.14, 0.05), 0.4)])
    plan = plan_grasp(np.array([0, 0, 0.45]), pts, GraspConfig(radius=0.12))
    assert plan.width == pytest.approx(0.08)
    assert plan.score < 0.5


def test_errors():
    with pytest.raises(ValueError, match="memory points within"):
        plan_grasp(np.array([5.0, 5.0, 0.4]), table(0.4))
    with pytest.raises(ValueError, match="nothing stands above"):
        plan_grasp(np.array([0.0, 0.0, 0.4]), table(0.4))
    with pytest.raises(ValueError, match="not finite"):
        plan_grasp(np.array([np.nan, 0.0, 0.4]), table(0.4))
