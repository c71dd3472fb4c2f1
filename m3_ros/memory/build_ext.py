"""Build the compiled CPU rasterizer into a cache inside the venv: ``python -m m3_ros.memory.build_ext``.

``scripts/setup.sh`` runs this once (and again when this file or ``csrc/*`` change);
``m3_ros.memory._raster_cpu`` then only loads the cached library, it never builds.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

EXT_NAME = "m3_ros_raster_cpu"
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = [CSRC / "raster_cpu.cpp"]
# -O3 and OpenMP; no -ffast-math (it would change the alpha/T thresholds' edge cases against the oracle).
# -march=native measured ~25 % faster (AVX2/FMA); safe because the stamp below includes this CPU's
# feature flags: a venv moved to another CPU sees a stale build (torch fallback + warning), never SIGILL.
CFLAGS = ["-O3", "-fopenmp", "-march=native"]
LDFLAGS = ["-fopenmp"]


def cache_dir() -> Path:
    """Where the built library lives: ``<venv>/m3_ros_ext``."""
    return Path(sys.prefix) / "m3_ros_ext"


def source_hash() -> str:
    """Hash of the sources, compiler flags and CPU features; a cached library with another hash is stale."""
    h = hashlib.sha256()
    for src in SOURCES:
        h.update(src.read_bytes())
    h.update(" ".join(CFLAGS + LDFLAGS).encode())
    h.update(_cpu_flags().encode())
    return h.hexdigest()


def _cpu_flags() -> str:
    """This CPU's feature flags (what -march=native compiles for); empty where /proc is unavailable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        return ""
    return ""


def library_path() -> Path:
    return cache_dir() / f"{EXT_NAME}.so"


def stamp_path() -> Path:
    return cache_dir() / "source.sha256"


def build(verbose: bool = False) -> Path:
    """Compile the extension into ``cache_dir()`` (~40 s on 2 cores) and stamp it with ``source_hash()``."""
    from torch.utils.cpp_extension import load

    out = cache_dir()
    out.mkdir(parents=True, exist_ok=True)
    stamp_path().unlink(missing_ok=True)
    load(name=EXT_NAME, sources=[str(s) for s in SOURCES], extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS),  # load() appends to them
         build_directory=str(out), verbose=verbose)
    stamp_path().write_text(source_hash())
    return library_path()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    t0 = time.perf_counter()
    path = build(verbose=args.verbose)
    print(f"built {path} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
