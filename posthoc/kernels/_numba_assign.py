"""Soft assignment at the output size (CSL Eq. 2 with bilinear resizing), pruned, in numba.

Semantics of :func:`posthoc.assign._soft_assign_dense`: ``label(p) = argmax_n V_n *
bilinear(R_n)(p)`` with the first maximum winning, where ``bilinear`` is
``(R[y0,x0] lx0 + R[y0,x1] lx1) ly0 + (R[y1,x0] lx0 + R[y1,x1] lx1) ly1`` in float32 with the
indices and weights of :class:`posthoc.assign._Grid`. The kernel evaluates exactly these
float operations, in this order, for the regions it evaluates, so the labels are identical.

Pruning (the method of :func:`posthoc.assign._soft_assign_pruned`, vectorised over cells):
an output pixel interpolates the 2x2 low-resolution cell at (y0, x0); bilinear weights are
convex, so on the whole cell ``V_n min_cell R_n <= V_n bilinear(R_n) <= V_n max_cell R_n``.
Per cell row (contiguous blocks of cell rows are the parallel work items, each with its
scratch allocated once), the bounds of every region are computed for all cells of the row in
contiguous loops, and their best values region by region (vectorised over the cells); a
region whose upper bound is below the best lower bound (by more than a relative 1e-5, which
covers float rounding) cannot win anywhere in the cell. Cells with one candidate are painted
run by run; in the others only the candidates are evaluated, per pixel.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._numba import _serialized

#: relative margin of the candidate test (see posthoc.assign._PRUNE_REL)
PRUNE_REL = 1e-5


@njit(cache=True, nogil=True)
def _cell_row(r, v, b, cy, y1, ly0, ly1, x1, lx0, lx1, ystart, xstart, up, dn, out, U, L, mL, mU, thr, cand,
              ncand):
    """One low-resolution cell row: bounds, candidates, then its output rows; returns the number
    of values of R's row cy outside [0,1] (NaN included; then nothing is written)."""
    N = r.shape[1]
    w = r.shape[3]
    zero = np.float32(0.0)
    one = np.float32(1.0)
    nbad = 0
    Y0 = ystart[cy]
    Y1 = ystart[cy + 1]
    if Y1 == Y0:  # no output row interpolates from this cell row: only the range check
        for n in range(N):
            rr = r[b, n, cy]
            for cx in range(w):
                q = rr[cx]
                if not (q >= zero and q <= one):
                    nbad += 1
        return nbad
    cy1 = y1[Y0]
    for n in range(N):  # the bounds (contiguous, vectorised), with the range check of row cy folded in
        vn = v[b, n]
        ra = r[b, n, cy]
        rb = r[b, n, cy1]
        Un = U[n]
        Ln = L[n]
        ra1 = ra[1:]
        rb1 = rb[1:]
        for cx in range(w - 1):
            a0 = ra[cx]
            a1 = ra1[cx]
            b0 = rb[cx]
            b1 = rb1[cx]
            if not (a0 >= zero and a0 <= one):
                nbad += 1
            Un[cx] = max(max(a0, a1), max(b0, b1)) * vn
            Ln[cx] = min(min(a0, a1), min(b0, b1)) * vn
        a0 = ra[w - 1]
        b0 = rb[w - 1]
        if not (a0 >= zero and a0 <= one):
            nbad += 1
        Un[w - 1] = max(a0, b0) * vn
        Ln[w - 1] = min(a0, b0) * vn
    if nbad:
        return nbad
    for cx in range(w):  # best bounds over the regions, region by region (vectorised over cells)
        mL[cx] = L[0, cx]
        mU[cx] = U[0, cx]
    for n in range(1, N):
        Un = U[n]
        Ln = L[n]
        for cx in range(w):
            mL[cx] = max(mL[cx], Ln[cx])
            mU[cx] = max(mU[cx], Un[cx])
    for cx in range(w):
        thr[cx] = mL[cx] * dn
        ncand[cx] = 0
    for n in range(N):  # candidates in ascending n
        Un = U[n]
        for cx in range(w):
            if Un[cx] * up >= thr[cx]:
                cand[cx, ncand[cx]] = n
                ncand[cx] += 1
    for cx in range(w):
        if mU[cx] == 0:  # every region is 0 on the cell: all tie, the lowest n wins
            cand[cx, 0] = 0
            ncand[cx] = 1
    for Y in range(Y0, Y1):
        wy0 = ly0[Y]
        wy1 = ly1[Y]
        orow = out[b, Y]
        for cx in range(w):  # cell by cell: a single candidate paints its run of columns
            k = ncand[cx]
            Xa = xstart[cx]
            Xb = xstart[cx + 1]
            if k == 1:
                c0 = np.int64(cand[cx, 0])
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
    return 0


@njit(cache=True, parallel=True, nogil=True)
def _assign(r, v, y0, y1, ly0, ly1, x0, x1, lx0, lx1, ystart, xstart, rel, out, bad, nchunk):
    """r (B,N,h,w) f32, v (B,N) f32; per-axis grid arrays; ystart (h+1,), xstart (w+1,): the
    output rows/columns of each cell row/column (y0, x0 are non-decreasing); out (B,H,W) int64.

    The B*h cell rows are split into ``nchunk`` contiguous blocks, each with its scratch
    allocated once. ``bad[b*h + cy]`` counts the values of R's row cy outside [0,1] (NaN
    included): the range check of ``soft_assign`` folded into this read of R."""
    B, N, h, w = r.shape
    up = np.float32(1.0 + rel)
    dn = np.float32(1.0 - rel)
    n_it = B * h
    step = (n_it + nchunk - 1) // nchunk
    for ch in prange(nchunk):
        U = np.empty((N, w), np.float32)
        L = np.empty((N, w), np.float32)
        mL = np.empty(w, np.float32)
        mU = np.empty(w, np.float32)
        thr = np.empty(w, np.float32)
        cand = np.empty((w, N), np.int32)
        ncand = np.empty(w, np.int64)
        for it in range(ch * step, min(n_it, (ch + 1) * step)):
            b = it // h
            cy = it % h
            bad[it] = _cell_row(r, v, b, cy, y1, ly0, ly1, x1, lx0, lx1, ystart, xstart, up, dn, out, U, L,
                                mL, mU, thr, cand, ncand)


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
    import numba

    B, _, h, w = r.shape
    bad = np.zeros(B * h, np.int64)
    nchunk = max(1, min(B * h, 4 * numba.get_num_threads()))
    _assign(r, v, y0, y1, ly0, ly1, x0, x1, lx0, lx1, _starts(y0, h), _starts(x0, w), PRUNE_REL, out, bad, nchunk)
    return int(bad.sum())
