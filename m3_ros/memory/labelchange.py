"""Label-change evidence: a Gaussian on the observed surface whose label no region around it carries.

Free space (freespace.py) sees through where an object stood only when the object was taller than
its margin (5 cm plus range noise plus the Gaussian's extent): a 2 cm bar or a small cube moved
off a table leaves Gaussians that the new depth still explains as the table's surface, so they
keep answering at the old place. What the new view says there is "this is the table": a region
model (detector masks -> text embeddings) labels the window around the Gaussian, and none of its
regions is the Gaussian's label.

Read as conservatively as free space (the same window, and the same two pieces of evidence before
a removal): a Gaussian's label is CONTRADICTED (label_verdict) when

- every cell of the window around its pixel lies inside some detector region (a missed detection,
  a mask eroded at an object's border, a floor or wall no detector names gives no evidence), and
- none of those regions' features has cosine >= ``min_cos`` with the Gaussian's decoded feature
  (a synonym the detector used this time stays close; another object does not), and
- its decoded feature is not zero (a Gaussian that never had a label has none to contradict).

An object misregistered by a few pixels keeps its own region in the window, and so does the table
top at its base: neither is evidence. Opt-in (FreeSpaceConfig.label_change, off: on dev scenes it
answered more moved-object trials but cost static grounding; the figures are there). Pure numpy /
torch; no ROS, no memory state.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from m3_ros.memory.attention import attention_logits
from m3_ros.memory.compact import IndexedFeatureMap, index_feature_map
from m3_ros.memory.freespace import SURFACE, FreeSpaceConfig, classify, project_pixels
from m3_ros.memory.views import cell_index
from m3_ros.types import FeatureMap, Keyframe


CONTRADICTED, NO_EVIDENCE, CONFIRMED = -1, 0, 1
"""Codes of ``label_verdict``."""


def label_verdict(decoded: torch.Tensor, pix: np.ndarray, fm: FeatureMap | IndexedFeatureMap,
                  radius_px: int, min_cos: float) -> np.ndarray:
    """[S] int8 what the region map fm says of each Gaussian's label: CONFIRMED where a region in the
    window around its pixel carries it, CONTRADICTED where every cell of the window lies inside some
    region and none carries it, NO_EVIDENCE otherwise (no label, or an uncovered window without it).

    Args:
        decoded: [S, d] the Gaussians' decoded features in fm's model space.
        pix: [S, 2] (v, u) their pixels in fm's image.
        fm: the keyframe's region features (all-zero cells = outside every region).
        radius_px: half-width of the window in image pixels (rounded up to whole grid cells).
        min_cos: a region this close to a Gaussian's feature carries its label.
    """
    ifm = fm if isinstance(fm, IndexedFeatureMap) else index_feature_map(fm)
    if int(decoded.shape[0]) == 0 or ifm is None or ifm.table.shape[0] == 0:
        return np.full(int(decoded.shape[0]), NO_EVIDENCE, dtype=np.int8)
    carried = (F.normalize(decoded.float(), dim=1) @ F.normalize(ifm.table.float(), dim=1).T).numpy() >= min_cos
    return _verdict(carried, (decoded.abs().sum(1) > 0).numpy(), pix, ifm, radius_px)


def _verdict(carried: np.ndarray, labelled: np.ndarray, pix: np.ndarray, ifm: IndexedFeatureMap,
             radius_px: int) -> np.ndarray:
    """label_verdict from carried [S, T] bool (Gaussian i's label carried by region label table[j])
    and labelled [S] bool (Gaussian i has a label)."""
    S = len(labelled)
    out = np.full(S, NO_EVIDENCE, dtype=np.int8)
    index = ifm.index.numpy().astype(np.int64)  # [h, w], -1 = no region
    h, w = index.shape
    H, W = ifm.image_size
    r = int(np.ceil(radius_px * max(h / H, w / W)))
    size = 2 * r + 1
    ci, cj = cell_index(pix[:, 1], pix[:, 0], (H, W), (h, w))  # the cells FeatureMap.sample reads
    # outside the grid counts as uncovered: a window at the border gives no evidence against
    covered = ndimage.minimum_filter((index >= 0).astype(np.uint8), size=size, mode="constant", cval=0)[ci, cj] > 0
    cand = np.flatnonzero(labelled)
    if len(cand) == 0:
        return out
    supported = np.zeros(len(cand), dtype=bool)
    for lab in np.unique(index[index >= 0]):
        c = carried[cand, lab]
        if not c.any():
            continue
        near = ndimage.maximum_filter((index == lab).astype(np.uint8), size=size, mode="constant", cval=0)
        supported |= c & (near[ci[cand], cj[cand]] > 0)
    out[cand[supported]] = CONFIRMED
    out[cand[~supported & covered[cand]]] = CONTRADICTED
    return out


@torch.no_grad()
def top_labels(queries: torch.Tensor, W_m: torch.Tensor, bank_rows: torch.Tensor, bank_unit: torch.Tensor,
               tau: float) -> torch.Tensor:
    """Each principal query's label [S, d]: its top attention row of the bank (rows [t, d], unit
    rows [t, d]) for queries [S, l]; zero for a zero query. The top row, not the decoded blend: a
    young query's blend lies close to no label at all."""
    lab = bank_rows[attention_logits(queries.float(), W_m, bank_unit, tau).argmax(-1)].clone()
    lab[queries.norm(dim=1) == 0] = 0.0
    return lab


def carried_there(kf: Keyframe, model: str, means: torch.Tensor, labels: torch.Tensor, min_cos: float) -> np.ndarray:
    """[G] True where keyframe kf's region map of model, at the pixels of means [G, 3], carries
    labels [G, d] (cosine >= min_cos): kf saw those Gaussians as what they were labelled."""
    fm = kf.features.get(model)
    if fm is None or len(means) == 0:
        return np.zeros(len(means), dtype=bool)
    pix = project_pixels(kf.K, kf.T_world_cam, means, kf.size)
    there = fm.sample(torch.from_numpy(pix[:, ::-1].astype(np.float32).copy()), mode="nearest")
    return (F.cosine_similarity(there, labels.float(), dim=1) >= min_cos).numpy()


@torch.no_grad()
def label_verdicts(kf: Keyframe, means: torch.Tensor, queries: dict, W: dict, banks: dict, tau: float,
                   radius_px: int, min_cos: float) -> np.ndarray:
    """[S] int8 label_verdict of kf's region maps for the Gaussians means [S, 3] on its surface:
    CONTRADICTED when a model contradicts and none confirms. queries {model: [S, l]} their principal
    queries, W {model: W_m}, banks {model: MemoryBank} the region models to read (kf carries their
    features).

    Labels are bank rows (top_labels), so which region labels carry them is decided once per row,
    not per Gaussian: a [S, d] label tensor per keyframe cost ~150 ms at 37k surface Gaussians."""
    pix = project_pixels(kf.K, kf.T_world_cam, means, kf.size)
    out = np.full(len(means), NO_EVIDENCE, dtype=np.int8)
    for m, b in banks.items():
        ifm = kf.features[m]
        ifm = ifm if isinstance(ifm, IndexedFeatureMap) else index_feature_map(ifm)
        if ifm is None or ifm.table.shape[0] == 0 or len(means) == 0:
            continue
        q = queries[m].float()
        top = attention_logits(q, W[m], b.unit_rows, tau).argmax(-1).numpy()  # [S]
        labelled = (q.norm(dim=1) > 0).numpy() & (b.rows.abs().sum(1) > 0).numpy()[top]
        row_carried = (F.normalize(b.rows.float(), dim=1) @ F.normalize(ifm.table.float(), dim=1).T).numpy() >= min_cos
        v = _verdict(row_carried[top], labelled, pix, ifm, radius_px)
        out = np.where((v == CONFIRMED) | (out == CONFIRMED), CONFIRMED, np.minimum(out, v))
    return out


def seen_as_they_were(kf: Keyframe, means: torch.Tensor, scales: torch.Tensor, labels: dict,
                      fc: FreeSpaceConfig) -> torch.Tensor:
    """[G] bool: the removed Gaussians (means [G, 3], scales [G, 3]) that keyframe kf saw on its
    surface as they were. Those removed by label change (labels {model: [G, d]}, zero rows for the
    others) count only where kf's own region carried their label: seen inside the table's region
    they were label bleed, not an old state."""
    seen = classify(kf.depth, kf.K, kf.T_world_cam, means, scales, fc, evidence=False) == SURFACE
    for m, lab in labels.items():
        by_label = torch.nonzero(seen & (lab.abs().sum(1) > 0)).flatten()
        if len(by_label):
            seen[by_label[torch.from_numpy(~carried_there(kf, m, means[by_label], lab[by_label],
                                                          fc.label_min_cos))]] = False
    return seen
