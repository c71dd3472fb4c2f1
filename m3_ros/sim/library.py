"""The object library (``config/objects.yaml``) and the query phrasings (``config/phrasings.yaml``).

No pybullet here: the generator and the evaluation read it without a simulator.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
KINDS = ("category", "attribute", "function", "colloquial")
_DEFAULT_USES = {"category": ("category",), "attribute": ("category", "colour"),
                 "function": ("category",), "colloquial": ("category",)}
_ATTRIBUTES = ("category", "model", "colour")


@dataclass(frozen=True)
class LibraryObject:
    """One library object: a model (URDF at a scale) in one colour."""

    key: str
    """Library key, ``<model>_<colour>`` or ``<model>`` for a single-variant model."""
    model: str
    """Model name in objects.yaml, e.g. ``mug``."""
    urdf: str
    """URDF path inside pybullet_data."""
    scale: float
    """pybullet globalScaling."""
    rpy: tuple[float, float, float]
    """Upright orientation (roll, pitch, yaw) before any yaw about world z, radians."""
    mass: float | None
    """Mass in kg replacing the URDF's; None keeps it (0 in the URDF: a static body)."""
    category: str
    """What a person calls it, e.g. ``mug``; look-alikes share it."""
    colour: str
    """Colour word of this variant, e.g. ``red``."""
    rgba: tuple[float, float, float, float] | None
    """Visual colour override; None keeps the URDF's colour and texture."""
    description: str
    """A labeller's description, e.g. ``a red ceramic mug``."""
    synonyms: tuple[str, ...]
    """Other labels a labeller might give (never a query phrasing)."""
    size: tuple[float, float, float]
    """AABB extent (x, y, z) in metres when upright at yaw 0."""
    offset: tuple[float, float, float]
    """AABB centre minus the base-frame origin, metres, same pose."""
    graspable: bool = True
    """Whether a top-down grasp with an 8 cm gripper can lift it."""
    static: bool = False
    """A static body (the URDF's mass is 0 and ``mass`` is None): placed exactly, never moves."""

    @property
    def footprint_radius(self) -> float:
        """Radius of a circle around the AABB centre that holds the object at any yaw, metres."""
        return 0.5 * float(np.hypot(self.size[0], self.size[1]))

    @property
    def base_height(self) -> float:
        """Height of the base frame above the object's lowest point when upright, metres."""
        return 0.5 * self.size[2] - self.offset[2]


@dataclass(frozen=True)
class Phrasing:
    """One query as a person would ask for an object, and what it relies on to pick it out."""

    text: str
    """The query, e.g. ``the red mug``."""
    kind: Literal["category", "attribute", "function", "colloquial"]
    """Which kind of phrasing it is."""
    uses: tuple[str, ...]
    """Attributes of its object the query relies on, a subset of (category, model, colour)."""
    split: Literal["dev", "test"] = "dev"
    """dev: tune on; test: report only."""


def _floats(v: object, n: int, what: str) -> tuple[float, ...]:
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    if arr.shape[0] != n or not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be {n} finite numbers, got {v!r}")
    return tuple(float(x) for x in arr)


def library_key(model: str, colour: str, n_variants: int) -> str:
    """Library key of a model's colour variant (``mug_red``; ``duck`` when it has one variant)."""
    return model if n_variants == 1 else f"{model}_{colour}"


@lru_cache(maxsize=4)
def _load_library(path: str) -> dict[str, LibraryObject]:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    out: dict[str, LibraryObject] = {}
    for model, m in raw.items():
        variants = m.get("variants") or {}
        if not variants:
            raise ValueError(f"objects.yaml: model {model!r} has no colour variants")
        for colour, rgba in variants.items():
            key = library_key(model, str(colour), len(variants))
            out[key] = LibraryObject(
                key=key, model=str(model), urdf=str(m["urdf"]), scale=float(m["scale"]),
                rpy=_floats(m.get("rpy", (0, 0, 0)), 3, f"{model}.rpy"),
                mass=None if m.get("mass") is None else float(m["mass"]),
                category=str(m["category"]), colour=str(colour),
                rgba=None if rgba is None else _floats(rgba, 4, f"{model}.variants.{colour}"),
                description=str(m["description"]).format(colour=colour),
                synonyms=tuple(str(s).format(colour=colour) for s in m.get("synonyms", [])),
                size=_floats(m["size"], 3, f"{model}.size"),
                offset=_floats(m.get("offset", (0, 0, 0)), 3, f"{model}.offset"),
                graspable=bool(m.get("graspable", True)), static=bool(m.get("static", False)))
    return out


def load_library(path: str | Path | None = None) -> dict[str, LibraryObject]:
    """Every library object by key, from ``config/objects.yaml`` (or ``path``)."""
    return dict(_load_library(str(path or CONFIG_DIR / "objects.yaml")))


@lru_cache(maxsize=4)
def _load_phrasings(path: str, library_path: str) -> dict[str, tuple[Phrasing, ...]]:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    lib = _load_library(library_path)
    models = {o.model for o in lib.values()}
    unknown = set(raw) - models
    if unknown:
        raise ValueError(f"phrasings.yaml names models not in the library: {sorted(unknown)}")
    out: dict[str, tuple[Phrasing, ...]] = {}
    for obj in lib.values():
        entry = raw.get(obj.model)
        if entry is None:
            raise ValueError(f"phrasings.yaml has no phrasings for model {obj.model!r}")
        rows = []
        for kind in KINDS:
            texts = entry.get(kind) or []
            if len(texts) != 2:
                raise ValueError(f"phrasings.yaml: {obj.model}.{kind} must list exactly 2 "
                                 f"phrasings (1 dev, 1 test), got {len(texts)}")
            for i, t in enumerate(texts):
                text, uses = (t["text"], tuple(t["uses"])) if isinstance(t, dict) else (t, _DEFAULT_USES[kind])
                bad = set(uses) - set(_ATTRIBUTES)
                if bad:
                    raise ValueError(f"phrasings.yaml: {obj.model}: unknown attribute(s) {sorted(bad)}")
                # The split rule of the file's header: first of each kind dev, second test.
                rows.append(Phrasing(text=str(text).format(colour=obj.colour), kind=kind,
                                     uses=uses, split="dev" if i == 0 else "test"))
        out[obj.key] = tuple(rows)
    return out


def load_phrasing_records(split: Literal["dev", "test", "all"] = "all",
                          path: str | Path | None = None) -> dict[str, list[Phrasing]]:
    """Phrasings with their kind, split and attributes, keyed by library key."""
    if split not in ("dev", "test", "all"):
        raise ValueError(f"split must be 'dev', 'test' or 'all', got {split!r}")
    recs = _load_phrasings(str(path or CONFIG_DIR / "phrasings.yaml"), str(CONFIG_DIR / "objects.yaml"))
    return {k: [r for r in v if split == "all" or r.split == split] for k, v in recs.items()}


def load_phrasings(split: Literal["dev", "test"], path: str | Path | None = None) -> dict[str, list[str]]:
    """Query texts of one split keyed by library key (4 per object: one of each kind)."""
    if split not in ("dev", "test"):
        raise ValueError(f"split must be 'dev' or 'test', got {split!r}")
    return {k: [r.text for r in v] for k, v in load_phrasing_records(split, path).items()}


def attributes(key: str, library: dict[str, LibraryObject] | None = None) -> dict[str, str]:
    """(category, model, colour) of a library object, the attributes phrasings rely on."""
    lib = library if library is not None else load_library()
    if key not in lib:
        raise ValueError(f"unknown library key {key!r}")
    o = lib[key]
    return {"category": o.category, "model": o.model, "colour": o.colour}


def referents(phrasing: Phrasing, target_key: str, scene_keys: Iterable[tuple[str, str]],
              library: dict[str, LibraryObject] | None = None) -> list[str]:
    """Names of the scene objects a phrasing for ``target_key`` could mean.

    Args:
        phrasing: a phrasing of the library object ``target_key``.
        target_key: the library key the phrasing was written for.
        scene_keys: (object name, library key) of every object in the scene; objects
            without a library key (``""``) never match.
    Returns:
        Every object that agrees with the target on all of ``phrasing.uses``; more than
        one means the query is ambiguous in that scene.
    """
    lib = library if library is not None else load_library()
    want = attributes(target_key, lib)
    out = []
    for name, key in scene_keys:
        if key and key in lib:
            have = attributes(key, lib)
            if all(have[a] == want[a] for a in phrasing.uses):
                out.append(name)
    return out
