"""grounding.live.step_back_to_see against the simulator's own camera: where the head camera cannot see
a floor object from its grasp pose, the step it proposes brings the object into the rendered frame."""
import numpy as np

from m3_ros.grounding.live import LiveConfig, step_back_to_see
from m3_ros.sim.generate import resolve_scene
from m3_ros.sim.world import SimWorld

MIN_PX = 50  # the object fills this many pixels of the frame at least (a 6 cm ball at 0.5 m: ~600)


def _px(world: SimWorld, name: str) -> int:
    return int(np.count_nonzero(world.render().segmentation == world.object_state(name).segmentation_id))


def test_a_floor_object_out_of_view_at_its_grasp_pose_is_in_view_after_the_step_back():
    scene = resolve_scene("room", 1)
    floor = [o for o in scene.objects if o.fixture == "floor" and o.reachable and o.grasp_base is not None]
    assert len(floor) >= 2, "the room family puts objects on the floor"
    cam = scene.camera
    unseen = 0
    with SimWorld(scene, seed=1) as w:
        w.advance(0.0)
        for o in floor:
            w.teleport_base(o.grasp_base)
            centre = w.object_state(o.name).aabb_center
            # the truth in world coordinates stands in for the memory's answer (T_map_base = T_world_base)
            s = step_back_to_see(centre, w.T_world_base, w.T_base_cam, w.K, (cam.width, cam.height))
            assert s is not None and 0.0 <= s <= LiveConfig().step_back_m, o.name
            if s == 0.0:
                assert _px(w, o.name) >= MIN_PX, f"{o.name}: said to be in view, but it is not"
                continue
            unseen += 1
            assert _px(w, o.name) < MIN_PX, f"{o.name}: already in view, no step needed"
            x, y, yaw = o.grasp_base
            w.teleport_base((x - s * np.cos(yaw), y - s * np.sin(yaw), yaw))
            assert _px(w, o.name) >= MIN_PX, f"{o.name}: still out of view {s} m back"
    assert unseen >= 1, "at least one floor object is below the frame at its grasp pose (why the step exists)"


def test_a_table_point_needs_no_step_and_unreachable_points_none():
    with SimWorld("default", seed=0) as w:
        T_base = np.eye(4)
        T_base[2, 3] = 0.3
        args = (T_base, w.T_base_cam, w.K, (w.scene.camera.width, w.scene.camera.height))
        assert step_back_to_see(np.array([0.6, 0.0, 0.45]), *args) == 0.0  # a table top ahead
        assert step_back_to_see(np.array([-1.0, 0.0, 0.4]), *args) is None  # behind the robot
        assert step_back_to_see(np.array([5.0, 0.0, 0.0]), *args) is None  # beyond max_depth
        assert step_back_to_see(np.array([0.6, 0.0, np.nan]), *args) is None
