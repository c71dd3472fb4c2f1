"""Shared benchmark plumbing: machine header, markdown table, results file, RESULT line."""
from __future__ import annotations

import datetime as _dt
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_header(extra_versions: dict[str, str] | None = None) -> list[str]:
    """Lines that say where and with what a benchmark ran."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    versions.update(extra_versions or {})
    return [
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}",
        f"- threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- command: {' '.join([Path(sys.executable).name] + sys.argv)}",
    ]


def table(headers: list[str], rows: list[list[object]]) -> list[str]:
    """Markdown table lines."""
    def fmt(x: object) -> str:
        return f"{x:.2f}" if isinstance(x, float) else str(x)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return out


def time_ms(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def write_report(name: str, title: str, sections: list[str], result: dict[str, object]) -> str:
    """Print the report, write it to bench/results/<name>.md, print the RESULT line last."""
    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    result_line = "RESULT " + " ".join(f"{k}={fmt(v)}" for k, v in result.items())
    text = "\n".join([f"# {title}", ""] + sections + ["", "```", result_line, "```", ""])
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.md").write_text(text)
    print("\n".join(sections))
    print(result_line)
    return result_line


def in_fresh_process(fn, *args):
    """fn(*args) in a spawned process (fn and args picklable; fn at a module's top level). Benchmarks walk
    each scene this way, so that every walk is its process's first SimWorld: a process's later SimWorlds
    render a few pixels of some frames one level apart, differently in each process, and a walk's memory
    and answers follow them (bench/results/determinism.md, 2026-12-07)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()
