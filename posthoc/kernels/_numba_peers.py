"""CPU kernels (numba) for the training-free peers of :mod:`posthoc.peers` (Objectomaly).

Semantics are those of the torch path in :mod:`posthoc.peers` (the fallback and reference);
this module only makes them fast. Every kernel performs, per element, the same IEEE float
operations in the same order as that path (no fast-math), so the results agree bit for bit:

* :func:`objectomaly_np` -- Objectomaly's OASC: float64 region sums in raster order
  (as ``index_add_``), the mean rounded to float32, painted on the region's pixels (the
  label check, >= -1, and the number of regions come from one pass over the labels); then
  MBP as below.
* :func:`sharpen_blur_np` -- Objectomaly's MBP: the 3x3 Laplacian with reflect-101 border
  and the flat-neighbour mean of :func:`posthoc.peers._laplacian_sharpen`, then the
  separable Gaussian of :func:`posthoc.peers._gaussian_blur` and the clamp to [0,1]. The
  Gaussian taps accumulate in tap order with one fused multiply-add per tap, which is what
  torch's CPU ``conv2d`` computes for these one-channel separable filters (tests check the
  two agree bit for bit).

The torch path makes ~20 full-size temporaries (the 3x3 neighbourhood loop, two
``conv2d`` calls on padded copies); here each stage is one pass over the image, rows in
parallel, through four image-sized scratch buffers that are kept from call to call.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir  # type: ignore[import-untyped]
from numba import njit, prange, types
from numba.extending import intrinsic

from ._numba import _serialized


def _fma32_typer(typingctx, a, b, c):
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f32], ir.FunctionType(f32, [f32, f32, f32]))
        return builder.call(fn, args)

    return sig, codegen


#: ``_fma32(a, b, c)``: float32 ``a * b + c`` with one rounding (LLVM's ``llvm.fma.f32``: the FMA
#: instruction where the CPU has it), callable from the kernels below
_fma32: Any = intrinsic(_fma32_typer)


@njit(cache=True, parallel=True, nogil=True)
def _paint(s, lab, cal, nreg, bad):
    """s (B,P) float32, lab (B,P) int32/int64 -> cal (B,P): region means (float64 sums) or s at -1."""
    B, P = s.shape
    for b in prange(B):
        mx = -1
        lo = 0
        row = lab[b]
        for p in range(P):
            v = row[p]
            if v < lo:
                lo = v
            if v > mx:
                mx = v
        if lo < -1:
            bad[b] = lo
            continue
        n = mx + 1
        nreg[b] = n
        sums = np.zeros(n, np.float64)
        cnt = np.zeros(n, np.int64)
        srow = s[b]
        p = 0
        while p < P:  # runs of equal labels: the region's sum stays in a register, same order of additions
            v = row[p]
            e = p + 1
            while e < P and row[e] == v:
                e += 1
            if v >= 0:
                acc = sums[v]
                for q in range(p, e):
                    acc += np.float64(srow[q])
                sums[v] = acc
                cnt[v] += e - p
            p = e
        means = np.empty(n, np.float32)
        for r in range(n):
            means[r] = np.float32(sums[r] / np.float64(max(cnt[r], 1)))
        crow = cal[b]
        for p in range(P):
            v = row[p]
            crow[p] = means[v] if v >= 0 else srow[p]


@njit(cache=True, inline="always")
def _reflect(i, n):
    """Reflect-101 index (torch ``mode="reflect"``, cv2's default border) for a pad smaller than n."""
    if i < 0:
        return -i
    if i >= n:
        return 2 * (n - 1) - i
    return i


@njit(cache=True, inline="always")
def _border(i, n, replicate):
    if replicate:
        return min(max(i, 0), n - 1)
    return _reflect(i, n)


@njit(cache=True, parallel=True, nogil=True)
def _laplacian(a, lap):
    """(B,H,W) -> (B,H,W) float32 ``(up + down) + (left + right) - 4c``, reflect-101 border (H,W >= 2)."""
    B, H, W = a.shape
    four = np.float32(4.0)
    for it in prange(B * H):
        b = it // H
        y = it - b * H
        up = a[b, _reflect(y - 1, H)]
        dn = a[b, _reflect(y + 1, H)]
        row = a[b, y]
        out = lap[b, y]
        out[0] = (up[0] + dn[0]) + (row[1] + row[1]) - four * row[0]
        # interior: slices of equal length, so LLVM vectorizes without index checks
        n = W - 2
        u, d, left, c, right, o = up[1:1 + n], dn[1:1 + n], row[0:n], row[1:1 + n], row[2:2 + n], out[1:1 + n]
        for x in range(n):
            o[x] = (u[x] + d[x]) + (left[x] + right[x]) - four * c[x]
        out[W - 1] = (up[W - 1] + dn[W - 1]) + (row[W - 2] + row[W - 2]) - four * row[W - 1]


@njit(cache=True, parallel=True, nogil=True)
def _sharpen(a, lap, out):
    """Pixels off the 1-pixel frame with Laplacian > 0 take the mean of their 3x3 neighbours with Laplacian == 0."""
    B, H, W = a.shape
    for it in prange(B * H):
        b = it // H
        y = it - b * H
        src = a[b, y]
        dst = out[b, y]
        for x in range(W):
            dst[x] = src[x]
        if y == 0 or y == H - 1:
            continue
        lrow = lap[b, y]
        for x in range(1, W - 1):
            if not lrow[x] > 0:
                continue
            num = np.float32(0.0)
            cnt = np.float32(0.0)
            for dy in range(-1, 2):  # the torch loop's order: dy, then dx
                ar = a[b, y + dy]
                lr = lap[b, y + dy]
                for dx in range(-1, 2):
                    if lr[x + dx] == 0:
                        num += ar[x + dx]
                        cnt += np.float32(1.0)
            if cnt > 0:
                dst[x] = num / cnt


@njit(cache=True, parallel=True, nogil=True)
def _blur_rows(a, k, replicate, out):
    """Horizontal pass: out[b,y,x] = sum_j k[j] * a[b,y,border(x+j-r)], in tap order, one FMA per tap.

    Taps outer, pixels inner (the per-pixel order of operations is unchanged), so the
    interior loop vectorizes; the r border pixels on each side take their taps by index.
    """
    B, H, W = a.shape
    K = k.shape[0]
    r = K // 2
    lo = min(r, W)
    hi = max(lo, W - r)  # interior [lo, hi): every tap inside the row
    for it in prange(B * H):
        b = it // H
        y = it - b * H
        row = a[b, y]
        dst = out[b, y]
        for x in range(W):
            dst[x] = np.float32(0.0)
        n = hi - lo
        o = dst[lo:hi]
        for j in range(K):
            kj = k[j]
            src = row[lo + j - r:lo + j - r + n]
            for x in range(n):
                o[x] = _fma32(kj, src[x], o[x])
        for x in range(W):
            if lo <= x < hi:
                continue
            acc = np.float32(0.0)
            for j in range(K):
                acc = _fma32(k[j], row[_border(x + j - r, W, replicate)], acc)
            dst[x] = acc


@njit(cache=True, parallel=True, nogil=True)
def _blur_cols_clamp(a, k, replicate, out):
    """Vertical pass (same accumulation) and the clamp to [0,1]: out (B,1,H,W)."""
    B, H, W = a.shape
    K = k.shape[0]
    r = K // 2
    for it in prange(B * H):
        b = it // H
        y = it - b * H
        dst = out[b, 0, y]
        for x in range(W):
            dst[x] = np.float32(0.0)
        for j in range(K):
            src = a[b, _border(y + j - r, H, replicate)]
            kj = k[j]
            for x in range(W):
                dst[x] = _fma32(kj, src[x], dst[x])
        for x in range(W):
            v = dst[x]
            dst[x] = min(max(v, np.float32(0.0)), np.float32(1.0))


#: scratch buffers by role, reused from call to call (a fresh 1 MB buffer costs page faults on
#: every call: on the 2-core development machine up to ~3 ms, more than the kernels themselves).
#: Only buffers below ``KEEP_MAX_BYTES`` are kept (four at most, so at most 32 MB stay
#: allocated); larger ones are allocated per call (``kernels._empty_cpu``: huge pages for the
#: largest). Only touched by the ``_serialized`` entry points, so one caller at a time.
_SCRATCH: dict[str, np.ndarray] = {}
KEEP_MAX_BYTES = 8 << 20


def _scratch(role: str, shape: tuple[int, ...]) -> np.ndarray:
    from . import _empty_cpu

    if 4 * int(np.prod(shape)) > KEEP_MAX_BYTES:
        import torch

        _SCRATCH.pop(role, None)
        return _empty_cpu(tuple(int(v) for v in shape), torch.float32).numpy()
    buf = _SCRATCH.get(role)
    if buf is None or buf.shape != shape:
        buf = _SCRATCH[role] = np.empty(shape, np.float32)
    return buf


def _sharpen_blur(a: np.ndarray, k: np.ndarray, out: np.ndarray) -> None:
    B, H, W = a.shape
    src = a
    if H >= 3 and W >= 3:
        lap = _scratch("lap", (B, H, W))
        _laplacian(a, lap)
        src = _scratch("sharp", (B, H, W))
        _sharpen(a, lap, src)
    r = k.shape[0] // 2
    replicate = H <= r or W <= r
    tmp = _scratch("rows", (B, H, W))
    _blur_rows(src, k, replicate, tmp)
    _blur_cols_clamp(tmp, k, replicate, out)


@_serialized
def objectomaly_np(s: np.ndarray, lab: np.ndarray, k: np.ndarray | None) -> tuple[np.ndarray, int | None]:
    """s (B,H,W) float32, lab (B,H,W) int32/int64 (C-contiguous), k (K,) float32 Gaussian taps or None
    -> (out (B,1,H,W) float32, bad minimum label or None).

    OASC: every labelled pixel takes its region's mean of ``s`` (float64 sums, rounded to
    float32), -1 keeps its value. With taps, MBP on the painted map (:func:`_sharpen_blur`);
    without, the painted map. Then the clamp to [0,1]. A label below -1 stops the work and
    is returned (the caller raises); ``out`` is then undefined.
    """
    B, H, W = s.shape
    out = np.empty((B, 1, H, W), np.float32)
    if B == 0 or H * W == 0:
        return out, None
    nreg = np.zeros(B, np.int64)
    bad = np.zeros(B, np.int64)
    cal = _scratch("paint", (B, H, W)) if k is not None else out.reshape(B, H, W)
    _paint(s.reshape(B, H * W), lab.reshape(B, H * W), cal.reshape(B, H * W), nreg, bad)
    lo = int(bad.min())
    if lo < -1:
        return out, lo
    if k is not None:
        _sharpen_blur(cal, k, out)
    else:
        np.clip(out, 0.0, 1.0, out=out)
    return out, None


@_serialized
def sharpen_blur_np(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """a (B,H,W) float32 C-contiguous, k (K,) float32 Gaussian taps -> (B,1,H,W) float32 in [0,1].

    The Laplacian step first (skipped, as in the torch path, when H or W < 3), then the
    Gaussian with reflect-101 borders, or replicate when H or W <= K // 2 (the torch path's
    rule), then the clamp.
    """
    B, H, W = a.shape
    out = np.empty((B, 1, H, W), np.float32)
    if B and H * W:
        _sharpen_blur(a, k, out)
    return out


@njit(cache=True, parallel=True, nogil=True)
def _maskomaly(m, pmax, sel, pos, ground, anomaly, bt, w1, w2, out):
    """Maskomaly's soft map on the masks' grid, one pass over m: out (B,h,w) float32.

    Per pixel, with conf_q = m_q * pmax_q (float32): rej = min(1, min over ``sel`` of
    1 - conf_q), 0 where >= 2 ``pos`` queries have m_q > bt, then min with 1 - conf_g over
    ``ground``; anom = max(0, max over ``anomaly`` of conf_a); out = w1 * rej + w2 * anom.
    Queries outer, pixels of the row inner (the masks are read row by row, contiguous).
    """
    B, N, h, w = m.shape
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for it in prange(B * h):
        b = it // h
        y = it - b * h
        rej = np.ones(w, np.float32)
        cnt = np.zeros(w, np.int32)
        anom = np.zeros(w, np.float32)
        for q in range(N):
            row = m[b, q, y]
            pq = pmax[b, q]
            if sel[b, q]:
                for x in range(w):
                    v = one - row[x] * pq
                    if v < rej[x]:
                        rej[x] = v
            if pos[b, q]:
                for x in range(w):
                    cnt[x] += np.int32(row[x] > bt)
        for x in range(w):
            if cnt[x] >= 2:
                rej[x] = zero
        for g in range(ground.shape[0]):
            row = m[b, ground[g], y]
            pq = pmax[b, ground[g]]
            for x in range(w):
                v = one - row[x] * pq
                if v < rej[x]:
                    rej[x] = v
        for a in range(anomaly.shape[0]):
            row = m[b, anomaly[a], y]
            pq = pmax[b, anomaly[a]]
            for x in range(w):
                v = row[x] * pq
                if v > anom[x]:
                    anom[x] = v
        dst = out[b, y]
        for x in range(w):
            dst[x] = w1 * rej[x] + w2 * anom[x]


@_serialized
def maskomaly_np(m: np.ndarray, pmax: np.ndarray, sel: np.ndarray, pos: np.ndarray, ground: np.ndarray,
                 anomaly: np.ndarray, border_threshold: float, w1: float, w2: float) -> np.ndarray:
    """m (B,N,h,w) float32 C-contiguous mask probabilities, pmax (B,N) float32 top class probability,
    sel / pos (B,N) bool (rejecting / positive queries), ground / anomaly int64 query indices ->
    (B,1,h,w) float32 (before the resize and the clamp). The weights and the threshold are
    rounded to float32 as torch rounds a Python scalar for a float32 tensor."""
    B, N, h, w = m.shape
    out = np.empty((B, 1, h, w), np.float32)
    if B and h * w:
        _maskomaly(m, pmax, sel, pos, ground, anomaly, np.float32(border_threshold), np.float32(w1),
                   np.float32(w2), out.reshape(B, h, w))
    return out
