"""ctypes wrapper around the compiled relevance moments and shared-level leaders (``csrc/relevance_cpu.cpp``).

The library is loaded from the cache that ``python -m m3_ros.memory.build_ext`` fills (run by
``scripts/setup.sh``); this module never compiles. ``RelevanceIndex._moments`` falls back to its
PyTorch twin (the oracle) when the library is missing, stale or refuses the sizes.

Threads: OpenMP inside the call, as many as ``torch.get_num_threads()``. ctypes releases the GIL
for the call.
"""
from __future__ import annotations

import ctypes
import logging

import torch
from torch import Tensor

from m3_ros.memory import build_ext

log = logging.getLogger(__name__)
_fn = None
_leaders_fn = None
_load_error: str | None = None


def _load():
    global _fn, _leaders_fn, _load_error
    if _fn is not None or _load_error is not None:
        return _fn
    path, stamp = build_ext.relevance_library_path(), build_ext.relevance_stamp_path()
    if not path.exists() or not stamp.exists():
        _load_error = f"{path} not built (run scripts/setup.sh)"
    elif stamp.read_text().strip() != build_ext.relevance_source_hash():
        _load_error = f"{path} is stale: csrc/relevance_cpu.cpp changed since the build (run scripts/setup.sh)"
    else:
        try:
            lib = ctypes.CDLL(str(path))
            fn, lead_fn = lib.m3_relevance_moments, lib.m3_relevance_leaders
        except (OSError, AttributeError) as err:
            _load_error = f"cannot load {path}: {err} (run scripts/setup.sh)"
        else:
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                           ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_int]
            lead_fn.restype = ctypes.c_int
            lead_fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p,
                                ctypes.c_void_p, ctypes.c_int]
            _fn = fn
            _leaders_fn = lead_fn
    if _load_error is not None:
        log.info("compiled relevance moments unavailable: %s", _load_error)
    return _fn


def available() -> bool:
    """True when the cached library loads."""
    return _load() is not None


def load_error() -> str | None:
    """Why the library is unavailable (None when it loaded)."""
    _load()
    return _load_error


def moments(y: Tensor, bt: Tensor, cols: Tensor, shift_max: bool) -> tuple[Tensor, Tensor] | None:
    """(e @ cols [P, c], ‖e‖² [P]) with e_j = 2^(y·bt_j - shift), shift each pixel's largest logit if
    shift_max else 0; y [P, l], bt [t, l], cols [t, c] float32. None when the library is unavailable or
    does not take these sizes."""
    fn = _load()
    if fn is None:
        return None
    y, bt, cols = (x.to(torch.float32).contiguous() for x in (y, bt, cols))
    P, l = y.shape
    out, w2 = torch.empty(P, cols.shape[1]), torch.empty(P)
    rc = fn(y.data_ptr(), P, l, bt.data_ptr(), bt.shape[0], cols.data_ptr(), cols.shape[1], int(shift_max),
            out.data_ptr(), w2.data_ptr(), torch.get_num_threads())
    return (out, w2) if rc == 0 else None


def leaders(y: Tensor, free: Tensor, step: Tensor, tile: int, rounds: int, rho: float
            ) -> tuple[Tensor, Tensor] | None:
    """The shared level's leaders (RelevanceIndex._share_leaders): (lead [H*W] int64, the leader's pixel
    or -1; dist [H*W], the distance to it) for y [H, W, l], free [H, W] bool and step [H, W]. None when
    the library is unavailable."""
    if _load() is None:
        return None
    H, W, l = y.shape
    y = y.to(torch.float32).contiguous()
    free_u8 = free.to(torch.uint8).contiguous()
    step = step.to(torch.float32).contiguous()
    lead, dist = torch.empty(H * W, dtype=torch.int64), torch.empty(H * W)
    rc = _leaders_fn(y.data_ptr(), H, W, l, free_u8.data_ptr(), step.data_ptr(), tile, rounds, rho,
                     lead.data_ptr(), dist.data_ptr(), torch.get_num_threads())
    return (lead, dist) if rc == 0 else None
