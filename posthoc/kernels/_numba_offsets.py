"""CPU kernels (numba) for OVeNet offset resampling and the post-hoc offset field.

Semantics are those of the torch / numpy paths in :mod:`posthoc.offsets` (the fallback and
reference); this module only makes them fast. Every kernel performs, per element, the same
IEEE float operations in the same order as those paths (no fast-math, no contraction into
fused multiply-adds), so results agree bit for bit except where a libm function (``exp``)
may differ by an ulp.

* :func:`resample_np` -- Eq. 2-4 in one pass: per pixel the sampling position, the bilinear
  weights and the top-left corner index are computed once, then every channel is gathered,
  blended with the confidence and clamped, so each plane of the scores is read about once
  (the corners are neighbours, in cache) and the output written once. Rows where most pixels
  move are resampled densely; elsewhere the row is copied and only the moving pixels fixed.
* :func:`boundary_edt_np` -- the 4-neighbour label boundary and its exact Euclidean
  distance transform (a column pass as in Meijster et al. 2000, "A general algorithm for
  computing distance transforms in linear time", then per row the lower envelope of
  parabolas, kept in exact integer arithmetic without divisions, so squared distances are
  exact and ``sqrt`` is correctly rounded -- equal to
  ``scipy.ndimage.distance_transform_edt`` bit for bit).
* :func:`offset_field_np` -- in one pass over row blocks: the distances, their separable
  Gaussian with replicate border (:func:`posthoc.offsets._gaussian_blur`: same taps, same
  order, float64), the gradient, normalisation, length, the "target stays in its own region"
  halving and the confidence.
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


@njit(cache=True, nogil=True, inline="always")
def _blend(plane, k, dxs, dys, wx, wy, fc, sv):
    """Eq. 2-4 for one element: bilinear from the corners at k, k+dxs, k+dys, k+dys+dxs, clamped
    to the corners' range, blended with the pixel's own score ``sv`` and clamped between them."""
    one = np.float32(1.0)
    v00 = plane[k]
    v01 = plane[k + dxs]
    v10 = plane[k + dys]
    v11 = plane[k + dys + dxs]
    top = v00 * (one - wx) + v01 * wx
    bot = v10 * (one - wx) + v11 * wx
    val = top * (one - wy) + bot * wy
    lo = min(min(v00, v01), min(v10, v11))
    hi = max(max(v00, v01), max(v10, v11))
    val = min(max(val, lo), hi)
    r = sv + fc * (val - sv)
    return min(max(r, min(sv, val)), max(sv, val))


@njit(cache=True, parallel=True, nogil=True)
def _resample(s, o, f, sx, sy, out, bad, nchunk):
    """s (B,C,H,W) f32; o (B,2,H,W) f32; f (B,1,H,W) f32; sx, sy f32 unit scales; out (B,C,H,W).

    The B*H output rows are split into ``nchunk`` contiguous blocks (one scratch allocation per
    block, not per row). Per row, the sampling position of every pixel is computed once: the
    flat index ``j`` of its top-left corner, clamped so that the other corners are ``j+1``,
    ``j+W`` and ``j+W+1`` (a position on the last column or row then has weight 1 on the far
    corner: the same value), its bilinear weights and its confidence; the pixels whose target
    is not the pixel itself are also listed. Then each channel is streamed through:

    * rows where most pixels move are resampled densely (every pixel, no indirection; a pixel
      that does not move keeps its score);
    * other rows are copied (a zero offset is the identity) and only the listed pixels are
      resampled.

    ``bad[b*H + y]`` counts the row's non-finite scores or offsets and confidences outside
    [0,1] (NaN included); such an offset is read as 0 so that no index leaves the image.
    """
    B, C, H, W = s.shape
    wmax = np.float32(W - 1)
    hmax = np.float32(H - 1)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    big = np.float32(3.4028234663852886e38)  # float32 max: abs(x) <= big <=> finite
    # unsigned indices: no wrap-around test per load (every index is in [0, H*W))
    dxs = np.uint64(1 if W > 1 else 0)
    dys = np.uint64(W if H > 1 else 0)
    xlim = max(W - 2, 0)
    ylim = max(H - 2, 0)
    n = B * H
    step = (n + nchunk - 1) // nchunk
    T = 8  # rows per tile: each channel's plane is streamed through a tile at a time (its source rows stay in L2)
    for ch in prange(nchunk):
        xs = np.empty((T, W), np.uint64)  # per row of the tile: the moving pixels and their parameters, compact
        cj = np.empty((T, W), np.uint64)
        cwx = np.empty((T, W), np.float32)
        cwy = np.empty((T, W), np.float32)
        cfc = np.empty((T, W), np.float32)
        jj = np.empty((T, W), np.uint64)  # the same per column, for the dense loop
        wxs = np.empty((T, W), np.float32)
        wys = np.empty((T, W), np.float32)
        fcs = np.empty((T, W), np.float32)
        mv = np.empty((T, W), np.bool_)
        ms = np.zeros(T, np.int64)
        nb = np.zeros(T, np.int64)
        lo_it = ch * step
        hi_it = min(n, (ch + 1) * step)
        for t0 in range(lo_it, hi_it, T):
            nt = min(T, hi_it - t0)
            for ti in range(nt):
                it = t0 + ti
                b = it // H
                y = it % H
                yf = np.float32(y)
                nbad = 0
                m = 0
                txs = xs[ti]
                tcj = cj[ti]
                tcwx = cwx[ti]
                tcwy = cwy[ti]
                tcfc = cfc[ti]
                tmv = mv[ti]
                for x in range(W):
                    dx = o[b, 0, y, x]
                    dy = o[b, 1, y, x]
                    fc = f[b, 0, y, x]
                    if not (fc >= zero and fc <= one):
                        nbad += 1
                    tmv[x] = False
                    if dx == zero and dy == zero:
                        continue  # zero offset: the pixel itself (most pixels of a proposal field)
                    if not (abs(dx) <= big and abs(dy) <= big):
                        nbad += 1
                        continue  # read as 0: the pixel itself
                    if sx != one:
                        dx = dx * sx
                    if sy != one:
                        dy = dy * sy
                    px = min(max(np.float32(x) + dx, zero), wmax)
                    py = min(max(yf + dy, zero), hmax)
                    if px == np.float32(x) and py == yf:
                        continue  # clamped back onto the pixel itself
                    x0 = min(int(px), xlim)  # px, py >= 0 after the clamp: truncation is floor
                    y0 = min(int(py), ylim)
                    tmv[x] = True
                    txs[m] = x
                    tcj[m] = np.uint64(y0 * W + x0)
                    tcwx[m] = px - np.float32(x0)
                    tcwy[m] = py - np.float32(y0)
                    tcfc[m] = fc
                    m += 1
                ms[ti] = m
                nb[ti] = nbad
                if 4 * m > 3 * W:  # dense row: every column gets parameters (in bounds; still pixels keep S)
                    tj = jj[ti]
                    twx = wxs[ti]
                    twy = wys[ti]
                    tfc = fcs[ti]
                    for x in range(W):
                        tj[x] = 0
                        twx[x] = zero
                        twy[x] = zero
                        tfc[x] = zero
                    for q in range(m):
                        x = txs[q]
                        tj[x] = tcj[q]
                        twx[x] = tcwx[q]
                        twy[x] = tcwy[q]
                        tfc[x] = tcfc[q]
            for c in range(C):
                for ti in range(nt):
                    it = t0 + ti
                    b = it // H
                    y = it % H
                    m = ms[ti]
                    nbad = 0
                    plane = s[b, c].reshape(H * W)
                    row = s[b, c, y]
                    orow = out[b, c, y]
                    if 4 * m > 3 * W:
                        tj = jj[ti]
                        twx = wxs[ti]
                        twy = wys[ti]
                        tfc = fcs[ti]
                        tmv = mv[ti]
                        for x in range(W):
                            sv = row[x]
                            if not abs(sv) <= big:
                                nbad += 1
                            r = _blend(plane, tj[x], dxs, dys, twx[x], twy[x], tfc[x], sv)
                            orow[x] = r if tmv[x] else sv  # the identity bit for bit (-0.0 stays -0.0)
                    else:
                        for x in range(W):
                            sv = row[x]
                            if not abs(sv) <= big:
                                nbad += 1
                            orow[x] = sv
                        txs = xs[ti]
                        tcj = cj[ti]
                        tcwx = cwx[ti]
                        tcwy = cwy[ti]
                        tcfc = cfc[ti]
                        for q in range(m):
                            x = txs[q]
                            sv = row[x]
                            orow[x] = _blend(plane, tcj[q], dxs, dys, tcwx[q], tcwy[q], tcfc[q], sv)
                    nb[ti] += nbad
            for ti in range(nt):
                bad[t0 + ti] = nb[ti]


@_serialized
def resample_np(s: np.ndarray, o: np.ndarray, f: np.ndarray, sx: float, sy: float,
                out: np.ndarray) -> int:
    """Eq. 2-4 into ``out``; ``sx, sy`` scale the offsets (1 for pixels, (size-1)/2 for normalized).

    Returns the number of invalid inputs seen (0 = all finite and the confidence in [0,1]);
    the caller then raises the error of its validation helpers.
    """
    import numba

    B, _, H, _ = s.shape
    bad = np.zeros(B * H, np.int64)
    nchunk = max(1, min(B * H, 4 * numba.get_num_threads()))
    _resample(s, o, f, np.float32(sx), np.float32(sy), out, bad, nchunk)
    return int(bad.sum())


# --------------------------------------------------------------------------- boundary + EDT


@njit(cache=True, nogil=True, inline="always")
def _is_boundary(lab, y, x, H, W):
    v = lab[y, x]
    return ((x > 0 and lab[y, x - 1] != v) or (x + 1 < W and lab[y, x + 1] != v)
            or (y > 0 and lab[y - 1, x] != v) or (y + 1 < H and lab[y + 1, x] != v))


@njit(cache=True, nogil=True, inline="always")
def _edge_column(lab, g, inf, y, x, H, W):
    """One image-border pixel of the column pass (its neighbours are tested one by one)."""
    if _is_boundary(lab, y, x, H, W):
        g[y, x] = 0
        return 1
    g[y, x] = inf if y == 0 else min(g[y - 1, x] + 1, inf)
    return 0


@njit(cache=True, nogil=True)
def _columns_block(lab, g, inf, x0, x1):
    """The column pass on columns [x0, x1), whole rows at a time (prefetch-friendly): top-down,
    g = 0 on the boundary else g(above) + 1; then bottom-up, g = min(g, g(below) + 1).

    The interior columns are read through views that start at index 0, so that every index
    is provably non-negative and the loops vectorise (no wrap-around test per element).
    Returns the number of boundary pixels."""
    H, W = lab.shape
    c = 0
    xa = max(x0, 1)
    xb = min(x1, W - 1)
    n = max(xb - xa, 0)
    for y in range(H):
        row = lab[y]
        ru = lab[y - 1] if y > 0 else row  # the image's first / last row has no neighbour there
        rd = lab[y + 1] if y + 1 < H else row
        gp = g[y - 1] if y > 0 else g[y]
        first = y == 0
        if n > 0:
            rc = row[xa:xb]
            rl = row[xa - 1:xb - 1]
            rr = row[xa + 1:xb + 1]
            u = ru[xa:xb]
            d = rd[xa:xb]
            p = gp[xa:xb]
            gr = g[y, xa:xb]
            for j in range(n):
                v = rc[j]
                bd = (rl[j] != v) | (rr[j] != v) | (u[j] != v) | (d[j] != v)
                prev = inf if first else min(p[j] + 1, inf)
                gr[j] = 0 if bd else prev
                c += 1 if bd else 0
        if x0 == 0:
            c += _edge_column(lab, g, inf, y, 0, H, W)
        if x1 == W and W > 1:
            c += _edge_column(lab, g, inf, y, W - 1, H, W)
    for y in range(H - 2, -1, -1):
        gr = g[y, x0:x1]
        gn = g[y + 1, x0:x1]
        for j in range(x1 - x0):
            t = gn[j] + 1
            gr[j] = t if t < gr[j] else gr[j]
    return c


@njit(cache=True, parallel=True, nogil=True)
def _edt_columns(lab, g, inf, nblk=2):
    """g[y,x] = vertical distance to the nearest boundary pixel of column x (``inf`` if none),
    the boundary (4-neighbour of another label) found on the fly, in ``nblk`` column blocks
    (one per thread). Returns the boundary pixel count."""
    H, W = lab.shape
    nblk = max(1, min(nblk, W))
    bw = (W + nblk - 1) // nblk
    cnt = np.zeros(nblk, np.int64)
    for k in prange(nblk):
        x0 = min(W, k * bw)
        cnt[k] = _columns_block(lab, g, inf, x0, min(W, x0 + bw))
    return cnt.sum()


@njit(cache=True, parallel=True, nogil=True)
def _edt_rows(g, n2):
    """Second phase per row: n2[y,x] = min_i (x-i)^2 + g[y,i]^2, the exact squared distance.

    The lower envelope of the parabolas ``(x-i)^2 + g(i)^2`` (Felzenszwalb & Huttenlocher
    2012, "Distance transforms of sampled functions"; the same envelope as Meijster's second
    phase), kept division-free: the intersection of two parabolas is the rational
    ``num / den`` with ``den > 0``, and every comparison with it is cross-multiplied in int64
    (|num| < 2^31 and den < 2^16 while ``edt_fits``: int32 buffers, int64 products), so the envelope is
    exact and no float or integer division sits on the scan's dependency chain. The top of
    the stack is kept in registers. ``n2`` may be ``g`` itself (each row is read into a local
    buffer before it is written).
    """
    H, W = g.shape
    for y in prange(H):
        v = np.empty(W, np.int32)  # envelope: parabola apexes
        zn = np.empty(W, np.int32)  # ... and where each starts, zn/zd (zd > 0)
        zd = np.empty(W, np.int32)
        f = np.empty(W, np.int32)  # g^2 + i^2 (< 2^31: see edt_fits); products in int64
        grow = g[y]
        for u in range(W):
            gv = np.int64(grow[u])
            f[u] = np.int32(gv * gv + np.int64(u) * np.int64(u))
        k = 0
        v[0] = 0
        zn[0] = 0
        zd[0] = 1
        vk = np.int64(0)
        fvk = np.int64(f[0])
        znk = np.int64(0)
        zdk = np.int64(1)
        for q in range(1, W):
            fq = np.int64(f[q])
            num = fq - fvk
            den = 2 * (q - vk)
            while k > 0 and num * zdk <= znk * den:  # q's parabola is below from where v[k]'s starts
                k -= 1
                vk = np.int64(v[k])
                fvk = np.int64(f[vk])
                znk = np.int64(zn[k])
                zdk = np.int64(zd[k])
                num = fq - fvk
                den = 2 * (q - vk)
            k += 1
            v[k] = q
            zn[k] = np.int32(num)
            zd[k] = np.int32(den)
            vk = np.int64(q)
            fvk = fq
            znk = num
            zdk = den
        nrow = n2[y]
        kk = 0
        vk = np.int64(v[0])
        gk = np.int64(f[vk]) - vk * vk
        nzn = np.int64(0)
        nzd = np.int64(1)
        if k > 0:
            nzn = np.int64(zn[1])
            nzd = np.int64(zd[1])
        for x in range(W):
            while kk < k and nzn < x * nzd:  # the next parabola starts at or before x
                kk += 1
                vk = np.int64(v[kk])
                gk = np.int64(f[vk]) - vk * vk
                if kk < k:
                    nzn = np.int64(zn[kk + 1])
                    nzd = np.int64(zd[kk + 1])
            a = x - vk
            nrow[x] = a * a + gk


@njit(cache=True, nogil=True, inline="always")
def _dist(n):
    """Euclidean distance from an exact squared distance, as scipy's EDT followed by astype(float32)."""
    return np.float32(np.sqrt(np.float64(n)))


def edt_fits(H: int, W: int) -> bool:
    """Whether every squared distance of an (H,W) image fits the int32 map (sides up to ~32k)."""
    return int(W - 1) ** 2 + int(H + W + 1) ** 2 < 2**31


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
    import numba

    if _edt_columns(lab, g, inf, numba.get_num_threads()) == 0:
        return None
    if not edt_fits(H, W):
        from ..errors import ShapeError

        raise ShapeError(f"a {H}x{W} image is too large for the compiled EDT's int32 squared distances; "
                         "use backend='torch'")
    _edt_rows(g, g)  # in place
    return g


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
# One pass over row blocks (one block per work item, each with a halo of r + 1 rows): per row
# the distances d = sqrt(n2) of the rows it needs are computed into a ring of 2r+1 rows, the
# separable blur (replicate border, float64, taps in ascending order, as numpy's
# ``_gaussian_blur``) runs densely and branch-free over the row (vectorised), and the blurred
# rows y-1, y, y+1 (a ring of 3) give the gradient, offset and confidence of row y. Nothing
# image-sized is written but the outputs.


@njit(cache=True, nogil=True, inline="always")
def _d64_row(n2, yy, out):
    """out[x] = float64(float32(sqrt(n2[yy, x]))): d as the reference computes it (EDT -> float32)."""
    row = n2[yy]
    for x in range(row.shape[0]):
        out[x] = np.float64(np.float32(np.sqrt(np.float64(row[x]))))


@njit(cache=True, nogil=True, inline="always")
def _blur_row(dr, z, k, r, H, tr, out):
    """Blurred row z into ``out``: axis 0 from the ring ``dr`` (slot = row mod 2r+1, rows clamped
    to the image when they were filled), then axis 1 with replicate border. Per element the
    same float64 multiply-adds in the same order as the reference (0.0 + k0 v0 + k1 v1 ...)."""
    W = tr.shape[0]
    K = dr.shape[0]
    n = k.shape[0]
    for x in range(W):
        tr[x] = 0.0
    for i in range(n):
        src = dr[(z + i - r) % K]
        ki = k[i]
        for x in range(W):
            tr[x] += ki * src[x]
    for x in range(W):
        out[x] = 0.0
    lo = min(r, W)
    hi = max(W - r, lo)
    for i in range(n):
        ki = k[i]
        sh = i - r
        for x in range(lo):
            out[x] += ki * tr[min(max(x + sh, 0), W - 1)]
        src = tr[lo + sh:hi + sh]  # an aligned view: a plain, vectorised multiply-add
        dst = out[lo:hi]
        for j in range(hi - lo):
            dst[j] += ki * src[j]
        for x in range(hi, W):
            out[x] += ki * tr[min(max(x + sh, 0), W - 1)]


@njit(cache=True, nogil=True, inline="always")
def _field_row(lab, n2, y, up, cur, dn, two, eps, max_off, n_off, bw, table, tch, means, div, tw, use_dev,
               ox, oy, conf):
    """Offsets and confidence of row y from the (blurred) distance rows y-1, y, y+1 (``up``/``dn``
    unused at the image's top/bottom row); the gradient is numpy's ``np.gradient`` (central
    differences, one-sided at the borders).

    First the confidence and zero offsets of the whole row (the common case: most pixels are
    farther than ``max_offset`` from a boundary and do not move), then the offsets of the
    pixels within ``max_offset`` of a boundary.

    With ``use_dev`` the confidence is scaled by the teacher's deviation from its region mean,
    computed here from the teacher ``tch`` (C,H,W) and the float64 region ``means`` (C,n)
    (the float64 operations of the numpy path's deviation, without a deviation map)."""
    H, W = lab.shape
    C = tch.shape[0]
    zero = two - two
    half = two / (two + two)  # x / 2 == x * 0.5 exactly (a power of two): no division per pixel
    z32 = np.float32(0.0)
    nt = table.shape[0]
    lrow = lab[y]
    nrow = n2[y]
    orx = ox[y]
    ory = oy[y]
    crow = conf[y]
    for x in range(W):
        n = nrow[x]
        fc = table[n] if n < nt else np.exp(-_dist(n) / bw)
        if use_dev:
            v = lrow[x]
            dv = 0.0
            if v >= 0:
                acc = 0.0
                for c in range(C):
                    acc += abs(np.float64(tch[c, y, x]) - means[c, v])
                dv = min(max(acc / div, 0.0), 1.0)
            fc = fc * np.float32((1.0 - tw) + tw * dv)
        fc = min(max(fc, z32), np.float32(1.0))
        crow[x] = fc if lrow[x] >= 0 else z32  # unassigned pixels: zero confidence
        orx[x] = z32
        ory[x] = z32
    for x in range(W):
        n = nrow[x]
        v = lrow[x]
        if n >= n_off or v < 0:
            continue
        dd = _dist(n)
        if H > 1:
            if y == 0:
                gy = dn[x] - cur[x]
            elif y == H - 1:
                gy = cur[x] - up[x]
            else:
                gy = (dn[x] - up[x]) * half
        else:
            gy = zero
        if W > 1:
            if x == 0:
                gx = cur[1] - cur[0]
            elif x == W - 1:
                gx = cur[W - 1] - cur[W - 2]
            else:
                gx = (cur[x + 1] - cur[x - 1]) * half
        else:
            gx = zero
        norm = np.sqrt(gx * gx + gy * gy)
        length = min(max(max_off - dd, z32), max_off)
        fx = z32
        fy = z32
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
        orx[x] = fx
        ory[x] = fy


@njit(cache=True, parallel=True, nogil=True)
def _field(lab, n2, k, blur, dring, tring, sring, two, eps, max_off, n_off, bw, table, tch, means, div, tw,
           use_dev, ox, oy, conf):
    """Offsets and confidence of :func:`posthoc.offsets.offsets_from_proposals` for one image.

    ``blur``: smooth the distance with the float64 taps ``k`` (``sring`` float64), else use the
    float32 distance itself (``smooth=0``, ``sring`` float32); ``two``/``eps`` carry that dtype
    so that the gradient arithmetic matches numpy's on an array of it. ``sring`` (nblk,3,W),
    ``dring`` (nblk,2r+1,W) and ``tring`` (nblk,W) are per-block scratch rows.
    ``table[n] = exp(-sqrt(n) / bw)`` (computed by numpy) for squared distances n below its size;
    ``n_off`` is the smallest n whose float32 distance is >= max_off (so ``d < max_off <=> n < n_off``).
    """
    H, W = lab.shape
    nblk = sring.shape[0]
    r = (k.shape[0] - 1) // 2
    K = dring.shape[1]
    step = (H + nblk - 1) // nblk
    for bi in prange(nblk):
        ya = bi * step
        yb = min(H, ya + step)
        if ya >= yb:
            continue
        dr = dring[bi]
        tr = tring[bi]
        sr = sring[bi]
        z0 = max(ya - 1, 0)
        z1 = min(yb, H - 1)
        if blur:
            for rr in range(z0 - r, z0 + r):  # the ring's first 2r rows (replicate border)
                _d64_row(n2, min(max(rr, 0), H - 1), dr[rr % K])
        for z in range(z0, z1 + 1):
            out = sr[z % 3]
            if blur:
                rr = z + r
                _d64_row(n2, min(rr, H - 1), dr[rr % K])
                _blur_row(dr, z, k, r, H, tr, out)
            else:
                nrow = n2[z]
                for x in range(W):
                    out[x] = _dist(nrow[x])
            y = z - 1
            if y >= ya:
                _field_row(lab, n2, y, sr[(y - 1) % 3], sr[y % 3], sr[z % 3], two, eps, max_off, n_off, bw,
                           table, tch, means, div, tw, use_dev, ox, oy, conf)
        if yb == H:  # the last row (its gradient is one-sided)
            y = H - 1
            _field_row(lab, n2, y, sr[(y - 1) % 3], sr[y % 3], sr[y % 3], two, eps, max_off, n_off, bw,
                       table, tch, means, div, tw, use_dev, ox, oy, conf)


#: largest confidence table (entries = squared distances); beyond it exp is evaluated per pixel
TABLE_MAX = 1 << 20


@njit(cache=True, nogil=True)
def _region_means(lab, t, n, cnt, sums):
    """Per-region pixel counts and float64 sums of every channel, pixel order (= np.bincount).

    A run of equal labels is accumulated in a register and stored once: the same additions in
    the same order as one read-modify-write per pixel, without the store-to-load chain."""
    C, P = t.shape
    cur = np.int64(-2)
    k = np.int64(0)
    for p in range(P):
        v = np.int64(lab[p])
        if v != cur:
            if cur >= 0:
                cnt[cur] = k
            cur = v
            if v >= 0:
                k = cnt[v]
        if v >= 0:
            k += 1
    if cur >= 0:
        cnt[cur] = k
    for c in range(C):
        tc = t[c]
        sc = sums[c]
        cur = np.int64(-2)
        acc = 0.0
        for p in range(P):
            v = np.int64(lab[p])
            if v != cur:
                if cur >= 0:
                    sc[cur] = acc
                cur = v
                if v >= 0:
                    acc = sc[v]
            if v >= 0:
                acc += np.float64(tc[p])
        if cur >= 0:
            sc[cur] = acc
    for v in range(n):
        kk = max(cnt[v], 1)
        for c in range(C):
            sums[c, v] = sums[c, v] / kk


@_serialized
def teacher_means_np(lab: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(H,W) labels, (C,H,W) float32 teacher -> (C, max label + 1) float64 region means
    (the sums of the bincount formulation in :func:`posthoc.offsets.offsets_from_proposals`, in
    the same order), for :func:`offset_field_np`."""
    C = t.shape[0]
    flat = lab.reshape(-1)
    n = max(int(flat.max()) + 1, 0) if flat.size else 0
    cnt = np.zeros(n, np.int64)
    sums = np.zeros((C, n), np.float64)
    if n:
        _region_means(flat, t.reshape(C, -1), n, cnt, sums)
    return sums


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
def offset_field_np(lab, n2, smooth_taps, max_offset, boundary_width, teacher, means, teacher_weight, ox, oy, conf):
    """Fill ``ox, oy, conf`` (H,W) float32 for one image from its squared EDT ``n2``.

    ``smooth_taps`` are the float64 Gaussian taps, or None for ``smooth=0``. ``teacher``
    (C,H,W) float32 and its region ``means`` (:func:`teacher_means_np`), or both None: the
    deviation from the region means is computed per pixel inside the pass.
    """
    import numba

    H, W = lab.shape
    blur = smooth_taps is not None
    taps = smooth_taps if blur else np.ones(1, np.float64)
    nblk = max(1, min(H, 2 * numba.get_num_threads()))
    t = np.float64 if blur else np.float32
    sring = np.empty((nblk, 3, W), t)
    dring = np.empty((nblk, taps.shape[0] if blur else 1, W), np.float64)
    tring = np.empty((nblk, W), np.float64)
    use_dev = teacher is not None
    tch = np.ascontiguousarray(teacher) if use_dev else np.zeros((1, 1, 1), np.float32)
    mns = means if use_dev else np.zeros((1, 1), np.float64)
    div = 2.0 if tch.shape[0] > 1 else 1.0
    table = _conf_table(float(boundary_width), (H - 1) ** 2 + (W - 1) ** 2 + 1)
    _field(lab, n2, taps, blur, dring, tring, sring, t(2.0), t(1e-6), np.float32(max_offset),
           _first_at_least(float(max_offset)), np.float32(boundary_width), table,
           tch, mns, div, float(teacher_weight), use_dev, ox, oy, conf)
