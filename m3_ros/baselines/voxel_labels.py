"""The simplest thing that could work: a labelled voxel map (no Gaussians, no training).

Every valid depth pixel votes, in the voxel it lands in, for the detector label of the
region that covers it (or for "no label"). A voxel's label is its majority vote. A text
query is embedded with the same sentence model M3's label path uses; the label whose
embedding is nearest wins, and the answer is the vote-weighted centre of the largest
connected cluster of voxels carrying that label. Fed the same frames, poses and detector
output as the memory, it is the baseline M3 has to beat.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from m3_ros.geometry import backproject
from m3_ros.types import Instance

_BITS = 17  # voxel index bits per axis: +-65536 voxels (+-1.3 km at 2 cm)
_OFF = 1 << (_BITS - 1)
_NONE = 0  # label id of "no detector label here"


@dataclass
class VoxelLabelConfig:
    """Voxel map resolution and query policy."""

    voxel: float = 0.02
    """Voxel edge in metres (the M3 seeding resolution's order)."""
    stride: int = 2
    """Take every stride-th pixel of a frame."""
    min_votes: int = 2
    """A voxel needs this many label votes for its majority to count."""
    cluster_gap: float = 0.045
    """Voxels of one label closer than this (m) belong to one cluster."""


@dataclass
class VoxelAnswer:
    """Answer to a text query: cluster centres best first."""

    points: np.ndarray  # [k, 3] in the map frame
    scores: np.ndarray  # [k] cosine of the query to the cluster's label
    labels: list[str]  # the label of each cluster


class VoxelLabelMap:
    """Majority-vote labels per voxel; queries by text embedding similarity."""

    def __init__(self, cfg: VoxelLabelConfig | None = None) -> None:
        self.cfg = cfg or VoxelLabelConfig()
        if self.cfg.voxel <= 0 or self.cfg.stride < 1:
            raise ValueError(f"voxel must be > 0 and stride >= 1, got {self.cfg.voxel}, {self.cfg.stride}")
        self.label_names: list[str] = ["<none>"]
        self._label_id: dict[str, int] = {}
        self._codes = np.zeros(0, np.int64)  # voxel key * n_labels_cap + label id, unique
        self._counts = np.zeros(0, np.int64)
        self._cap = 1 << 10  # label ids per voxel key
        self.frames = 0

    def _lid(self, label: str) -> int:
        if label not in self._label_id:
            if len(self.label_names) >= self._cap:
                raise ValueError(f"voxel map holds at most {self._cap - 1} distinct labels")
            self._label_id[label] = len(self.label_names)
            self.label_names.append(label)
        return self._label_id[label]

    def integrate(self, depth: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray,
                  instances: list[Instance]) -> None:
        """Add one frame's votes.

        Args:
            depth: [H, W] metric z, 0 = no return.
            K: [3, 3] intrinsics.
            T_world_cam: [4, 4] optical camera -> map frame (what odometry says).
            instances: the detector's regions for this frame.
        """
        H, W = depth.shape
        label_img = np.zeros((H, W), np.int64)
        # paint largest first so the smaller region on top wins overlaps (as the label features do)
        for inst in sorted(instances, key=lambda i: -int(np.count_nonzero(i.mask))):
            if inst.label.strip():
                label_img[np.asarray(inst.mask, bool)] = self._lid(inst.label)
        pts, pix = backproject(depth, K, T_world_cam, stride=self.cfg.stride)
        if len(pts) == 0:
            return
        idx = np.floor(pts / self.cfg.voxel).astype(np.int64) + _OFF
        key = (idx[:, 0] << (2 * _BITS)) | (idx[:, 1] << _BITS) | idx[:, 2]
        codes = key * self._cap + label_img[pix[:, 0], pix[:, 1]]
        allc = np.concatenate([self._codes, codes])
        allw = np.concatenate([self._counts, np.ones(len(codes), np.int64)])
        self._codes, inv = np.unique(allc, return_inverse=True)
        self._counts = np.bincount(inv, weights=allw).astype(np.int64)
        self.frames += 1

    def voxels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Majority label per voxel: (centres [V, 3], label id [V], votes of that label [V])."""
        if len(self._codes) == 0:
            return np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0, np.int64)
        key, lab = self._codes // self._cap, self._codes % self._cap
        # codes are sorted by key, then label: the majority is the max count within each key run
        order = np.lexsort((self._counts, key))  # by key, then count ascending
        key_o = key[order]
        last = np.r_[key_o[1:] != key_o[:-1], True]
        winners = order[last]
        k = key[winners]
        ijk = np.stack([(k >> (2 * _BITS)) & ((1 << _BITS) - 1), (k >> _BITS) & ((1 << _BITS) - 1),
                        k & ((1 << _BITS) - 1)], axis=1) - _OFF
        return (ijk + 0.5) * self.cfg.voxel, lab[winners], self._counts[winners]

    def ground(self, text_emb: torch.Tensor, encode_labels, top_k: int = 1) -> VoxelAnswer:
        """Text embedding [d] -> the best label's clusters, biggest first.

        ``encode_labels(list[str]) -> [n, d]`` unit-norm embeddings from the text model.
        ValueError when the map has no labelled voxel.
        """
        centres, lab, votes = self.voxels()
        keep = (lab != _NONE) & (votes >= self.cfg.min_votes)
        if not keep.any():
            raise ValueError("the voxel map holds no labelled voxel yet")
        centres, lab, votes = centres[keep], lab[keep], votes[keep]
        present = np.unique(lab)
        emb = torch.as_tensor(encode_labels([self.label_names[i] for i in present])).float()
        q = torch.as_tensor(text_emb).float()
        cos = (emb @ (q / q.norm().clamp_min(1e-12))).numpy()  # [n_present]
        pts_out, sc_out, lab_out = [], [], []
        for j in np.argsort(-cos):
            sel = lab == present[j]
            for c in self._clusters(centres[sel], votes[sel]):
                pts_out.append(c)
                sc_out.append(float(cos[j]))
                lab_out.append(self.label_names[present[j]])
            if len(pts_out) >= top_k:
                break
        return VoxelAnswer(np.asarray(pts_out[:top_k]), np.asarray(sc_out[:top_k]), lab_out[:top_k])

    def _clusters(self, pts: np.ndarray, w: np.ndarray) -> list[np.ndarray]:
        """Vote-weighted centres of connected clusters [m, 3], most votes first."""
        pairs = cKDTree(pts).query_pairs(self.cfg.cluster_gap, output_type="ndarray")
        n = len(pts)
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n)) if len(pairs) \
            else coo_matrix((n, n))
        _, comp = connected_components(graph, directed=False)
        mass = np.bincount(comp, weights=w)
        out = []
        for c in np.argsort(-mass):
            m = comp == c
            out.append((pts[m] * w[m, None]).sum(0) / w[m].sum())
        return out
