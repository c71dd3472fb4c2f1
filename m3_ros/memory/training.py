"""What one train step optimises: which keyframe it draws, and the losses on its render.

Method note, "Loss": 0.8 L1 + 0.2 (1 - SSIM) on RGB, an L1 depth term, and per model the feature
loss between attended features and the ground truth at ``feature_points`` random pixels. The
optimiser steps and the densify policy run in ``M3Memory.train_step``.

Not in the method: with ``own_label_weight`` a region model's loss also decodes the queries of
Gaussians the view's depth sees on its surface, each on its own, against the label at its pixel
(own_label_targets). The rendered loss constrains only the blend at a pixel, so a Gaussian that
blends with others can carry any query that keeps the blend right, and gaussians-mode grounding
decodes Gaussians one by one.
"""
from __future__ import annotations

import random

import torch

from m3_ros import geometry
from m3_ros.memory.attention import candidate_rows, memory_attention
from m3_ros.memory.config import MemoryConfig
from m3_ros.memory.gaussians import query_key
from m3_ros.memory.labelvotes import surface_pixels
from m3_ros.memory.losses import depth_loss, feature_loss, rgb_loss
from m3_ros.memory.views import TrainView, label_depth_consistent


@torch.no_grad()
def frustum_index(means: torch.Tensor, scales: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor,
                  width: int, height: int, near: float, far: float) -> torch.Tensor | None:
    """Indices [M] of the Gaussians (means [N, 3], scales [N, 3]) that can touch a width x height view,
    or None when all can.

    Conservative: a Gaussian is kept when its centre lies between the planes and its projected
    centre is within 3 sigma (largest scale, over depth, in pixels) plus 2 px of the image, i.e.
    wider than the rasterizer's own 3-sigma footprint, so the render is the same as without culling.

    Each image-side test, u + r >= -0.5 with u = fx x / z + cx and r = 3 s F / z + 2, is multiplied
    by z > 0 into one linear in the camera-frame centre: fx x + (cx + 2.5) z + 3 s F >= 0. The four
    of them and z come out of one [5, 3] x [3, N] product, so the test is a few passes over N
    contiguous values (200k Gaussians on 2 cores: ~2 ms, ~6 with the divisions). Same kept set:
    test_selective_adam.test_frustum_index_matches_the_projected_test.
    """
    fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    A = torch.tensor([[fx, 0.0, cx + 2.5], [-fx, 0.0, width + 1.5 - cx],  # u >= -0.5 - r, u <= width - 0.5 + r
                      [0.0, fy, cy + 2.5], [0.0, -fy, height + 1.5 - cy],  # the same for v
                      [0.0, 0.0, 1.0]], dtype=means.dtype)  # z
    R, t = viewmat[:3, :3].to(means.dtype), viewmat[:3, 3].to(means.dtype)
    d = torch.addmm((A @ t)[:, None], A @ R, means.T)  # [5, N]: the four sides times z, and z
    z = d[4]
    r = (3.0 * max(fx, fy)) * scales.amax(-1)  # [N] 3 sigma in pixels, times z (the 2 px are in A)
    ok = (z > near) & (z < far) & (d[:4].amin(0) + r >= 0)
    if bool(ok.all()):
        return None
    return torch.nonzero(ok).flatten()


def sample_view(views: list[TrainView], cfg: MemoryConfig, rng: random.Random) -> TrainView:
    """A keyframe to train on: one of the newest ``recent`` with probability recent_prob, else any."""
    n = len(views)
    if n > cfg.recent and rng.random() < cfg.recent_prob:
        return views[n - 1 - rng.randrange(cfg.recent)]
    return views[rng.randrange(n)]


def feature_targets(cfg: MemoryConfig, v: TrainView, model: str, fm, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train-scale pixels (pv [n], pu [n]) drawn for model's loss and their ground truth gt [n, d]
    (labels_at)."""
    h, w = v.rgb.shape[:2]
    n = min(cfg.feature_points, h * w)
    flat = torch.randperm(h * w, generator=generator)[:n]
    pv, pu = flat // w, flat % w
    return pv, pu, labels_at(cfg, v, model, fm, pv, pu)


def labels_at(cfg: MemoryConfig, v: TrainView, model: str, fm, pv: torch.Tensor, pu: torch.Tensor) -> torch.Tensor:
    """model's ground truth [n, d] at v's train-scale pixels (pv [n], pu [n]); zero (ignored by
    feature_loss) where a region model's label crosses a depth edge and where v is stale."""
    # train-scale pixel centre -> keyframe pixel coordinates (integer pixel centres)
    uv = torch.stack([(pu.float() + 0.5) / v.scale - 0.5, (pv.float() + 0.5) / v.scale - 0.5], -1)
    gt = fm.sample(uv, mode=cfg.models[model].sample_mode)  # [n, d]
    cd = v.cell_depth.get(model)
    if cd is not None:
        ok = label_depth_consistent(v.depth[pv, pu].numpy(), uv[:, 0].numpy(), uv[:, 1].numpy(), cd,
                                    v.kf.size, cfg.label_depth_rel)
        gt = torch.where(torch.from_numpy(ok)[:, None], gt, 0.0)
    if v.stale is not None:  # what changed since v was taken
        gt = torch.where(v.stale[pv, pu][:, None], 0.0, gt)
    return gt


def own_label_targets(cfg: MemoryConfig, v: TrainView, model: str, fm, means: torch.Tensor,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sel [n], pv [n], pu [n], gt [n, d]): up to ``feature_points`` of the Gaussians means [V, 3]
    that v's depth sees on its surface (labelvotes.surface_pixels, the label votes' rule), their
    train-scale pixels and the labels there (labels_at)."""
    cand = torch.arange(len(means))
    if len(cand) > 4 * cfg.feature_points:  # the surface test is the cost: test a random few only
        cand = torch.randperm(len(means), generator=generator)[:4 * cfg.feature_points]
    idx, pv, pu = surface_pixels(means.detach()[cand].numpy(), v.depth.numpy(), v.K.numpy(),
                                 geometry.invert(v.viewmat.double().numpy()))
    sel, pv, pu = cand[torch.from_numpy(idx)], torch.from_numpy(pv), torch.from_numpy(pu)
    if len(sel) > cfg.feature_points:
        keep = torch.randperm(len(sel), generator=generator)[:cfg.feature_points]
        sel, pv, pu = sel[keep], pv[keep], pu[keep]
    return sel, pv, pu, labels_at(cfg, v, model, fm, pv, pu)


def _decode(cfg: MemoryConfig, q: torch.Tensor, W_m: torch.Tensor, b, generator: torch.Generator) -> torch.Tensor:
    """Decoded features [n, d] of queries q [n, l] through bank b (candidate rows past train_max_rows)."""
    rows, unit = b.rows, b.unit_rows
    if 0 < cfg.train_max_rows < len(b):
        cand = candidate_rows(q.detach(), W_m.detach(), unit, cfg.tau, max_rows=cfg.train_max_rows, generator=generator)
        rows, unit = rows[cand], unit[cand]
    return memory_attention(q, W_m, rows, unit, cfg.tau, cfg.attention_topk)


def view_losses(cfg: MemoryConfig, v: TrainView, img: torch.Tensor, models: list[str], W: dict, banks: dict,
                generator: torch.Generator, gaussians: dict | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its terms for the render img [h, w, 3 + sum(l) + 1] (RGB, query slices, depth) of v.
    gaussians: the rendered rows ("means" and the query keys), for the own-label loss."""
    losses: dict[str, torch.Tensor] = {}
    pred_rgb, gt_depth = img[..., :3], v.depth
    if v.stale is not None:  # what changed since v was taken: no colour, depth or feature loss there
        pred_rgb = torch.where(v.stale[..., None], v.rgb, pred_rgb)
        gt_depth = torch.where(v.stale, 0.0, gt_depth)
    losses["rgb"] = rgb_loss(pred_rgb, v.rgb, cfg.lambda_ssim)
    losses["depth"] = depth_loss(img[..., -1], gt_depth)
    loss = losses["rgb"] + cfg.lambda_depth * losses["depth"]
    c = 3
    for m in models:
        l = cfg.models[m].channels
        fm = v.kf.features.get(m)
        if fm is not None:
            pv, pu, gt = feature_targets(cfg, v, m, fm, generator)
            q = img[pv, pu, c:c + l]  # [n, l] rendered principal queries
            pred = _decode(cfg, q, W[m], banks[m], generator)
            losses[f"feat_{m}"] = feature_loss(pred, gt)
            loss = loss + cfg.lambda_feature * cfg.models[m].weight * losses[f"feat_{m}"]
            if cfg.own_label_weight > 0 and gaussians is not None and cfg.models[m].regions:
                sel, _, _, gt_own = own_label_targets(cfg, v, m, fm, gaussians["means"], generator)
                if len(sel):
                    own = _decode(cfg, gaussians[query_key(m)][sel], W[m], banks[m], generator)
                    losses[f"own_{m}"] = feature_loss(own, gt_own)
                    loss = loss + cfg.own_label_weight * cfg.lambda_feature * cfg.models[m].weight * losses[f"own_{m}"]
        c += l
    return loss, losses
