"""Slow, obviously correct numpy references for mean-shift on the projective sphere and the
multi-resolution merge (Dille et al., Eq. 1-2 and §4.1; readings in posthoc/meanshift.py and
posthoc/multires.py). One seed, one segment, one pixel at a time; float64.
"""
from __future__ import annotations

import math

import numpy as np


def _canon(m: np.ndarray) -> np.ndarray:
    return -m if m[np.argmax(np.abs(m))] < 0 else m


def meanshift_lines(points: np.ndarray, seeds: np.ndarray, angle_deg: float = 45.0, max_iter: int = 300,
                    tol: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Flat-kernel mean-shift of every seed, one at a time, on lines: points (P,F), seeds (S,F).

    Neighbours of m: |x.m| >= cos(angle). Mean: sum of sign(x.m) x, normalized. Stop when the line
    moved by at most tol * 2 sin(angle/2) or has no neighbours. Modes ranked by (count at the final
    mode, canonical coordinates) descending; a mode suppresses lower ones with |cos| >= cos(angle).
    Returns labels (P,) = argmax_k |x.m_k| and the modes (K,F).
    """
    x = points.astype(np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    c = math.cos(math.radians(angle_deg))
    stop = tol * 2.0 * math.sin(math.radians(angle_deg) / 2.0)
    found: dict = {}
    for s in seeds.astype(np.float64):
        m = _canon(s / max(np.linalg.norm(s), 1e-12))
        for _ in range(max_iter):
            d = x @ m
            near = np.abs(d) >= c
            if not near.any():
                break
            new = (np.sign(d[near])[:, None] * x[near]).sum(0)
            new = _canon(new / np.linalg.norm(new))
            moved = math.sqrt(max(0.0, 2.0 - 2.0 * abs(float(new @ m))))
            m = new
            if moved <= stop:
                break
        count = int((np.abs(x @ m) >= c).sum())
        if count:
            found[tuple(m)] = count
    items = sorted(found.items(), key=lambda t: (t[1], t[0]), reverse=True)
    kept: list = []
    for centre, _ in items:
        v = np.asarray(centre)
        if all(abs(float(v @ k)) < c for k in kept):
            kept.append(v)
    modes = np.asarray(kept)
    labels = np.asarray([int(np.argmax(np.abs(modes @ p))) for p in x])
    return labels, modes


def upsample_nearest(lab: np.ndarray, H: int, W: int) -> np.ndarray:
    h, w = lab.shape
    out = np.empty((H, W), dtype=np.int64)
    for i in range(H):
        for j in range(W):
            out[i, j] = lab[i * h // H, j * w // W]
    return out


def merge_levels(labels_by_level: list, iou_threshold: float = 0.8, contain_threshold: float = 0.9,
                 min_size: int = 0) -> np.ndarray:
    """Dille et al. §4.1 as read in posthoc/multires.py, with one boolean mask per segment.

    labels_by_level: list of (h_i,w_i) int maps, coarse to fine (-1 = no segment). Returns (H,W).
    """
    H, W = labels_by_level[-1].shape
    cur = upsample_nearest(np.asarray(labels_by_level[0]), H, W)
    next_id = int(cur.max()) + 1
    for lvl in labels_by_level[1:]:
        new = upsample_nearest(np.asarray(lvl), H, W)
        before = cur.copy()
        for n in np.unique(new):
            if n < 0:
                continue
            mask_n = new == n
            size = int(mask_n.sum())
            if size < max(min_size, 1):
                continue
            decided = False
            for c in np.unique(before):  # replace: the existing segment with a very high IoU keeps its id
                if c < 0:
                    continue
                mask_c = before == c
                iou = (mask_n & mask_c).sum() / (mask_n | mask_c).sum()
                if iou >= iou_threshold:
                    cur[mask_n] = c
                    decided = True
                    break
            if decided:
                continue
            for c in np.unique(before):  # subdivide: contained in one existing segment -> a new id
                if c < 0:
                    continue
                if (mask_n & (before == c)).sum() >= contain_threshold * size:
                    cur[mask_n] = next_id
                    next_id += 1
                    break
    out = np.full((H, W), -1, dtype=np.int64)
    for k, v in enumerate(np.unique(cur[cur >= 0])):
        out[cur == v] = k
    return out
