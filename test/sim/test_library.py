"""Object library and phrasings: every URDF loads at its recorded size, phrasings are held out, look-alikes exist."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pybullet as p
import pybullet_data
import pytest
from scipy.spatial.transform import Rotation

from m3_ros.sim.library import KINDS, load_library, load_phrasing_records, load_phrasings, referents
from m3_ros.sim.scene import ObjectConfig, load_scene


@pytest.fixture(scope="module")
def lib():
    return load_library()


def test_every_urdf_loads_at_its_recorded_size_and_offset(lib):
    c = p.connect(p.DIRECT)
    try:
        p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=c)
        for key, o in lib.items():
            q = Rotation.from_euler("xyz", o.rpy).as_quat().tolist()
            uid = p.loadURDF(o.urdf, [0, 0, 1], q, globalScaling=o.scale, physicsClientId=c)
            lo, hi = (np.asarray(v) for v in p.getAABB(uid, -1, physicsClientId=c))
            np.testing.assert_allclose(hi - lo, o.size, atol=3e-3, err_msg=f"{key} size")
            np.testing.assert_allclose((lo + hi) / 2 - [0, 0, 1], o.offset, atol=3e-3, err_msg=f"{key} offset")
            if o.graspable:
                # The 8 cm gripper closes across the narrower horizontal side.
                assert min(o.size[:2]) <= 0.08, f"{key} is {min(o.size[:2]):.3f} m across its narrow side"
            p.removeBody(uid, physicsClientId=c)
    finally:
        p.disconnect(c)


def test_library_has_look_alikes_that_only_colour_separates(lib):
    colours: dict[str, set[str]] = {}
    for o in lib.values():
        colours.setdefault(o.category, set()).add(o.colour)
    for cat in ("mug", "ball", "cube", "lego brick"):
        assert len(colours[cat]) >= 3, f"{cat}: {colours[cat]}"
    assert len({o.model for o in lib.values()}) >= 10
    for o in lib.values():
        assert o.description and len(o.synonyms) >= 2 and "{" not in o.description


def _norm(s: str) -> str:
    return re.sub(r"^(a|an|the|my)\s+", "", s.strip().lower())


def test_phrasings_four_per_object_per_split_disjoint_and_not_the_labels(lib):
    dev, test = load_phrasings("dev"), load_phrasings("test")
    assert set(dev) == set(test) == set(lib)
    recs = load_phrasing_records("all")
    for key in lib:
        assert len(dev[key]) >= 4 and len(test[key]) >= 4
        assert not set(dev[key]) & set(test[key])
        for split in ("dev", "test"):
            assert {r.kind for r in recs[key] if r.split == split} == set(KINDS), (key, split)
        labels = {_norm(lib[key].description)} | {_norm(s) for s in lib[key].synonyms}
        for r in recs[key]:
            assert _norm(r.text) not in labels, f"{key}: query {r.text!r} is a detector label"
            assert "{" not in r.text
            if "colour" in r.uses:
                assert lib[key].colour in r.text, r
    # Held out across the whole library too: no test text is ever a dev text.
    assert not {t for v in dev.values() for t in v} & {t for v in test.values() for t in v}
    assert load_phrasings("dev") == dev  # deterministic
    with pytest.raises(ValueError, match="split"):
        load_phrasings("train")


def test_referents_flag_ambiguous_queries(lib):
    scene = [("mug_red", "mug_red"), ("mug_blue", "mug_blue"), ("ball_red", "ball_red"),
             ("soccerball", "soccerball"), ("duck", "duck"), ("table", "")]
    recs = {k: {r.text: r for r in v} for k, v in load_phrasing_records("all").items()}
    assert referents(recs["mug_red"]["the mug"], "mug_red", scene, lib) == ["mug_red", "mug_blue"]
    assert referents(recs["mug_red"]["the red mug"], "mug_red", scene, lib) == ["mug_red"]
    assert referents(recs["ball_red"]["the ball"], "ball_red", scene, lib) == ["ball_red", "soccerball"]
    assert referents(recs["ball_red"]["the red ball"], "ball_red", scene, lib) == ["ball_red"]
    assert referents(recs["soccerball"]["the soccer ball"], "soccerball", scene, lib) == ["soccerball"]
    assert referents(recs["duck"]["the duck"], "duck", scene, lib) == ["duck"]


@pytest.mark.parametrize("key", ["teddy_brown", "domino", "mug_red"])
def test_hardest_library_objects_are_lifted_by_a_top_down_grasp(lib, key):
    """Teddy (resting pose), flat domino and the handled mug: the least obvious grasps."""
    from m3_ros.sim import SimWorld
    o = lib[key]
    sc = load_scene("default")
    top = sc.table.top_height
    obj = ObjectConfig(name="obj", urdf=o.urdf, xyz=(0.0, -0.15, top + o.base_height + 0.003), rpy=o.rpy,
                       scale=o.scale, colour=o.rgba, mass=o.mass, library=key, category=o.category)
    sc = dataclasses.replace(sc, objects=[obj], randomize=dataclasses.replace(sc.randomize, optional=[]))
    with SimWorld(sc, renderer="tiny") as w:
        w.teleport_base(sc.walk.final)
        w.advance(0.2)
        out = w.execute_grasp(w.top_down_grasp_pose("obj"))
    assert out.success and out.object == "obj", out.message
