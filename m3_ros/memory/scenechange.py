"""What a new keyframe changes in the Gaussians the memory already holds (M3Memory.add_keyframe).

- free space (freespace.py): Gaussians its depth rays clearly pass through fade and, once nearly
  transparent, go; the kept keyframes that saw them as they were leave the training window, and the
  surface they uncovered takes what the keyframe sees there now;
- label change (labelchange.py, opt-in): the same for surface Gaussians whose label no detector
  region around them carries any more (moved objects lower than free space's margin);
- label votes (labelvotes.py): every Gaussian the depth sees on its surface is inside a detector
  region or outside all of them.

Functions of an M3Memory's state, called with its lock held; memory.py only sequences them.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.spatial import cKDTree

from m3_ros.memory.appearance import colour_changed
from m3_ros.memory.freespace import SURFACE, THROUGH, classify, decayed_logits, project_pixels
from m3_ros.memory.gaussians import query_key
from m3_ros.memory.labelchange import CONFIRMED, CONTRADICTED, label_verdicts, seen_as_they_were, top_labels
from m3_ros.memory.labelvotes import RUN_KEY, VOTES_KEY, carries_row, surface_votes
from m3_ros.memory.seeding import detected_mask, pixel_features
from m3_ros.memory.sh import sh_to_rgb
from m3_ros.memory.views import mark_stale
from m3_ros.types import Keyframe

if TYPE_CHECKING:
    from m3_ros.memory.memory import M3Memory

log = logging.getLogger(__name__)


@torch.no_grad()
def vote_labels(mem: "M3Memory", kf: Keyframe, feats: dict) -> None:
    """Add kf's label votes (labelvotes.py) when it carries a region model's features (feats
    {model: FeatureMap}): every Gaussian its depth sees on the surface is inside a detector region or
    outside all of them."""
    cfg = mem.cfg
    if mem.n_gaussians == 0 or not any(cfg.models[m].regions for m in feats):
        return
    regions = detected_mask(kf)
    if regions is None:
        regions = np.zeros(kf.size, dtype=bool)  # the detector ran and found nothing
    models = [m for m in feats if cfg.models[m].regions and m in mem.W
              and len(mem.banks[m]) > 0]

    def same_label(idx: np.ndarray, v: np.ndarray, u: np.ndarray) -> np.ndarray:
        ok = np.ones(len(idx), dtype=bool)
        for m in models:
            rows = mem.banks[m].assign(pixel_features(kf, feats[m], np.stack([v, u], 1), cfg, m))
            ok &= carries_row(mem.params[query_key(m)].detach()[torch.from_numpy(idx)], rows, mem.W[m],
                              mem.banks[m].unit_rows, cfg.tau)
        return ok

    agree = same_label if cfg.vote_same_label and models else None
    mem.params[VOTES_KEY].data += surface_votes(mem.means.numpy(), np.asarray(kf.depth), kf.K,
                                                kf.T_world_cam, regions, agree)


def _region_banks(mem: "M3Memory", kf: Keyframe) -> dict:
    """{model: MemoryBank} of the region models kf carries features of and the memory has a bank for."""
    cfg = mem.cfg
    return {m: mem.banks[m] for m in kf.features
            if m in cfg.models and cfg.models[m].regions and m in mem.W and len(mem.banks[m]) > 0}


@torch.no_grad()
def count_contradictions(mem: "M3Memory", kf: Keyframe, surface: torch.Tensor) -> torch.Tensor:
    """labelvotes.RUN_KEY for the Gaussians on kf's surface (surface [N] bool): one more where kf's
    region maps contradict their label (labelchange.label_verdicts), back to 0 where they confirm it.
    Returns [N] bool, the contradicted ones (label change reads them too)."""
    cfg = mem.cfg
    out = torch.zeros(mem.n_gaussians, dtype=torch.bool)
    cand = torch.nonzero(surface).flatten()
    models = _region_banks(mem, kf)
    if len(cand) == 0 or not models:
        return out
    queries = {m: mem.params[query_key(m)].detach()[cand] for m in models}
    v = label_verdicts(kf, mem.means[cand], queries, mem.W, models, cfg.tau,
                       cfg.freespace.radius_px(kf.size[1]), cfg.freespace.label_min_cos)
    run = mem.params[RUN_KEY].data
    run[cand[torch.from_numpy(v == CONFIRMED)]] = 0.0
    run[cand[torch.from_numpy(v == CONTRADICTED)]] += 1.0
    out[cand[torch.from_numpy(v == CONTRADICTED)]] = True
    return out


@torch.no_grad()
def appearance_changed(mem: "M3Memory", kf: Keyframe, surface: torch.Tensor) -> torch.Tensor:
    """[N] bool: the Gaussians on kf's surface (surface [N] bool) whose colour, as kf's camera would see
    it, no pixel around them shows any more (appearance.colour_changed)."""
    out = torch.zeros(mem.n_gaussians, dtype=torch.bool)
    cand = torch.nonzero(surface).flatten()
    if len(cand) == 0 or kf.rgb is None:
        return out
    out[cand[torch.from_numpy(_colour_gone_in(mem, kf, mem.means[cand], mem.params["colors"].detach()[cand]))]] = True
    return out


def _colour_gone_in(mem: "M3Memory", kf: Keyframe, means: torch.Tensor, sh: torch.Tensor) -> np.ndarray:
    """[G] True where no pixel of kf around means [G, 3] shows their colour (SH colours sh, as kf's camera
    sees them): kf saw the place already changed (appearance.colour_changed)."""
    fc = mem.cfg.freespace
    centre = torch.as_tensor(np.asarray(kf.T_world_cam, dtype=np.float64)[:3, 3], dtype=torch.float32)
    colours = sh_to_rgb(sh, means, centre, mem.cfg.sh_degree)
    pix = project_pixels(kf.K, kf.T_world_cam, means, kf.size)
    return colour_changed(np.asarray(kf.rgb), pix, colours.numpy(), fc.radius_px(kf.size[1]), fc.appearance_min_chroma,
                          fc.appearance_min_bright, fc.min_valid)


@torch.no_grad()
def clear_free_space(mem: "M3Memory", kf: Keyframe) -> None:
    """Free-space evidence of kf's depth (freespace.py), and with freespace.label_change of its
    region labels (labelchange.py) and with freespace.appearance_change of its colours
    (appearance.py): Gaussians its rays clearly pass through (or whose label or colour is
    gone) lose opacity; those then below freespace.min_opacity are removed, and the kept
    keyframes that saw them on their surface as they were leave the training window."""
    fc = mem.cfg.freespace
    if not fc.enabled or mem.n_gaussians == 0:
        return
    codes = classify(kf.depth, kf.K, kf.T_world_cam, mem.means, mem.scales, fc)
    changed = count_contradictions(mem, kf, codes == SURFACE)
    through, labels, row = codes == THROUGH, {}, None
    if fc.label_change and bool(changed.any()):  # lower than the margin: what the detector calls the place now
        cand = torch.nonzero(changed).flatten()
        labels = {m: top_labels(mem.params[query_key(m)].detach()[cand], mem.W[m], b.rows, b.unit_rows, mem.cfg.tau)
                  for m, b in _region_banks(mem, kf).items()}
        row = torch.full((mem.n_gaussians,), -1, dtype=torch.long)  # Gaussian -> its row in labels
        row[cand] = torch.arange(len(cand))
        through |= changed
    appear = appearance_changed(mem, kf, codes == SURFACE) if fc.appearance_change else None
    if appear is not None:
        through |= appear
    if not bool(through.any()):
        return
    logits = mem.params["opacity_logits"]
    logits.data.copy_(decayed_logits(logits.detach(), through, fc.decay))
    gone = torch.nonzero(through & (mem.opacities < fc.min_opacity)).flatten()
    if len(gone) == 0:
        return
    means, scales = mem.means[gone].clone(), mem.scales[gone].clone()
    # the labels of those gone by label change alone (zero rows for the rest: free space's evidence)
    by_label = row[gone] if row is not None else torch.full((len(gone),), -1, dtype=torch.long)
    by_label[(codes == THROUGH)[gone]] = -1
    gone_labels = {}
    for m, lab in labels.items():
        gone_labels[m] = torch.zeros(len(gone), lab.shape[1])
        gone_labels[m][by_label >= 0] = lab[by_label[by_label >= 0]]
    # those gone by appearance alone, with their colours: a kept view saw them as they were only in their colour
    by_colour = torch.zeros(len(gone), dtype=torch.bool) if appear is None else appear[gone] & (by_label < 0)
    by_colour &= ~(codes == THROUGH)[gone]
    sh = mem.params["colors"].detach()[gone[by_colour]].clone()
    mem._remove(gone)
    stale, masked = [], []
    for v in mem._views:
        seen = seen_as_they_were(v.kf, means, scales, gone_labels, fc)
        if bool(by_colour.any()):
            seen[by_colour] &= ~torch.from_numpy(_colour_gone_in(mem, v.kf, means[by_colour], sh))
        if int(seen.sum()) < fc.stale_points:
            continue
        if fc.stale_mask:
            mark_stale(v, means[seen], fc.radius_px(v.kf.size[1]))
        if not fc.stale_mask or v.stale_fraction > fc.stale_max_fraction:
            stale.append(v.kf.index)
        else:
            masked.append(v.kf.index)
    mem._views = [v for v in mem._views if v.kf.index not in stale]
    mem.cleared += len(gone)
    mem.stale_dropped += len(stale)
    mem.stale_masked += len(masked)
    # a changed scene, or a keyframe whose pose disagrees with the map: either way worth a line
    (log.warning if stale else log.info)(
        "free space seen by keyframe %d: removed %d Gaussians; of the kept keyframes that saw them on their "
        "surface, %d masked them and %d left the training window %s (%d remain)", kf.index, len(gone),
        len(masked), len(stale), stale, len(mem._views))
    relabel_uncovered(mem, kf, means)


@torch.no_grad()
def relabel_uncovered(mem: "M3Memory", kf: Keyframe, gone_means: torch.Tensor) -> None:
    """The surface that removed Gaussians (centres gone_means [k, 3]) uncovered, the table under a
    moved object, answers for what kf sees there now: its Gaussians within freespace.relabel_radius
    take the queries of kf's features at their pixels."""
    cfg, fc = mem.cfg, mem.cfg.freespace
    surf = torch.nonzero(classify(kf.depth, kf.K, kf.T_world_cam, mem.means, None, fc, evidence=False)
                         == SURFACE).flatten()
    if fc.relabel_radius <= 0 or len(surf) == 0:
        return
    dist, _ = cKDTree(gone_means.numpy()).query(mem.means[surf].numpy(), distance_upper_bound=fc.relabel_radius)
    idx = surf[torch.from_numpy(np.isfinite(dist))]
    if len(idx) == 0:
        return
    pix = project_pixels(kf.K, kf.T_world_cam, mem.means[idx], kf.size)
    for m, fm in kf.features.items():
        if m in mem.W and m in cfg.models:
            gt = pixel_features(kf, fm, pix, cfg, m)
            has = gt.abs().sum(1) > 0
            if bool(has.any()):
                q = mem._queries_for_rows(m, mem.banks[m].assign(gt[has]))
                mem.params[query_key(m)].data[idx[has]] = q
