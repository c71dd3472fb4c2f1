"""The queries of one scene: every object's phrasings of a split, with the objects each could mean."""
from __future__ import annotations

from dataclasses import dataclass

from m3_ros.sim.library import load_library, load_phrasing_records, referents
from m3_ros.sim.scene import SceneConfig


@dataclass
class Query:
    """One phrasing asked in one scene."""

    text: str
    """What the person says."""
    targets: list[str]
    """Scene objects it could mean; the first is the object it was written for. An answer on
    any of them counts (a person asking for "the mug" with two mugs present accepts either)."""
    kind: str
    """category / attribute / function / colloquial."""

    @property
    def ambiguous(self) -> bool:
        return len(self.targets) > 1

    @property
    def absent(self) -> bool:
        """No scene object fits it (absent_queries): the right answer is a refusal."""
        return not self.targets


def scene_queries(scene: SceneConfig, split: str) -> list[Query]:
    """Every phrasing of ``split`` for every library object of the scene, in scene order."""
    lib = load_library()
    recs = load_phrasing_records(split)
    keys = [(o.name, o.library) for o in scene.objects]
    out = []
    for o in scene.objects:
        if not o.library or o.library not in recs:
            continue
        for ph in recs[o.library]:
            others = [n for n in referents(ph, o.library, keys, lib) if n != o.name]
            out.append(Query(ph.text, [o.name, *others], ph.kind))
    return out


def absent_queries(scene: SceneConfig, split: str, limit: int | None = None) -> list[Query]:
    """Phrasings of ``split`` written for library objects the scene does not hold and that fit none
    of its objects (``referents`` is empty): a memory that answers them points at something that
    is not there. Targets are empty; library order; with ``limit``, at most that many, evenly spaced
    over that order."""
    lib = load_library()
    recs = load_phrasing_records(split)
    keys = [(o.name, o.library) for o in scene.objects]
    present = {o.library for o in scene.objects}
    out = []
    for key, phrasings in recs.items():
        if key in present or key not in lib:
            continue
        out += [Query(ph.text, [], ph.kind) for ph in phrasings if not referents(ph, key, keys, lib)]
    if limit is not None:
        out = out[:: max(1, -(-len(out) // limit))][:limit] if limit > 0 else []
    return out
