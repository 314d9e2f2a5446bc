"""Slow references for posthoc.peers, transcribed from the peers' official code (loops, cv2, numpy).

* Objectomaly: hon121215/Objectomaly ``anomaly_utils/anomaly_inference.py`` (OASC + MBP).
* UGainS: kumuji/ugains ``models/sam_sampling.py`` (``batched_mask_nms``, ``test_step``),
  pointnet2's furthest point sampling.
* Maskomaly: jan-ackermann/Maskomaly ``maskomaly/model.py`` (``get_soft_mask``).
"""
from __future__ import annotations

import cv2
import numpy as np


def objectomaly(coarse: np.ndarray, masks: list[np.ndarray], sharpen: bool = True) -> np.ndarray:
    """One image: coarse (H,W) float32, masks: list of (H,W) bool; official loops."""
    outputs = coarse[None].astype(np.float32)
    masks = sorted(masks, key=lambda m: int(m.sum()))
    upd = outputs.copy()
    for mask in masks:
        if not mask.any():
            continue
        upd[0][mask] = np.mean(outputs[0][mask])
    if not sharpen:
        return upd[0]
    lap = upd.copy()
    edges = cv2.Laplacian(lap[0], cv2.CV_32F)
    for i in range(1, lap.shape[1] - 1):
        for j in range(1, lap.shape[2] - 1):
            if edges[i, j] > 0:
                sur = lap[0][i - 1:i + 2, j - 1:j + 2][edges[i - 1:i + 2, j - 1:j + 2] == 0]
                if sur.size > 0:
                    lap[0][i, j] = np.mean(sur)
    return cv2.GaussianBlur(lap[0], (7, 7), sigmaX=1, sigmaY=1)


def fps(points: np.ndarray, k: int) -> list[int]:
    """Furthest point sampling, pointnet2 style: start at 0, then argmax of the min distance."""
    chosen = [0]
    while len(chosen) < min(k, len(points)):
        best, best_d = -1, -1.0
        for p in range(len(points)):
            d = min(float(((points[p] - points[c]) ** 2).sum()) for c in chosen)
            if d > best_d:
                best, best_d = p, d
        chosen.append(best)
    return chosen


def mask_nms(masks: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Official batched_mask_nms (returns the kept set, sorted)."""
    order = np.argsort(-scores, kind="stable")
    removed: list[int] = []
    for hi in order:
        if hi in removed:
            continue
        for j in set(range(len(masks))) - set(removed):
            if j == hi:
                continue
            tp = np.logical_and(masks[j], masks[hi]).sum()
            if tp == 0:
                continue
            iou = tp / np.logical_or(masks[j], masks[hi]).sum()
            if iou > thr:
                removed.append(j)
    return sorted(set(range(len(masks))) - set(removed))


def ugains_fuse(a: np.ndarray, masks: np.ndarray, num_points: int, thr: float = 0.7) -> np.ndarray:
    """One image: a (H,W), masks (Q,H,W) bool -> the official U + a, under the documented affine map."""
    masks = masks[masks.reshape(len(masks), -1).any(1)]
    scores = np.array([a[m].mean() for m in masks], np.float64)
    keep = mask_nms(masks, scores, thr) if len(masks) else []
    u = np.zeros(a.shape, np.float64)
    for q in keep:
        u += scores[q] * masks[q]
    u[u == 0] = -1.0
    return (u + a + 1.0) / (num_points + 2.0)


def maskomaly(mask_pred: np.ndarray, mask_cls: np.ndarray, anomaly_q=(), ground_q=()) -> np.ndarray:
    """One image, official get_soft_mask: mask_pred (N,h,w) probabilities, mask_cls (N,K+1) probabilities."""
    void = mask_cls.shape[1] - 1
    soft = np.ones_like(mask_pred[0], dtype=np.float32)
    soft2 = np.zeros_like(mask_pred[0], dtype=np.float32)
    for ind in anomaly_q:
        soft2 = np.maximum(soft2, mask_pred[ind] * np.max(mask_cls[ind]))
    for i in range(mask_cls.shape[0]):
        mi = np.argmax(mask_cls[i])
        if mi != void and mask_cls[i][mi] > 0.7:
            soft = np.minimum(soft, 1 - mask_pred[i] * mask_cls[i][mi])
    pos = mask_pred[np.argmax(mask_cls, axis=1) != void]
    for i in range(pos.shape[0]):
        for j in range(i + 1, pos.shape[0]):
            nb = np.clip((1 - np.logical_and(pos[i] > 0.1, pos[j] > 0.1)) + 0.0, 0, 1)
            soft = np.minimum(nb, soft)
    for i in ground_q:
        mi = np.argmax(mask_cls[i])
        soft = np.minimum(soft, 1 - mask_pred[i] * mask_cls[i][mi])
    return 0.6 * soft + 0.4 * soft2
