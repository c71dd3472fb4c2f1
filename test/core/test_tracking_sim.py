"""ICP on the simulator's default table walk: exact depth and exact odometry must stay exact.

The keyframe times are those of a loaded demo run (CI's intermittent test_loop failure): the
second keyframe came 2.75 s after the first, so a quarter of its points lay on surfaces the map
had never seen (the table's edge face, new sides of objects) next to old ones. Matched to the
nearest old plane, those points pulled the camera 4.6 cm / 3.5 deg off, and later keyframes
carried the error. Each keyframe pose must stay within 1 cm and 0.5 deg of the truth.
"""
import numpy as np
from scipy.spatial.transform import Rotation

from m3_ros.sim.sensors import SensorConfig
from m3_ros.sim.world import SimWorld
from m3_ros.tracking import DriftTracker

STAMPS = (1.0, 2.0, 4.75, 5.5, 6.0, 6.5)


def test_sparse_keyframes_with_exact_sensors_stay_exact():
    tr = DriftTracker()
    errors, positions = [], []
    with SimWorld("default", seed=0, sensors=SensorConfig.resolve("ideal")) as world:
        for stamp in STAMPS:
            while world.time + 1e-6 < stamp:
                world.advance(0.05)
            f = world.render()
            T, res = tr.track(f.depth, f.K, f.T_odom_cam)
            cm = 100 * float(np.linalg.norm(T[:3, 3] - f.T_world_cam[:3, 3]))
            deg = float(np.degrees(Rotation.from_matrix(T[:3, :3].T @ f.T_world_cam[:3, :3]).magnitude()))
            errors.append((stamp, round(cm, 2), round(deg, 2), res.reason))
            positions.append(f.T_world_cam[:3, 3])
    assert all(cm <= 1.0 and deg <= 0.5 for _, cm, deg, _ in errors), errors
    # the sparse pair is a real change of view (the case that failed), not the same picture again
    assert np.linalg.norm(positions[2] - positions[1]) > 0.3
