"""Issue 11's moved-object scenario in the simulator: the memory learns the default scene, the duck
is put elsewhere on the table through pybullet, the robot walks on, and "yellow bath duck" answers
the new place while the old place answers no more (free-space evidence, m3_ros/memory/freespace.py).

A real MemoryPipeline (MiniLM over the oracle detector's labels, ICP refinement on) fed by SimWorld
frames exactly as bench/bench_query.py and m3_ros/eval/suite.py drive it; ideal sensors, so the
check is about the memory, not about noise.
"""

import numpy as np
import pybullet as p
import pytest

from m3_ros.eval.suite import offer_and_wait, to_world
from m3_ros.pipeline import MemoryPipeline, PipelineConfig
from m3_ros.sim.world import SimWorld

NEW_XY = np.array([0.30, -0.20])  # free table top, 30 cm from the duck, in view at the walk's end
QUERY = "yellow bath duck"


@pytest.fixture(scope="module")
def models():
    from m3_ros.foundation import FoundationConfig, load_models
    m = load_models(FoundationConfig(models=["minilm_labels"]))
    if "minilm_labels" not in m:
        pytest.fail("MiniLM weights are not installed: run scripts/setup.sh (a broken setup, not a reason to skip)")
    return m


def _feed(pipe: MemoryPipeline, world: SimWorld, steps: int = 2) -> None:
    f = world.render()
    if f.dropped:
        return
    offer_and_wait(pipe, world, f)  # every run holds the same keyframes, whatever the load
    pipe.train_for(3600.0, max_steps=steps)


def _opaque_in_box(pipe: MemoryPipeline, world: SimWorld, centre: np.ndarray, size: np.ndarray, floor: float) -> int:
    """Gaussians that grounding considers (opacity >= 0.2) inside a box, above floor (world z)."""
    mem = pipe.memory
    m = to_world(world, pipe, mem.means.numpy())
    inside = np.all(np.abs(m - centre) <= size / 2, axis=1) & (m[:, 2] > floor)
    return int(np.count_nonzero(inside & (mem.opacities.numpy() >= 0.2)))


@pytest.fixture(scope="module")
def moved(models):
    """Walk 60 % of the lap, move the duck 30 cm through pybullet, walk the rest; what the memory answers."""
    pipe = MemoryPipeline(PipelineConfig(models=["minilm_labels"]), models=models)
    pipe.load()
    assert pipe.memory.cfg.freespace.enabled  # the default
    out = {}
    try:
        with SimWorld("default", seed=0, sensors="ideal") as world:
            world.advance(0.0)
            tb = world.object_state("table")
            top = float(tb.aabb_center[2] + tb.aabb_size[2] / 2)
            while world._walk_s < 0.6 * world.walk_length:  # the first 60 % of the lap around the table
                world.advance(0.25)
                _feed(pipe, world)
            pipe.train_for(3600.0, max_steps=50)
            before = world.object_state("duck")
            old = before.aabb_center.copy()
            out["before_answer"] = to_world(world, pipe, pipe.ground(QUERY).points[0])[0]
            # the duck's body: more than 3 cm above the table (free-space margins are ~5-9 cm along a grazing ray)
            out["before_old_gaussians"] = _opaque_in_box(pipe, world, old, before.aabb_size, top + 0.03)

            uid = next(b.uid for b in world.bodies if b.name == "duck")
            pos, quat = p.getBasePositionAndOrientation(uid, physicsClientId=world.client)
            p.resetBasePositionAndOrientation(uid, [pos[0] + NEW_XY[0] - old[0], pos[1] + NEW_XY[1] - old[1], pos[2] + 0.01],
                                              quat, physicsClientId=world.client)
            while not world.walk_done:  # the rest of the lap, ending at the table's south edge
                world.advance(0.25)
                _feed(pipe, world)
            pipe.train_for(3600.0, max_steps=20)
            after = world.object_state("duck")
            res = pipe.ground(QUERY, top_k=5)
            out.update(old=old, new=after.aabb_center.copy(), answers=to_world(world, pipe, res.points),
                       old_gaussians=_opaque_in_box(pipe, world, old, before.aabb_size, top + 0.03),
                       new_gaussians=_opaque_in_box(pipe, world, after.aabb_center, after.aabb_size, top + 0.03))
    finally:
        pipe.close()
    return out


def test_moved_duck_answers_at_its_new_place_and_leaves_the_old_one(moved):
    old, new = moved["old"], moved["new"]
    assert np.linalg.norm(moved["before_answer"] - old) < 0.05, "the memory finds the duck before it moves"
    assert moved["before_old_gaussians"] > 50
    assert np.linalg.norm(new[:2] - old[:2]) > 0.25  # it did move (and stays on the table)
    assert np.linalg.norm(moved["answers"][0] - new) < 0.05, (moved["answers"], new)
    # the old duck's body is gone from the memory (nothing grounding reads, opacity >= 0.2); the new one is in it
    assert moved["old_gaussians"] <= 5, moved["old_gaussians"]
    assert moved["new_gaussians"] > 20  # seeded from the few keyframes since it moved


# Was xfail (open, failing 3 of 4 runs): Gaussians 1.6-2.3 cm above the table top where the duck stood kept
# its label and answered. They most likely came from keyframes ICP had pulled off their exact pose (new surfaces next to
# old planes, IcpConfig.consensus_sigmas); since that fix it passed 4 of 4 (CI and one beside a CPU burner
# included), and it fails again on the old tracker (2 of 2).
def test_no_region_answers_at_the_old_place(moved):
    assert np.min(np.linalg.norm(moved["answers"] - moved["old"], axis=1)) > 0.05, moved["answers"]
