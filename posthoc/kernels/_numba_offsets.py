"""CPU kernels (numba) for OVeNet offset resampling and the post-hoc offset field.

Semantics are those of the torch / numpy paths in :mod:`posthoc.offsets` (the fallback and
reference); this module only makes them fast. Every kernel performs, per element, the same
IEEE float operations in the same order as those paths (no fast-math, no contraction into
fused multiply-adds), so results agree bit for bit except where a libm function (``exp``)
may differ by an ulp.

* :func:`resample_np` -- Eq. 2-4 in one pass: per pixel the sampling position, the bilinear
  weights and the four corner indices are computed once, then every channel is gathered,
  blended with the confidence and clamped, so each plane of the scores is read about once
  (the corners are neighbours, in cache) and the output written once.
* :func:`boundary_edt_np` -- the 4-neighbour label boundary and its exact Euclidean
  distance transform (Meijster et al. 2000, "A general algorithm for computing distance
  transforms in linear time": a column pass and a row pass of lower envelopes, in integer
  arithmetic, so squared distances are exact and ``sqrt`` is correctly rounded -- equal to
  ``scipy.ndimage.distance_transform_edt`` bit for bit).
* :func:`gauss_blur_np` -- the separable Gaussian with replicate border of
  :func:`posthoc.offsets._gaussian_blur`, same taps, same order, float64.
* :func:`offset_field_np` -- gradient, normalisation, length, the "target stays in its own
  region" halving and the confidence, fused per pixel.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit, prange

from ._numba import _serialized


def _scratch(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised numpy buffer; large ones on huge pages (fewer page faults, see kernels._empty_cpu)."""
    import torch

    from . import _empty_cpu

    tdt = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
           np.dtype(np.int32): torch.int32, np.dtype(np.bool_): torch.bool}[np.dtype(dtype)]
    return _empty_cpu(tuple(int(v) for v in shape), tdt).numpy()

# --------------------------------------------------------------------------- offset_resample


@njit(cache=True, parallel=True, nogil=True)
def _resample(s, o, f, sx, sy, out, bad):
    """s (B,C,H,W) f32; o (B,2,H,W) f32; f (B,1,H,W) f32; sx, sy f32 unit scales; out (B,C,H,W).

    Per output row, the pixels whose target is not the pixel itself are listed once with
    their corner indices and weights; then each channel is streamed through: the row is
    copied (a zero offset is the identity, ``S + F * 0 = S``) and only the listed pixels are
    resampled. ``bad[b*H + y]`` counts the row's non-finite scores or offsets and
    confidences outside [0,1] (NaN included); such an offset is read as 0 so that no index
    leaves the image.
    """
    B, C, H, W = s.shape
    wmax = np.float32(W - 1)
    hmax = np.float32(H - 1)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    big = np.float32(3.4028234663852886e38)  # float32 max: abs(x) <= big <=> finite
    for it in prange(B * H):
        b = it // H
        y = it % H
        yf = np.float32(y)
        xs = np.empty(W, np.int64)
        i00 = np.empty(W, np.int64)
        i01 = np.empty(W, np.int64)
        i10 = np.empty(W, np.int64)
        i11 = np.empty(W, np.int64)
        wxs = np.empty(W, np.float32)
        wys = np.empty(W, np.float32)
        fcs = np.empty(W, np.float32)
        nbad = 0
        m = 0
        base = y * W
        for x in range(W):
            dx = o[b, 0, y, x]
            dy = o[b, 1, y, x]
            fc = f[b, 0, y, x]
            if not (fc >= zero and fc <= one):
                nbad += 1
            if dx == zero and dy == zero:
                continue  # zero offset: the pixel itself (the common case of a proposal field)
            if not (abs(dx) <= big and abs(dy) <= big):
                nbad += 1
                dx = zero
                dy = zero
            if sx != one:
                dx = dx * sx
            if sy != one:
                dy = dy * sy
            px = np.float32(x) + dx
            py = yf + dy
            px = min(max(px, zero), wmax)
            py = min(max(py, zero), hmax)
            x0 = int(px)  # px, py >= 0 after the clamp: truncation is floor
            y0 = int(py)
            wx = px - np.float32(x0)
            wy = py - np.float32(y0)
            j = y0 * W + x0
            if wx == zero and wy == zero and j == base + x:
                continue  # the pixel itself
            x1 = min(x0 + 1, W - 1)
            y1 = min(y0 + 1, H - 1)
            xs[m] = x
            i00[m] = j
            i01[m] = y0 * W + x1
            i10[m] = y1 * W + x0
            i11[m] = y1 * W + x1
            wxs[m] = wx
            wys[m] = wy
            fcs[m] = fc
            m += 1
        for c in range(C):
            plane = s[b, c].reshape(H * W)
            row = s[b, c, y]
            orow = out[b, c, y]
            for x in range(W):
                sv = row[x]
                if not abs(sv) <= big:
                    nbad += 1
                orow[x] = sv
            for k in range(m):
                x = xs[k]
                sv = row[x]
                wx = wxs[k]
                wy = wys[k]
                v00 = plane[i00[k]]
                if wx == zero and wy == zero:
                    val = v00  # integral target: the other bilinear weights are 0
                else:
                    v01 = plane[i01[k]]
                    v10 = plane[i10[k]]
                    v11 = plane[i11[k]]
                    top = v00 * (one - wx) + v01 * wx
                    bot = v10 * (one - wx) + v11 * wx
                    val = top * (one - wy) + bot * wy
                    lo = min(min(v00, v01), min(v10, v11))
                    hi = max(max(v00, v01), max(v10, v11))
                    val = min(max(val, lo), hi)
                r = sv + fcs[k] * (val - sv)
                orow[x] = min(max(r, min(sv, val)), max(sv, val))
        bad[it] = nbad


@_serialized
def resample_np(s: np.ndarray, o: np.ndarray, f: np.ndarray, sx: float, sy: float,
                out: np.ndarray) -> int:
    """Eq. 2-4 into ``out``; ``sx, sy`` scale the offsets (1 for pixels, (size-1)/2 for normalized).

    Returns the number of invalid inputs seen (0 = all finite and the confidence in [0,1]);
    the caller then raises the error of its validation helpers.
    """
    B, _, H, _ = s.shape
    bad = np.zeros(B * H, np.int64)
    _resample(s, o, f, np.float32(sx), np.float32(sy), out, bad)
    return int(bad.sum())


# --------------------------------------------------------------------------- boundary + EDT


@njit(cache=True, nogil=True, inline="always")
def _is_boundary(lab, y, x, H, W):
    v = lab[y, x]
    return ((x > 0 and lab[y, x - 1] != v) or (x + 1 < W and lab[y, x + 1] != v)
            or (y > 0 and lab[y - 1, x] != v) or (y + 1 < H and lab[y + 1, x] != v))


@njit(cache=True, parallel=True, nogil=True)
def _edt_columns(lab, g, inf):
    """g[y,x] = vertical distance to the nearest boundary pixel of column x (``inf`` if none),
    the boundary (4-neighbour of another label) found on the fly. Returns the boundary pixel count."""
    H, W = lab.shape
    nblk = (W + 255) // 256
    cnt = np.zeros(nblk, np.int64)
    for k in prange(nblk):
        x0 = k * 256
        x1 = min(W, x0 + 256)
        c = 0
        for x in range(x0, x1):
            if _is_boundary(lab, 0, x, H, W):
                g[0, x] = 0
                c += 1
            else:
                g[0, x] = inf
        for y in range(1, H):
            for x in range(x0, x1):
                if _is_boundary(lab, y, x, H, W):
                    g[y, x] = 0
                    c += 1
                else:
                    g[y, x] = min(g[y - 1, x] + 1, inf)
        for y in range(H - 2, -1, -1):
            for x in range(x0, x1):
                t = g[y + 1, x] + 1
                if t < g[y, x]:
                    g[y, x] = t
        cnt[k] = c
    return cnt.sum()


@njit(cache=True, parallel=True, nogil=True)
def _edt_rows(g, n2):
    """Meijster's second phase per row: n2 = min_i (x-i)^2 + g(i)^2 (exact squared distance, int32).

    The envelope buffers are int32 (half the cache footprint of :func:`_edt_rows64`), valid while
    ``W^2 + max(g)^2 < 2^31`` (the caller checks it and uses :func:`_edt_rows64` otherwise), and
    the top of the envelope stack (s[q], t[q], g2[s[q]]) is kept in registers instead of being
    re-read on every comparison. Same envelopes, same integer results as :func:`_edt_rows64`.
    ``n2`` may be ``g`` itself: each row of g is read into a local buffer before it is written.
    The separation point is computed as in :func:`_edt_rows64` (float64 floor, exact here).
    """
    H, W = g.shape
    for y in prange(H):
        s = np.empty(W, np.int32)
        t = np.empty(W, np.int32)
        g2 = np.empty(W, np.int32)
        for u in range(W):
            gv = g[y, u]
            g2[u] = gv * gv
        q = 0
        s[0] = 0
        t[0] = 0
        sq = 0
        tq = 0
        g2s = g2[0]
        for u in range(1, W):
            gu2 = g2[u]
            while True:  # pop the parabolas that u's is below at their segment start
                a = tq - sq
                b = tq - u
                if a * a + g2s > b * b + gu2:
                    q -= 1
                    if q < 0:
                        break
                    sq = s[q]
                    tq = t[q]
                    g2s = g2[sq]
                else:
                    break
            if q < 0:
                q = 0
                s[0] = u
                t[0] = 0
                sq = u
                tq = 0
                g2s = gu2
            else:
                num = u * u - sq * sq + gu2 - g2s
                w = 1 + int(np.floor(np.float64(num) / np.float64(2 * (u - sq))))
                if w < W:
                    q += 1
                    s[q] = u
                    t[q] = w
                    sq = u
                    tq = w
                    g2s = gu2
        nrow = n2[y]
        sq = s[q]
        g2s = g2[sq]
        tq = t[q]
        for u in range(W - 1, -1, -1):
            a = u - sq
            nrow[u] = a * a + g2s
            if u == tq:
                q -= 1
                if q >= 0:
                    sq = s[q]
                    g2s = g2[sq]
                    tq = t[q]


@njit(cache=True, parallel=True, nogil=True)
def _edt_rows64(g, n2):
    """Meijster's second phase per row in int64 arithmetic (images too large for :func:`_edt_rows`).

    ``n2`` may be ``g`` itself: each row of g is read into a local buffer before it is written.

    The separation point ``1 + floor(num / den)`` is computed in float64: num < 2^31 and den
    < 2^16 here, so a non-integer quotient lies at least 1/den from an integer, far more than
    its rounding error, and the float floor equals the integer one (no 64-bit division).
    """
    H, W = g.shape
    for y in prange(H):
        s = np.empty(W, np.int64)
        t = np.empty(W, np.int64)
        g2 = np.empty(W, np.int64)
        for u in range(W):
            gv = np.int64(g[y, u])
            g2[u] = gv * gv
        q = 0
        s[0] = 0
        t[0] = 0
        for u in range(1, W):
            gu2 = g2[u]
            while q >= 0:
                sq = s[q]
                a = t[q] - sq
                b = t[q] - u
                if a * a + g2[sq] > b * b + gu2:
                    q -= 1
                else:
                    break
            if q < 0:
                q = 0
                s[0] = u
                t[0] = 0
            else:
                sq = s[q]
                num = u * u - sq * sq + gu2 - g2[sq]
                w = 1 + int(np.floor(np.float64(num) / np.float64(2 * (u - sq))))
                if w < W:
                    q += 1
                    s[q] = u
                    t[q] = w
        nrow = n2[y]
        for u in range(W - 1, -1, -1):
            sq = s[q]
            a = u - sq
            nrow[u] = a * a + g2[sq]
            if u == t[q]:
                q -= 1


@njit(cache=True, nogil=True, inline="always")
def _dist(n):
    """Euclidean distance from an exact squared distance, as scipy's EDT followed by astype(float32)."""
    return np.float32(np.sqrt(np.float64(n)))


@_serialized
def boundary_edt_np(lab: np.ndarray):
    """(H,W) int labels -> exact squared EDT to the label boundary, (H,W) int32, or None if no boundary.

    The boundary is the set of pixels with a 4-neighbour of another label; the distance
    ``sqrt(n2)`` rounded to float32 equals ``scipy.ndimage.distance_transform_edt`` (sqrt of an
    exact integer is correctly rounded; float64 -> float32 cannot double-round a sqrt).
    """
    H, W = lab.shape
    inf = np.int32(H + W + 1)
    g = _scratch((H, W), np.int32)
    if _edt_columns(lab, g, inf) == 0:
        return None
    n2 = g
    if int(W) ** 2 + int(inf) ** 2 < 2**31:
        _edt_rows(g, n2)  # in place
    else:
        _edt_rows64(g, n2)
    return n2


@njit(cache=True, parallel=True, nogil=True)
def _sqrt_all(n2, d):
    H, W = n2.shape
    for y in prange(H):
        for x in range(W):
            d[y, x] = _dist(n2[y, x])


def distances_np(n2: np.ndarray) -> np.ndarray:
    """(H,W) float32 distances ``sqrt(n2)`` (for tests and callers that want the full map)."""
    d = np.empty(n2.shape, np.float32)
    _sqrt_all(n2, d)
    return d


# --------------------------------------------------------------------------- blur + field
#
# Offsets are non-zero only where d < max_offset. Their gradient reads the blurred distance
# at the 4-neighbours (d < max_offset + 1, d being 1-Lipschitz), which reads the axis-0 pass
# within ``r`` columns (d < max_offset + 1 + r). So both blur passes run only on a band
# around the boundaries (thresholds with a margin of 1 pixel for rounding); elsewhere the
# offset is 0 and only the confidence is computed.


@njit(cache=True, nogil=True, inline="always")
def _dist64(n, dtab):
    """float64(d) for a squared distance n: from the table when n is small, else computed."""
    if n < dtab.shape[0]:
        return dtab[n]
    return np.float64(_dist(n))


@njit(cache=True, parallel=True, nogil=True)
def _band_blur(n2, k, lim0, lim1, dtab, ds):
    """Separable blur (replicate border, float64, taps in ascending order) of d = sqrt(n2).

    Row by row: the axis-0 pass into a row buffer where n2 < lim0, then the axis-1 pass into
    ``ds`` where n2 < lim1 (it reads the buffer within r columns, all below lim0).
    ``dtab[n] = float64(float32(sqrt(n)))`` for small n (the band's distances)."""
    H, W = n2.shape
    n = k.shape[0]
    r = (n - 1) // 2
    for y in prange(H):
        tmp = np.empty(W, np.float64)
        row = n2[y]
        for x in range(W):
            if row[x] < lim0:
                acc = 0.0
                for i in range(n):
                    yy = min(max(y + i - r, 0), H - 1)
                    acc += k[i] * _dist64(n2[yy, x], dtab)
                tmp[x] = acc
        for x in range(W):
            if row[x] < lim1:
                acc = 0.0
                for i in range(n):
                    xx = min(max(x + i - r, 0), W - 1)
                    acc += k[i] * tmp[xx]
                ds[y, x] = acc


@njit(cache=True, parallel=True, nogil=True)
def _band_dist(n2, lim, ds):
    """ds = d (float32) where n2 < lim: the unblurred field of ``smooth=0``."""
    H, W = n2.shape
    for y in prange(H):
        for x in range(W):
            if n2[y, x] < lim:
                ds[y, x] = _dist(n2[y, x])


@njit(cache=True, nogil=True, inline="always")
def _grad(ds, y, x, H, W, two, zero):
    if H > 1:
        if y == 0:
            gy = ds[1, x] - ds[0, x]
        elif y == H - 1:
            gy = ds[H - 1, x] - ds[H - 2, x]
        else:
            gy = (ds[y + 1, x] - ds[y - 1, x]) / two
    else:
        gy = zero
    if W > 1:
        if x == 0:
            gx = ds[y, 1] - ds[y, 0]
        elif x == W - 1:
            gx = ds[y, W - 1] - ds[y, W - 2]
        else:
            gx = (ds[y, x + 1] - ds[y, x - 1]) / two
    else:
        gx = zero
    return gx, gy


@njit(cache=True, parallel=True, nogil=True)
def _field(lab, n2, ds, two, eps, max_off, n_off, bw, table, dev, tw, use_dev, ox, oy, conf):
    """Offsets and confidence of :func:`posthoc.offsets.offsets_from_proposals` for one image.

    ``ds`` is float64 (blurred) or float32 (``smooth=0``), valid on the band; ``two``/``eps``
    carry its dtype so that the arithmetic matches numpy's on an array of that dtype.
    ``table[n] = exp(-sqrt(n) / bw)`` (computed by numpy) for squared distances n below its size;
    ``n_off`` is the smallest n whose float32 distance is >= max_off (so ``d < max_off <=> n < n_off``).
    """
    H, W = lab.shape
    zero = two - two
    z32 = np.float32(0.0)
    nt = table.shape[0]
    for y in prange(H):
        for x in range(W):
            v = lab[y, x]
            if v < 0:
                ox[y, x] = z32
                oy[y, x] = z32
                conf[y, x] = z32
                continue
            n = n2[y, x]
            fx = z32
            fy = z32
            if n < n_off:
                dd = _dist(n)
                gx, gy = _grad(ds, y, x, H, W, two, zero)
                norm = np.sqrt(gx * gx + gy * gy)
                length = min(max(max_off - dd, z32), max_off)
                if norm > eps:
                    fx = np.float32((gx / norm) * length)
                    fy = np.float32((gy / norm) * length)
                for it in range(5):
                    if fx == z32 and fy == z32:
                        break  # the target is the pixel itself
                    tx = min(max(np.rint(np.float64(x) + np.float64(fx)), 0.0), W - 1.0)
                    ty = min(max(np.rint(np.float64(y) + np.float64(fy)), 0.0), H - 1.0)
                    if lab[int(ty), int(tx)] == v:
                        break
                    if it == 4:
                        fx = z32
                        fy = z32
                    else:
                        fx = fx * np.float32(0.5)
                        fy = fy * np.float32(0.5)
            ox[y, x] = fx
            oy[y, x] = fy
            fc = table[n] if n < nt else np.exp(-_dist(n) / bw)
            if use_dev:
                fc = fc * np.float32((1.0 - tw) + tw * dev[y, x])
            conf[y, x] = min(max(fc, z32), np.float32(1.0))


#: largest confidence table (entries = squared distances); beyond it exp is evaluated per pixel
TABLE_MAX = 1 << 20


@njit(cache=True, nogil=True)
def _region_means(lab, t, n, cnt, sums):
    """Per-region pixel counts and float64 sums of every channel, pixel order (= np.bincount)."""
    C, P = t.shape
    for p in range(P):
        v = lab[p]
        if v >= 0:
            cnt[v] += 1
    for c in range(C):
        for p in range(P):
            v = lab[p]
            if v >= 0:
                sums[c, v] += np.float64(t[c, p])
    for v in range(n):
        k = max(cnt[v], 1)
        for c in range(C):
            sums[c, v] = sums[c, v] / k


@njit(cache=True, parallel=True, nogil=True)
def _deviation(lab, t, means, div, out):
    """out = clip(sum_c |t_c - mean_c(region)| / div, 0, 1) (float64, c ascending); 0 where unassigned."""
    C, P = t.shape
    nblk = (P + 4095) // 4096
    for k in prange(nblk):
        for p in range(k * 4096, min(P, (k + 1) * 4096)):
            v = lab[p]
            if v < 0:
                out[p] = 0.0
                continue
            acc = 0.0
            for c in range(C):
                acc += abs(np.float64(t[c, p]) - means[c, v])
            out[p] = min(max(acc / div, 0.0), 1.0)


@_serialized
def teacher_deviation_np(lab: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(H,W) labels, (C,H,W) float32 teacher -> (H,W) float64 deviation from the region means.

    Equal to the bincount formulation of :func:`posthoc.offsets.offsets_from_proposals`
    (same float64 sums in the same order)."""
    C = t.shape[0]
    flat = lab.reshape(-1)
    tt = t.reshape(C, -1)
    n = int(flat.max()) + 1 if flat.size else 0
    out = np.zeros(flat.shape[0], np.float64)
    if n <= 0:
        return out.reshape(lab.shape)
    cnt = np.zeros(n, np.int64)
    sums = np.zeros((C, n), np.float64)
    _region_means(flat, tt, n, cnt, sums)
    _deviation(flat, tt, sums, 2.0 if C > 1 else 1.0, out)
    return out.reshape(lab.shape)


@functools.lru_cache(maxsize=16)
def _sqrt_table(size: int) -> np.ndarray:
    """``float64(float32(sqrt(n)))`` for n < size (as :func:`_dist` computes it)."""
    t = np.sqrt(np.arange(max(1, min(size, TABLE_MAX)), dtype=np.float64)).astype(np.float32).astype(np.float64)
    t.flags.writeable = False
    return t


def _first_at_least(max_offset: float) -> np.int64:
    """The smallest n >= 0 with float32(sqrt(n)) >= float32(max_offset): ``d < max_offset <=> n < it``."""
    m = np.float32(max_offset)
    n = max(0, int(math.floor(float(m) * float(m))) - 2)
    while np.float32(np.sqrt(np.float64(n))) < m:
        n += 1
    return np.int64(n)


@functools.lru_cache(maxsize=16)
def _conf_table(bw: float, max_n2: int) -> np.ndarray:
    """``exp(-d / bw)`` in float32 exactly as numpy computes it, for d = sqrt(n), n < size.

    float32 ``exp`` is 0 beyond -104 (below the smallest subnormal), so the table stops at
    (104 bw)^2 or ``max_n2``; larger n read past it and are computed by the kernel."""
    size = int(min(max_n2 + 1, TABLE_MAX, (104.0 * bw) ** 2 + 2))
    d = np.sqrt(np.arange(size, dtype=np.float64)).astype(np.float32)
    table = np.exp(-d / np.float32(bw)).astype(np.float32)
    table.flags.writeable = False  # shared by the calls with the same (bw, size)
    return table


@_serialized
def offset_field_np(lab, n2, smooth_taps, max_offset, boundary_width, dev, teacher_weight, ox, oy, conf):
    """Fill ``ox, oy, conf`` (H,W) float32 for one image from its squared EDT ``n2``.

    ``smooth_taps`` are the float64 Gaussian taps, or None for ``smooth=0``.
    """
    H, W = lab.shape
    mo = float(max_offset)
    def sq(lim: float) -> np.int64:  # d < lim  <=>  n2 < lim^2 (margins of a pixel cover rounding)
        return np.int64(min(math.ceil(lim * lim), 2**62))

    if smooth_taps is None:
        ds = _scratch((H, W), np.float32)
        _band_dist(n2, sq(mo + 2.0), ds)
    else:
        r = (smooth_taps.shape[0] - 1) // 2
        ds = _scratch((H, W), np.float64)
        _band_blur(n2, smooth_taps, sq(mo + r + 2.0), sq(mo + 2.0), _sqrt_table(int(sq(mo + 2 * r + 3.0))), ds)
    t = ds.dtype.type
    use_dev = dev is not None
    devarr = dev if use_dev else np.zeros((1, 1), np.float64)
    table = _conf_table(float(boundary_width), (H - 1) ** 2 + (W - 1) ** 2 + 1)
    _field(lab, n2, ds, t(2.0), t(1e-6), np.float32(max_offset), _first_at_least(float(max_offset)),
           np.float32(boundary_width), table,
           devarr, float(teacher_weight), use_dev, ox, oy, conf)
