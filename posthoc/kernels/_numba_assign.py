"""Soft assignment at the output size (CSL Eq. 2 with bilinear resizing), pruned, in numba.

Semantics of :func:`posthoc.assign._soft_assign_dense`: ``label(p) = argmax_n V_n *
bilinear(R_n)(p)`` with the first maximum winning, where ``bilinear`` is
``(R[y0,x0] lx0 + R[y0,x1] lx1) ly0 + (R[y1,x0] lx0 + R[y1,x1] lx1) ly1`` in float32 with the
indices and weights of :class:`posthoc.assign._Grid`. The kernel evaluates exactly these
float operations, in this order, for the regions it evaluates, so the labels are identical.

Pruning (the method of :func:`posthoc.assign._soft_assign_pruned`, vectorised over cells):
an output pixel interpolates the 2x2 low-resolution cell at (y0, x0); bilinear weights are
convex, so on the whole cell ``V_n min_cell R_n <= V_n bilinear(R_n) <= V_n max_cell R_n``.
Per cell row (one parallel work item), the bounds of every region are computed for all
cells of the row in contiguous loops; a region whose upper bound is below the best lower
bound (by more than a relative 1e-5, which covers float rounding) cannot win anywhere in
the cell. Cells with one candidate are painted directly; in the others only the candidates
are evaluated, per pixel.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._numba import _serialized

#: relative margin of the candidate test (see posthoc.assign._PRUNE_REL)
PRUNE_REL = 1e-5


@njit(cache=True, parallel=True, nogil=True)
def _assign(r, v, y0, y1, ly0, ly1, x0, x1, lx0, lx1, ystart, xstart, rel, out, bad):
    """r (B,N,h,w) f32, v (B,N) f32; per-axis grid arrays; ystart (h+1,), xstart (w+1,): the
    output rows/columns of each cell row/column (y0, x0 are non-decreasing); out (B,H,W) int64.

    ``bad[b*h + cy]`` counts the values of R's row cy outside [0,1] (NaN included): the range
    check of ``soft_assign`` folded into this read of R."""
    B, N, h, w = r.shape
    W = out.shape[2]
    up = np.float32(1.0 + rel)
    dn = np.float32(1.0 - rel)
    for it in prange(B * h):
        b = it // h
        cy = it % h
        nbad = 0
        zero = np.float32(0.0)
        one = np.float32(1.0)
        Y0 = ystart[cy]
        Y1 = ystart[cy + 1]
        if Y1 == Y0:  # no output row interpolates from this cell row: only the range check
            for n in range(N):
                rr = r[b, n, cy]
                for cx in range(w):
                    q = rr[cx]
                    if not (q >= zero and q <= one):
                        nbad += 1
            bad[it] = nbad
            continue
        cy1 = y1[Y0]
        U = np.empty((N, w), np.float32)
        L = np.empty((N, w), np.float32)
        for n in range(N):  # the bounds, with the range check of row cy folded into this read
            vn = v[b, n]
            ra = r[b, n, cy]
            rb = r[b, n, cy1]
            for cx in range(w - 1):
                a0 = ra[cx]
                a1 = ra[cx + 1]
                b0 = rb[cx]
                b1 = rb[cx + 1]
                if not (a0 >= zero and a0 <= one):
                    nbad += 1
                U[n, cx] = max(max(a0, a1), max(b0, b1)) * vn
                L[n, cx] = min(min(a0, a1), min(b0, b1)) * vn
            a0 = ra[w - 1]
            b0 = rb[w - 1]
            if not (a0 >= zero and a0 <= one):
                nbad += 1
            U[n, w - 1] = max(a0, b0) * vn
            L[n, w - 1] = min(a0, b0) * vn
        bad[it] = nbad
        if nbad:
            continue
        cand = np.empty((w, N), np.int64)
        ncand = np.zeros(w, np.int64)
        for cx in range(w):
            if xstart[cx + 1] == xstart[cx]:
                continue
            mL = L[0, cx]
            mU = U[0, cx]
            for n in range(1, N):
                mL = max(mL, L[n, cx])
                mU = max(mU, U[n, cx])
            if mU == 0:  # every region is 0 on the cell: all tie, the lowest n wins
                cand[cx, 0] = 0
                ncand[cx] = 1
                continue
            thr = mL * dn
            k = 0
            for n in range(N):
                if U[n, cx] * up >= thr:
                    cand[cx, k] = n
                    k += 1
            ncand[cx] = k
        for Y in range(Y0, Y1):
            wy0 = ly0[Y]
            wy1 = ly1[Y]
            orow = out[b, Y]
            for cx in range(w):  # cell by cell: a single candidate paints its run of columns
                k = ncand[cx]
                Xa = xstart[cx]
                Xb = xstart[cx + 1]
                if k == 1:
                    c0 = cand[cx, 0]
                    for X in range(Xa, Xb):
                        orow[X] = c0
                    continue
                for X in range(Xa, Xb):
                    xa = cx
                    xb = x1[X]
                    wx0 = lx0[X]
                    wx1 = lx1[X]
                    best = np.float32(-1.0)
                    lab = 0
                    for j in range(k):
                        n = cand[cx, j]
                        t0 = r[b, n, cy, xa] * wx0 + r[b, n, cy, xb] * wx1
                        t1 = r[b, n, cy1, xa] * wx0 + r[b, n, cy1, xb] * wx1
                        val = (t0 * wy0 + t1 * wy1) * v[b, n]
                        if val > best:  # strict: the lowest n wins ties
                            best = val
                            lab = n
                    orow[X] = lab


def _starts(idx: np.ndarray, n: int) -> np.ndarray:
    """(n+1,) start offsets of the runs of each value 0..n-1 in the non-decreasing ``idx``."""
    out = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(idx, minlength=n), out=out[1:])
    return out


@_serialized
def soft_assign_np(r: np.ndarray, v: np.ndarray, y0, y1, ly0, ly1, x0, x1, lx0, lx1, out: np.ndarray) -> int:
    """Labels (B,H,W) int64 into ``out``; grid arrays as in :class:`posthoc.assign._Grid` (numpy).

    Returns the number of values of R outside [0,1] or NaN (then ``out`` is not complete and
    the caller raises the range error)."""
    B, _, h, w = r.shape
    bad = np.zeros(B * h, np.int64)
    _assign(r, v, y0, y1, ly0, ly1, x0, x1, lx0, lx1, _starts(y0, h), _starts(x0, w), PRUNE_REL, out, bad)
    return int(bad.sum())
