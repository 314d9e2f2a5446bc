"""Slow, obviously correct numpy references for the CORE ops (loops over regions / pixels).

Each function follows the paper / official code text literally, with no vectorization
tricks, so that the fast implementations in ``posthoc`` can be compared against them.
Inputs are numpy arrays already validated and normalized (float64 where it helps).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.ndimage as ndi


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


# ----------------------------------------------------------------------------- CSL


def fuse(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """CSL Eq. 3 with a loop over images and regions: probs (B,C,H,W), labels (B,H,W)."""
    out = probs.astype(np.float64).copy()
    for b in range(probs.shape[0]):
        for n in np.unique(labels[b]):
            if n < 0:
                continue
            m = labels[b] == n
            for c in range(probs.shape[1]):
                d = probs[b, c].astype(np.float64)
                out[b, c][m] = d[m].mean() * d[m]
    return out


def region_means(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    B, C = values.shape[:2]
    out = np.zeros((B, n, C))
    for b in range(B):
        for r in range(n):
            m = labels[b] == r
            if m.any():
                for c in range(C):
                    out[b, r, c] = values[b, c][m].astype(np.float64).mean()
    return out


def soft_assign(r: np.ndarray, v: np.ndarray) -> np.ndarray:
    """CSL Eq. 2 pixel by pixel: argmax_n r*v with ties to the lowest n."""
    B, N, H, W = r.shape
    out = np.full((B, H, W), -1, np.int64)
    for b in range(B):
        for y in range(H):
            for x in range(W):
                best, arg = -1.0, -1
                for n in range(N):
                    s = np.float32(r[b, n, y, x]) * np.float32(v[b, n])
                    if s > best:
                        best, arg = s, n
                out[b, y, x] = arg
    return out


def hard_assign(r: np.ndarray, v: np.ndarray, mask_threshold: float, validity_threshold: float) -> np.ndarray:
    """Paint kept masks in ascending validity (equal validity: higher n first, so lowest n ends on top)."""
    B, N, H, W = r.shape
    out = np.full((B, H, W), -1, np.int64)
    for b in range(B):
        order = sorted(range(N), key=lambda n: (v[b, n], -n))
        for n in order:
            if v[b, n] > validity_threshold:
                out[b][r[b, n] > mask_threshold] = n
    return out


def split_components(labels: np.ndarray, connectivity: int = 8, min_size: int = 0) -> np.ndarray:
    """Per region scipy.ndimage.label, then renumber by the raster index of each component's first pixel."""
    B, H, W = labels.shape
    st = np.ones((3, 3)) if connectivity == 8 else ndi.generate_binary_structure(2, 1)
    out = np.full((B, H, W), -1, np.int64)
    for b in range(B):
        comps = []  # (first raster index, mask)
        for n in np.unique(labels[b]):
            if n < 0:
                continue
            cc, k = ndi.label(labels[b] == n, structure=st)
            for i in range(1, k + 1):
                m = cc == i
                if m.sum() < min_size:
                    continue
                comps.append((int(np.flatnonzero(m.reshape(-1))[0]), m))
        comps.sort(key=lambda t: t[0])
        for i, (_, m) in enumerate(comps):
            out[b][m] = i
    return out


# ----------------------------------------------------------------------------- Mask2Anomaly


def bilinear_resize(x: np.ndarray, H: int, W: int) -> np.ndarray:
    """align_corners=False bilinear resize of (h,w), the half-pixel convention, written out."""
    h, w = x.shape
    out = np.zeros((H, W))
    for Y in range(H):
        sy = max((Y + 0.5) * h / H - 0.5, 0.0)
        y0 = min(math.floor(sy), h - 1)
        y1 = min(y0 + 1, h - 1)
        wy = sy - y0
        for X in range(W):
            sx = max((X + 0.5) * w / W - 0.5, 0.0)
            x0 = min(math.floor(sx), w - 1)
            x1 = min(x0 + 1, w - 1)
            wx = sx - x0
            out[Y, X] = (
                (1 - wy) * ((1 - wx) * x[y0, x0] + wx * x[y0, x1]) + wy * ((1 - wx) * x[y1, x0] + wx * x[y1, x1])
            )
    return out


def refinement_mask(mask_logits, class_logits, suppress_ids, score_threshold, mask_threshold, min_masks, size):
    """Official semantic_inference + anomaly_inference, one image (mask_logits (N,h,w), class_logits (N,K+1))."""
    N, K1 = class_logits.shape
    K = K1 - 1
    H, W = size
    probs = softmax(class_logits.astype(np.float64), axis=-1)
    kept = []
    for n in range(N):
        lab = int(np.argmax(probs[n]))
        sc = probs[n, lab]
        if lab != K and sc > score_threshold and lab in set(suppress_ids):
            m = mask_logits[n].astype(np.float64)
            if m.shape != (H, W):
                m = bilinear_resize(m, H, W)
            kept.append(sc / (1 + np.exp(-m)))
    if len(kept) < min_masks:
        return np.zeros((H, W))
    return (np.max(np.stack(kept), axis=0) >= mask_threshold).astype(np.float64)


def mine_unknown_instances(mask_logits, class_logits, stuff_ids, thing_ids, threshold, mask_threshold):
    """Default readings of posthoc.mine_unknown_instances, one image, loops over components and masks."""
    N, K1 = class_logits.shape
    K = K1 - 1
    H, W = mask_logits.shape[-2:]
    p = softmax(class_logits.astype(np.float64), axis=-1)
    conf = np.zeros((H, W))
    for n in range(N):
        if np.argmax(p[n]) != K:
            conf = np.maximum(conf, p[n, :K].max() / (1 + np.exp(-mask_logits[n].astype(np.float64))))
    cand = (1 - conf) > threshold
    cc, M = ndi.label(cand, structure=np.ones((3, 3)))
    out = np.full((H, W), -1, np.int64)
    nxt = 0
    # ndi.label numbers components in raster order of their first pixel
    for i in range(1, M + 1):
        comp = cc == i
        es, et, cnt = 0.0, 0.0, 0
        for n in range(N):
            mk = (1 / (1 + np.exp(-mask_logits[n].astype(np.float64)))) > mask_threshold
            inter = (comp & mk).sum()
            union = (comp | mk).sum()
            if union and inter / union > 0:
                ps, pt = p[n, list(stuff_ids)], p[n, list(thing_ids)]
                es += -(ps * np.log(np.maximum(ps, 1e-12))).sum()
                et += -(pt * np.log(np.maximum(pt, 1e-12))).sum()
                cnt += 1
        if cnt and es / cnt > et / cnt:
            out[comp] = nxt
            nxt += 1
    return out


# ----------------------------------------------------------------------------- OVeNet


def offset_resample(s: np.ndarray, o: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Per-pixel bilinear sampling with border clamping; S_f = (1-F) S + F S_s. s (B,C,H,W), o (B,2,H,W) pixels."""
    B, C, H, W = s.shape
    out = np.zeros(s.shape)
    for b in range(B):
        for y in range(H):
            for x in range(W):
                px = min(max(x + o[b, 0, y, x], 0.0), W - 1.0)
                py = min(max(y + o[b, 1, y, x], 0.0), H - 1.0)
                x0, y0 = math.floor(px), math.floor(py)
                x1, y1 = min(x0 + 1, W - 1), min(y0 + 1, H - 1)
                wx, wy = px - x0, py - y0
                for c in range(C):
                    v = (1 - wy) * ((1 - wx) * s[b, c, y0, x0] + wx * s[b, c, y0, x1]) + wy * (
                        (1 - wx) * s[b, c, y1, x0] + wx * s[b, c, y1, x1]
                    )
                    fb = f[b, 0, y, x]
                    out[b, c, y, x] = (1 - fb) * s[b, c, y, x] + fb * v
    return out


# ----------------------------------------------------------------------------- SML


def sml_stats(logits: np.ndarray):
    """calculate_statistics.py: per class mean / unbiased var of the max logit over pixels predicted as it."""
    K = logits.shape[1]
    mx = logits.max(axis=1).reshape(-1).astype(np.float64)
    pred = logits.argmax(axis=1).reshape(-1)
    mean, std = np.zeros(K), np.zeros(K)
    for c in range(K):
        v = mx[pred == c]
        mean[c] = v.mean()
        std[c] = np.sqrt(v.var(ddof=1))
    return mean, std


def boundary_suppression(x: np.ndarray, pred: np.ndarray, width: int = 4, iterations: int = 4) -> np.ndarray:
    """One (H,W) image; the official BoundarySuppressionWithSmoothing first stage written with loops."""
    H, W = x.shape
    bnd = np.zeros((H, W), bool)
    for y in range(H):
        for xx in range(W):
            cross = [pred[yy, xc] for yy, xc in ((y, xx), (y - 1, xx), (y + 1, xx), (y, xx - 1), (y, xx + 1))
                     if 0 <= yy < H and 0 <= xc < W]
            sq = [pred[yy, xc] for yy in range(y - 1, y + 2) for xc in range(xx - 1, xx + 2)
                  if 0 <= yy < H and 0 <= xc < W]
            bnd[y, xx] = max(cross) != min(sq)
    out = x.astype(np.float64).copy()
    step = width // iterations
    by, bx = np.nonzero(bnd)
    for it in range(iterations):
        r = 0 if (width == 0 or it == iterations - 1) else width - step * it - 1
        exp = np.zeros((H, W), bool)
        for y in range(H):
            for xx in range(W):
                exp[y, xx] = bool(len(by)) and bool(np.any(np.abs(by - y) + np.abs(bx - xx) <= r))
        nb = ~exp
        prev = out.copy()
        new = prev.copy()
        for y in range(H):
            for xx in range(W):
                if nb[y, xx]:
                    continue
                s, cnt = 0.0, 0
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        yy = min(max(y + dy, 0), H - 1)  # replicate padding
                        xc = min(max(xx + dx, 0), W - 1)
                        if nb[yy, xc]:
                            s += prev[yy, xc]
                            cnt += 1
                if cnt:
                    new[y, xx] = s / cnt
        out = new
    return out


def dilated_smoothing(x: np.ndarray, kernel_size: int = 7, sigma: float = 1.0, dilation: int = 6) -> np.ndarray:
    """One (H,W) image: replicate padding dilation*(k//2), then a dilated normalized Gaussian."""
    c = (kernel_size - 1) / 2
    g = np.fromfunction(lambda i, j: np.exp(-((i - c) ** 2 + (j - c) ** 2) / (2 * sigma**2)),
                        (kernel_size, kernel_size))
    g /= g.sum()
    pad = dilation * (kernel_size // 2)
    xp = np.pad(x.astype(np.float64), pad, mode="edge")
    H, W = x.shape
    out = np.zeros((H, W))
    for i in range(kernel_size):
        for j in range(kernel_size):
            out += g[i, j] * xp[i * dilation : i * dilation + H, j * dilation : j * dilation + W]
    return out
