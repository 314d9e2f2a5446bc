"""Run-based connected components of equal labels (CSL mask split), compiled with numba.

Semantics of :func:`posthoc.components.connected_components` (and of the pixel union-find
it replaced, kept there as the cross-check): two neighbouring pixels are connected when they
carry the same label >= 0; components are numbered 0..M-1 per image in raster order of their
first pixel; components under ``min_size`` pixels become -1.

Labels are spatially coherent, so the image is processed as runs (maximal horizontal
segments of one label) instead of pixels (He et al., "Fast connected-component labeling",
Pattern Recognition 2009, the run-based two-scan family):

1. every row is cut into runs in parallel (one read of the labels);
2. runs of consecutive rows that carry the same label and overlap (columns within one for
   8-connectivity, sharing a column for 4-connectivity) are joined by a union-find over the
   runs -- a few runs per row, so this is cheap and sequential;
3. the root of a component is its first run in raster order, which holds its first pixel:
   numbering roots in run order gives the raster numbering; sizes are sums of run lengths;
4. every row writes its runs' ids in parallel (one write of the output).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._numba import _serialized


@njit(cache=True, parallel=True, nogil=True)
def _count_runs(lab, counts):
    """counts[b*H + y] = number of runs of labels >= 0 in row y of image b."""
    B, H, W = lab.shape
    for it in prange(B * H):
        b = it // H
        y = it % H
        row = lab[b, y]
        c = 0
        prev = -1
        for x in range(W):
            v = row[x]
            if v >= 0 and v != prev:
                c += 1
            prev = v
        counts[it] = c


@njit(cache=True, parallel=True, nogil=True)
def _fill_runs(lab, first, rs, re, rl):
    """Runs of row (b, y) at indices first[it]..first[it+1]-1: start, end (inclusive), label."""
    B, H, W = lab.shape
    for it in prange(B * H):
        b = it // H
        y = it % H
        row = lab[b, y]
        k = first[it]
        x = 0
        while x < W:
            v = row[x]
            if v < 0:
                x += 1
                continue
            s = x
            while x + 1 < W and row[x + 1] == v:
                x += 1
            rs[k] = s
            re[k] = x
            rl[k] = v
            k += 1
            x += 1


@njit(cache=True, nogil=True, inline="always")
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@njit(cache=True, nogil=True)
def _join(first, rs, re, rl, B, H, conn8, min_size, parent, ids, counts):
    """Union-find over runs (steps 2-3); ids[k] = component id of run k (or -1)."""
    n = rs.shape[0]
    for k in range(n):
        parent[k] = k
    slack = 1 if conn8 else 0
    for b in range(B):
        for y in range(1, H):
            it = b * H + y
            a0 = first[it - 1]
            a_end = first[it]
            for c in range(first[it], first[it + 1]):
                # runs of the row above that touch c: [rs, re] ranges within ``slack`` columns
                while a0 < a_end and re[a0] + slack < rs[c]:
                    a0 += 1
                a = a0
                while a < a_end and rs[a] <= re[c] + slack:
                    if rl[a] == rl[c]:
                        ra = _find(parent, a)
                        rc = _find(parent, c)
                        if ra < rc:
                            parent[rc] = ra
                        elif rc < ra:
                            parent[ra] = rc
                    a += 1
    size = np.zeros(n, np.int64)
    for k in range(n):
        r = _find(parent, k)
        parent[k] = r
        size[r] += re[k] - rs[k] + 1
    for b in range(B):
        m = 0
        for k in range(first[b * H], first[(b + 1) * H]):
            r = parent[k]
            if r == k:
                if size[k] >= min_size:
                    ids[k] = m
                    m += 1
                else:
                    ids[k] = -1
            else:
                ids[k] = ids[r]
        counts[b] = m


@njit(cache=True, parallel=True, nogil=True)
def _paint(first, rs, re, ids, out):
    B, H, W = out.shape
    for it in prange(B * H):
        b = it // H
        y = it % H
        orow = out[b, y]
        x = 0
        for k in range(first[it], first[it + 1]):
            s = rs[k]
            while x < s:
                orow[x] = -1
                x += 1
            v = ids[k]
            e = re[k]
            while x <= e:
                orow[x] = v
                x += 1
        while x < W:
            orow[x] = -1
            x += 1


@_serialized
def label_runs_np(lab: np.ndarray, conn8: bool, min_size: int, out: np.ndarray) -> np.ndarray:
    """Components of equal labels of (B,H,W) int32/int64 ``lab`` into ``out`` (B,H,W) int64.

    Returns the (B,) int64 component counts.
    """
    B, H, W = lab.shape
    cnt = np.empty(B * H, np.int64)
    _count_runs(lab, cnt)
    first = np.zeros(B * H + 1, np.int64)
    np.cumsum(cnt, out=first[1:])
    n = int(first[-1])
    rs = np.empty(n, np.int32)
    re = np.empty(n, np.int32)
    rl = np.empty(n, lab.dtype)
    _fill_runs(lab, first, rs, re, rl)
    parent = np.empty(n, np.int64)
    ids = np.empty(n, np.int64)
    counts = np.zeros(B, np.int64)
    _join(first, rs, re, rl, B, H, bool(conn8), int(min_size), parent, ids, counts)
    _paint(first, rs, re, ids, out)
    return counts
