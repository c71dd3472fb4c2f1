"""One directory per memory: tensors.safetensors + meta.json, written atomically, loaded with validation.

Layout:
    meta.json            format version, config (models, theta, tau, ...), conventions, counts
    tensors.safetensors  "param/<name>" Gaussian parameters, "wm/<model>" W_m, "bank/<model>" PSC rows,
                         "bank_counts/<model>" features per row, "bank_centre_sum/<model>" running sum
                         (float64) whose mean the bank subtracts before cosines

Atomicity: everything is written and fsync'ed into a sibling temp directory, then renamed into
place; an existing memory is first renamed aside and removed only after the new one is in
place, so a save killed at any point leaves either the previous memory intact at `path` or (in
the instant between the two renames) at `path.with_suffix(".old")`, which `load` falls back to.
Loading never unpickles (safetensors + JSON only) and never executes code; every failure
(missing, truncated, corrupted, another version) is one ``CheckpointError`` with a one-line
message. meta.json records the SHA-256 of the tensor file, so bytes flipped inside the tensor
data (which safetensors cannot notice) are refused too. Keyframes and optimiser moments are not
stored: a loaded memory answers queries at once and resumes training from new keyframes.
``extra`` (JSON) carries what a front end needs beside the memory (the offline builder's
progress and camera views).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from m3_ros.memory.config import MemoryConfig
from m3_ros.memory.gaussians import query_key
from m3_ros.memory.labelvotes import RUN_KEY, VOTES_KEY
from m3_ros.memory.sh import colors_shape

FORMAT = "m3_ros.memory"
FORMAT_VERSION = 3
# Version 1 predates sh_degree: its colours are degree 0 ([N, 3] logits), which version 2 stores alike.
# Versions 1-2 predate bank centring and counts: their banks load uncentred (as they were trained),
# every row counting once.
READABLE_VERSIONS = (1, 2, 3)
CONVENTIONS = {
    "quats": "w,x,y,z (gsplat order)",
    "scales": "log_scales stored; activated = exp",
    "opacity": "opacity_logits stored; activated = sigmoid",
    "colors": "sh_degree 0: [N, 3] logits of RGB, activated = sigmoid; sh_degree D > 0: [N, (D+1)^2, 3] real SH "
              "coefficients (index 0 DC with basis 1, then l = 1..D, m = -l..l, Condon-Shortley phase), "
              "activated = sigmoid(sum_k Y_k(unit(mean - camera centre)) c_k)",
    "frames": "means in the memory (odom) frame; cameras REP-103 optical, T_world_cam maps camera to world",
    "wm": "W_m [l, d]: decoded = softmax(cos(q W_m, PSC) / tau) PSC",
}
_PARAMS = ("means", "log_scales", "quats", "opacity_logits", "colors")


class CheckpointError(ValueError):
    """A memory directory is missing, incomplete, corrupted, of another version, or inconsistent.

    The message is one line naming the directory and what is wrong with it.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_memory(mem, path: Path, extra: dict | None = None) -> None:
    """Write mem (anything with ``state_dict()``, i.e. an M3Memory) to directory path atomically;
    ``extra`` (JSON-able) goes into meta.json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = mem.state_dict()
    tensors = {f"param/{k}": v for k, v in state["params"].items()}
    tensors.update({f"wm/{m}": w for m, w in state["W"].items()})
    banks = state["banks"]
    tensors.update({f"bank/{m}": b["rows"] for m, b in banks.items()})
    tensors.update({f"bank_counts/{m}": b["counts"] for m, b in banks.items()})
    tensors.update({f"bank_centre_sum/{m}": b["centre_sum"] for m, b in banks.items()})
    cfg = state["config"]
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg,
        "models": {m: {"channels": s["channels"], "theta": s["theta"], "max_rows": s["max_rows"],
                       "dim": int(banks[m]["rows"].shape[1]) if m in banks else None,
                       "bank_rows": int(banks[m]["rows"].shape[0]) if m in banks else 0,
                       "bank_seen": banks[m]["seen"] if m in banks else 0,
                       "bank_merges": banks[m]["merges"] if m in banks else 0,
                       "bank_centre_n": banks[m]["centre_n"] if m in banks else 0}
                   for m, s in cfg["models"].items()},
        "tau": cfg["tau"],
        "sh_degree": cfg["sh_degree"],
        "n_gaussians": int(state["params"]["means"].shape[0]),
        "iteration": state["iteration"],
        "extent": state["extent"],
        "keyframes": state["keyframes"],
        "conventions": CONVENTIONS,
        "extra": extra or {},
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_suffix(".old")
    # Temp dirs of saves killed mid-write (any pid: one writer per memory directory).
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    save_file(tensors, str(tmp / "tensors.safetensors"), metadata={"format": FORMAT})
    meta["tensors_sha256"] = _sha256(tmp / "tensors.safetensors")
    with open(tmp / "meta.json", "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    with open(tmp / "tensors.safetensors", "rb+") as f:
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.rename(path, old)
    os.rename(tmp, path)
    _fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old)


def read_meta(path: Path) -> dict:
    """meta.json of the memory at path, validated (format, version); CheckpointError otherwise."""
    path = Path(path)
    if not path.exists() and path.with_suffix(".old").is_dir():
        path = path.with_suffix(".old")
    meta_p, tens_p = path / "meta.json", path / "tensors.safetensors"
    if not path.is_dir():
        raise CheckpointError(f"no memory directory at {path}")
    if not meta_p.is_file() and not tens_p.is_file():
        raise CheckpointError(f"{path} is not a memory directory (no meta.json, no tensors.safetensors)")
    for p in (meta_p, tens_p):
        if not p.is_file():
            raise CheckpointError(f"memory at {path} is incomplete: missing {p.name}")
    try:
        meta = json.loads(meta_p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_p} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_p} is not an {FORMAT} checkpoint (format={meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path}: format_version {meta.get('format_version')!r} is not supported "
                              f"(readable: {list(READABLE_VERSIONS)})")
    return meta


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    meta = read_meta(path)
    tens_p = path / "tensors.safetensors"
    want = meta.get("tensors_sha256")
    if want is not None and _sha256(tens_p) != want:
        raise CheckpointError(f"{tens_p} is corrupted or truncated (its SHA-256 differs from the one in meta.json)")
    try:
        tensors = load_file(str(tens_p))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{tens_p} is not a readable safetensors file: {e}") from e
    return meta, tensors


def load_memory(cls, path: Path):
    """Build an M3Memory (cls, through ``cls.from_state``) from directory path, validating version, names and shapes."""
    path = Path(path)
    if not path.exists() and path.with_suffix(".old").is_dir():
        path = path.with_suffix(".old")  # a save was killed between its two renames
    meta, tensors = _read(path)
    try:
        cfg, state = _state(path, meta, tensors)
    except (KeyError, TypeError, AttributeError, RuntimeError) as e:  # a hand-edited or foreign meta.json
        raise CheckpointError(f"{path}: meta.json does not describe the stored tensors "
                              f"({type(e).__name__}: {e})") from e
    try:
        return cls.from_state(state, cfg)
    except ValueError as e:  # the bank refused the stored rows (e.g. counts of another length)
        raise CheckpointError(f"{path}: {e}") from e


def _state(path: Path, meta: dict, tensors: dict[str, torch.Tensor]) -> tuple[MemoryConfig, dict]:
    """The validated config and state_dict (M3Memory.state_dict's layout) of a checkpoint's contents."""
    try:
        cfg = MemoryConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: bad config in meta.json: {e}") from e
    names = list(_PARAMS) + [query_key(m) for m in cfg.models]
    missing = [n for n in names if f"param/{n}" not in tensors]
    if missing:
        raise CheckpointError(f"{path}: tensors missing parameters {missing}")
    if meta.get("sh_degree", 0) != cfg.sh_degree:
        raise CheckpointError(f"{path}: meta sh_degree {meta.get('sh_degree')!r} disagrees with config "
                              f"sh_degree {cfg.sh_degree}")
    N = int(meta.get("n_gaussians", -1))
    shapes = {"means": (N, 3), "log_scales": (N, 3), "quats": (N, 4), "opacity_logits": (N,),
              "colors": colors_shape(N, cfg.sh_degree)}
    shapes.update({query_key(m): (N, s.channels) for m, s in cfg.models.items()})
    for n in names:
        t = tensors[f"param/{n}"]
        want = shapes[n]
        if tuple(t.shape) != want:
            raise CheckpointError(f"{path}: param/{n} has shape {tuple(t.shape)}, expected {want}")
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: param/{n} has non-finite values")
    if f"param/{VOTES_KEY}" in tensors:  # absent in memories saved before label votes
        t = tensors[f"param/{VOTES_KEY}"]
        if tuple(t.shape) != (N, 2) or not torch.isfinite(t).all() or bool((t < 0).any()):
            raise CheckpointError(f"{path}: param/{VOTES_KEY} must be finite counts of shape {(N, 2)}, "
                                  f"got {tuple(t.shape)}")
        names.append(VOTES_KEY)
    if f"param/{RUN_KEY}" in tensors:  # absent in memories saved before label verdicts
        t = tensors[f"param/{RUN_KEY}"]
        if tuple(t.shape) != (N,) or not torch.isfinite(t).all() or bool((t < 0).any()):
            raise CheckpointError(f"{path}: param/{RUN_KEY} must be finite counts of shape {(N,)}, "
                                  f"got {tuple(t.shape)}")
        names.append(RUN_KEY)
    state = {"params": {n: tensors[f"param/{n}"] for n in names}, "W": {}, "banks": {},
             "iteration": int(meta.get("iteration", 0)), "extent": float(meta.get("extent", 1.0))}
    for m, s in cfg.models.items():
        info = meta["models"].get(m, {})
        if f"bank/{m}" not in tensors:
            continue
        rows = tensors[f"bank/{m}"]
        d = info.get("dim")
        if rows.ndim != 2 or rows.shape[1] != d or rows.shape[0] > s.max_rows or rows.shape[0] != info.get("bank_rows"):
            raise CheckpointError(f"{path}: bank/{m} has shape {tuple(rows.shape)}, meta says dim={d}, "
                                  f"rows={info.get('bank_rows')}, max_rows={s.max_rows}")
        if f"bank_centre_sum/{m}" not in tensors:
            s.centre = False  # saved before centring existed: its queries were trained on raw keys
        state["banks"][m] = {"rows": rows, "counts": tensors.get(f"bank_counts/{m}"),
                             "centre_sum": tensors.get(f"bank_centre_sum/{m}"),
                             "centre_n": int(info.get("bank_centre_n", 0)), "seen": int(info.get("bank_seen", 0)),
                             "merges": int(info.get("bank_merges", 0)), "centring": s.centred}
        if f"wm/{m}" in tensors:
            W = tensors[f"wm/{m}"]
            if tuple(W.shape) != (s.channels, d):
                raise CheckpointError(f"{path}: wm/{m} has shape {tuple(W.shape)}, expected {(s.channels, d)}")
            state["W"][m] = W
    return cfg, state
