"""CPU kernels compiled with numba: fused two-pass region fusion and one-pass weighted argmax.

Semantics are those of :mod:`posthoc.kernels._torch` (the reference); this module only
makes them fast on a multi-core CPU.

Design (docs/architecture.md, "Kernels"): the work is memory-bound, so the kernels aim at the
bandwidth floor -- read the scores twice, the labels twice, write the output once.

* Labels are spatially coherent, so instead of scattering each pixel into its region's
  accumulator, each image is cut into blocks of ``block`` pixels (rows concatenated,
  row-major), the runs of equal labels of a block are found once, and every channel is
  summed run by run: the inner loop is a contiguous float32 reduction that LLVM
  vectorizes, and the accumulator is touched once per run, not once per pixel.
* Parallelism: the batch is split into ``B * parts`` contiguous work items (``parts``
  segments per image, chosen so the items divide evenly over the threads). Every item
  owns a private float64 accumulator of shape (C, N+1); the accumulators are summed at
  the end, so no two threads ever write the same memory.
* Slot 0 of each accumulator / mean table belongs to label -1 (index ``label + 1``), so
  the kernels have no branch for unassigned pixels. In pass 2 slot 0 holds 1.0, and
  ``1.0 * p == p`` exactly, so unassigned pixels keep their score bit for bit.
* Labels are read in their own dtype (int32 or int64; int32 halves the label traffic).
  Out-of-range labels (< -1 or >= N) are detected while the runs are scanned, at no
  extra cost, and reported with a flag instead of writing out of bounds.

All functions are compiled with ``cache=True``: the JIT cost (see docs/kernels.md) is paid
once per machine and dtype combination, later processes load the machine code from the
numba cache.
"""
from __future__ import annotations

import functools
import math
import os
import threading

import numba
import numpy as np
from numba import njit, prange

# Threading layer. numba prefers OpenMP when it finds it; on a busy machine (more runnable
# threads than cores -- other processes, torch's own OpenMP pool) the OpenMP barrier of every
# parallel region then costs tens of milliseconds: measured on the 2-core development machine
# at load ~10, a parallel pass over 16 MB took ~70 ms with "omp" and ~0.5 ms with "workqueue".
# "workqueue" threads block instead of spinning, so it is the default here unless the user
# chose a layer with NUMBA_THREADING_LAYER. (It does not allow concurrent launches from
# several Python threads; the wrappers below serialize launches.)
if not os.environ.get("NUMBA_THREADING_LAYER"):
    numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]  # set at run time, not declared

# fast-math without "nnan"/"ninf": allow re-association (so reductions vectorize) but keep
# IEEE semantics for non-finite values.
_FM = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: pixels per block: the run buffers and one block of every channel stay in L1/L2.
BLOCK = 4096


@njit(cache=True, nogil=True, inline="always")
def _runs(lab, s, e, starts, labs, nreg):
    """Runs of equal labels in ``lab[s:e]`` (e > s).

    Writes run starts into ``starts[:k+1]`` (``starts[k] == e``) and run labels + 1 into
    ``labs[:k]``; returns ``(k, bad)`` where bad is 1 if a label lies outside [-1, nreg).
    Labels are coherent, so the scan tests 16 labels at a time against the current one (a
    vectorized compare) and only walks a chunk label by label when it holds a change: 2.5x
    faster than a plain scalar scan on a Voronoi map.
    """
    seg = lab[s:e]
    L = e - s
    cur = seg[0]
    k = 0
    bad = 0
    starts[0] = s
    labs[0] = np.int64(cur) + 1
    if cur < -1 or cur >= nreg:
        bad = 1
    x = 1
    while x + 16 <= L:
        diff = 0
        for q in range(16):
            diff += seg[x + q] != cur
        if diff:
            for q in range(16):
                v = seg[x + q]
                if v != cur:
                    k += 1
                    starts[k] = s + x + q
                    labs[k] = np.int64(v) + 1
                    cur = v
                    if v < -1 or v >= nreg:
                        bad = 1
        x += 16
    while x < L:
        v = seg[x]
        if v != cur:
            k += 1
            starts[k] = s + x
            labs[k] = np.int64(v) + 1
            cur = v
            if v < -1 or v >= nreg:
                bad = 1
        x += 1
    k += 1
    starts[k] = e
    return k, bad


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM)
def _accumulate(d, lab, nreg, parts, block, acc, cnt, bad, check, lo, hi, vbad):
    """Pass 1: per-item region sums (and, if ``check``, a value check in the same pass).

    d (B,C,P) float32, lab (B,P) int32/int64, acc (B*parts, C, nreg+1) float64 zeroed,
    cnt (B*parts, nreg+1) int64 zeroed, bad (B*parts,) uint8 zeroed (out-of-range label),
    vbad (B*parts,) int64 zeroed: number of values that fail ``lo <= x <= hi`` -- NaN fails
    both compares, and the bounds are finite (see ``_check_args``) so +-Inf fails too. The
    count of passing values is a vectorizable integer reduction (min/max reductions are not,
    and ``x * 0`` tricks are not safe under re-association).
    """
    B, C, P = d.shape
    seg = (P + parts - 1) // parts
    for it in prange(B * parts):
        b = it // parts
        k = it - b * parts
        s0 = k * seg
        s1 = min(P, s0 + seg)
        starts = np.empty(block + 1, np.int64)
        labs = np.empty(block, np.int64)
        labrow = lab[b]
        vb = 0
        for bs in range(s0, s1, block):
            be = min(s1, bs + block)
            nr, flag = _runs(labrow, bs, be, starts, labs, nreg)
            if flag:
                # never touch the accumulators with an out-of-range label
                bad[it] = 1
                break
            for r in range(nr):
                cnt[it, labs[r]] += starts[r + 1] - starts[r]
            for c in range(C):
                drow = d[b, c]
                accc = acc[it, c]
                for r in range(nr):
                    # slices (not drow[x]) let LLVM drop the negative-index check and vectorize
                    run = drow[starts[r] : starts[r + 1]]
                    s = np.float32(0.0)
                    if check:
                        ok = 0
                        for x in range(run.shape[0]):
                            v = run[x]
                            s += v
                            ok += (v >= lo) & (v <= hi)
                        vb += run.shape[0] - ok
                    else:
                        for x in range(run.shape[0]):
                            s += run[x]
                    accc[labs[r]] += s
        vbad[it] = vb


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM)
def _value_violations(x, lo, hi, block):
    """One pass over x (1-D float32): number of values failing ``lo <= x <= hi`` (NaN/Inf included)."""
    P = x.shape[0]
    nblk = (P + block - 1) // block
    part = np.zeros(nblk, np.int64)
    for j in prange(nblk):
        seg = x[j * block : min(P, (j + 1) * block)]
        ok = 0
        for i in range(seg.shape[0]):
            v = seg[i]
            ok += (v >= lo) & (v <= hi)
        part[j] = seg.shape[0] - ok
    return part.sum()


@njit(cache=True, nogil=True)
def _reduce_sums(acc, cnt, B, parts, sums, counts):
    """acc (B*parts,C,N+1) -> sums (B,N,C) float32, counts (B,N) int64 (slot 0 = label -1 dropped).

    Tiny work (B*N*C), so serial: saves a parallel compile. Loops run along the contiguous N axis.
    """
    C = acc.shape[1]
    N = acc.shape[2] - 1
    for b in range(B):
        for n in range(N):
            t = np.int64(0)
            for k in range(parts):
                t += cnt[b * parts + k, n + 1]
            counts[b, n] = t
        for c in range(C):
            for n in range(N):
                s = 0.0
                for k in range(parts):
                    s += acc[b * parts + k, c, n + 1]
                sums[b, n, c] = np.float32(s)


@njit(cache=True, nogil=True)
def _means_table(acc, cnt, B, parts, table):
    """acc (B*parts,C,N+1) -> table (B,C,N+1) float32: slot 0 = 1.0 (label -1), else the region mean.

    The mean is computed as float32(sum) / float32(max(count, 1)), like the torch reference.
    """
    C = acc.shape[1]
    N1 = acc.shape[2]
    den = np.empty(N1, np.float32)
    for b in range(B):
        for n in range(N1):
            t = np.int64(0)
            for k in range(parts):
                t += cnt[b * parts + k, n]
            den[n] = np.float32(max(t, 1))
        for c in range(C):
            table[b, c, 0] = np.float32(1.0)
            for n in range(1, N1):
                s = 0.0
                for k in range(parts):
                    s += acc[b * parts + k, c, n]
                table[b, c, n] = np.float32(s) / den[n]


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM)
def _scatter_means(d, lab, table, parts, block, out):
    """Pass 2: out[b,c,p] = table[b,c,lab[b,p]+1] * d[b,c,p] (labels already range-checked)."""
    B, C, P = d.shape
    nreg = table.shape[2] - 1
    seg = (P + parts - 1) // parts
    for it in prange(B * parts):
        b = it // parts
        k = it - b * parts
        s0 = k * seg
        s1 = min(P, s0 + seg)
        starts = np.empty(block + 1, np.int64)
        labs = np.empty(block, np.int64)
        labrow = lab[b]
        for bs in range(s0, s1, block):
            be = min(s1, bs + block)
            nr, _ = _runs(labrow, bs, be, starts, labs, nreg)
            for c in range(C):
                drow = d[b, c]
                orow = out[b, c]
                trow = table[b, c]
                for r in range(nr):
                    m = trow[labs[r]]
                    src = drow[starts[r] : starts[r + 1]]
                    dst = orow[starts[r] : starts[r + 1]]
                    for x in range(src.shape[0]):
                        dst[x] = m * src[x]


@njit(cache=True, nogil=True, inline="always")
def _pick(wa, ia, wb, ib):
    """The larger of two (value, index) candidates; on a tie the first (lower index) wins."""
    g = wb > wa
    return (wb if g else wa), (ib if g else ia)


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM)
def _weighted_argmax(r, v, block, out, check, lo, hi, vbad):
    """One pass over R: out[b,p] = argmax_n r[b,n,p] * v[b,n], ties -> lowest n.

    r (B,N,P) float32 with N >= 1, v (B,N) float32, out (B,P) int64. Each work item keeps
    the running maximum and its index for ``block`` pixels in L1 and streams the N rows
    of its block once, four rows at a time: the four candidates are reduced in registers
    (a tournament whose ties go to the lower n) before one compare with the running maximum,
    which halves the L1 traffic of a row-at-a-time loop (2x faster on the development
    machine). A strict ``>`` everywhere keeps the lowest n on ties. The product is formed in
    float32 exactly as the reference does, so the result is identical, not just close.
    With ``check`` the values of R are tested against [lo, hi] and for finiteness in the same
    pass; vbad (B*nblk,) int64 receives the number of failing values (NaN/Inf included).
    """
    B, N, P = r.shape
    nblk = (P + block - 1) // block
    for it in prange(B * nblk):
        b = it // nblk
        j = it - b * nblk
        s = j * block
        e = min(P, s + block)
        L = e - s
        best = np.empty(block, np.float32)
        idx = np.zeros(block, np.int32)
        vb = 0
        n = 0
        while n < N:
            if n + 4 <= N:
                ra = r[b, n, s:e]
                rb = r[b, n + 1, s:e]
                rc = r[b, n + 2, s:e]
                rd = r[b, n + 3, s:e]
            else:  # tail: repeat the last row (a repeated candidate never wins: ties keep the first)
                ra = r[b, n, s:e]
                rb = r[b, min(n + 1, N - 1), s:e]
                rc = r[b, min(n + 2, N - 1), s:e]
                rd = r[b, min(n + 3, N - 1), s:e]
            va = v[b, n]
            vb_ = v[b, min(n + 1, N - 1)]
            vc = v[b, min(n + 2, N - 1)]
            vd = v[b, min(n + 3, N - 1)]
            na = np.int32(n)
            nb_ = np.int32(min(n + 1, N - 1))
            nc = np.int32(min(n + 2, N - 1))
            nd = np.int32(min(n + 3, N - 1))
            first = n == 0
            if check:
                ok = 0
                for i in range(L):
                    xa = ra[i]
                    xb = rb[i]
                    xc = rc[i]
                    xd = rd[i]
                    w1, i1 = _pick(xa * va, na, xb * vb_, nb_)
                    w2, i2 = _pick(xc * vc, nc, xd * vd, nd)
                    w3, i3 = _pick(w1, i1, w2, i2)
                    gt = first or w3 > best[i]
                    best[i] = w3 if gt else best[i]
                    idx[i] = i3 if gt else idx[i]
                    ok += (((xa >= lo) & (xa <= hi)) + ((xb >= lo) & (xb <= hi))
                           + ((xc >= lo) & (xc <= hi)) + ((xd >= lo) & (xd <= hi)))
                vb += 4 * L - ok
            else:
                for i in range(L):
                    w1, i1 = _pick(ra[i] * va, na, rb[i] * vb_, nb_)
                    w2, i2 = _pick(rc[i] * vc, nc, rd[i] * vd, nd)
                    w3, i3 = _pick(w1, i1, w2, i2)
                    gt = first or w3 > best[i]
                    best[i] = w3 if gt else best[i]
                    idx[i] = i3 if gt else idx[i]
            n += 4
        dst = out[b, s:e]
        for i in range(L):
            dst[i] = idx[i]
        vbad[it] = vb


def _parts(batch: int, size: int, threads: int) -> int:
    """Segments per image so that ``batch * parts`` work items divide evenly over the threads."""
    threads = max(1, threads)
    parts = threads // math.gcd(max(batch, 1), threads)
    return max(1, min(parts, max(1, size // BLOCK)))


# One kernel launch at a time per process: numba's fallback "workqueue" threading layer aborts
# on concurrent launches from several Python threads, and every launch already uses all the
# cores it is given. The kernels release the GIL, so other Python threads keep running.
_LOCK = threading.RLock()


def _serialized(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _LOCK:
            return fn(*args, **kwargs)

    return wrapper


#: status codes of the wrappers
OK, BAD_LABELS, BAD_VALUES = 0, 1, 2

_F32_MAX = float(np.finfo(np.float32).max)
_NO_CHECK = (False, np.float32(-_F32_MAX), np.float32(_F32_MAX))


def _check_args(value_range):
    if value_range is None:
        return _NO_CHECK
    # finite bounds, so that +-Inf fail ``lo <= x <= hi`` like NaN does
    lo = min(max(float(value_range[0]), -_F32_MAX), _F32_MAX)
    hi = min(max(float(value_range[1]), -_F32_MAX), _F32_MAX)
    return True, np.float32(lo), np.float32(hi)


def _pass1(d: np.ndarray, lab: np.ndarray, nreg: int, value_range):
    B, C, P = d.shape
    parts = _parts(B, P, numba.get_num_threads())
    acc = np.zeros((B * parts, C, nreg + 1), np.float64)
    cnt = np.zeros((B * parts, nreg + 1), np.int64)
    bad = np.zeros(B * parts, np.uint8)
    vbad = np.zeros(B * parts, np.int64)
    check, lo, hi = _check_args(value_range)
    _accumulate(d, lab, nreg, parts, BLOCK, acc, cnt, bad, check, lo, hi, vbad)
    if bad.any():
        return acc, cnt, parts, BAD_LABELS
    if check and vbad.sum() != 0:
        return acc, cnt, parts, BAD_VALUES
    return acc, cnt, parts, OK


@_serialized
def value_violations(x: np.ndarray, lo: float, hi: float) -> int:
    """Number of values of x (float32) that are NaN, +-Inf or outside [lo, hi]; one parallel pass."""
    flat = x.reshape(-1)
    if flat.size == 0:
        return 0
    _, lo32, hi32 = _check_args((lo, hi))
    return int(_value_violations(flat, lo32, hi32, 1 << 16))


def _labels_only_minus_one(lab: np.ndarray) -> bool:
    return lab.size == 0 or bool((lab == -1).all())


@_serialized
def region_sums_np(d: np.ndarray, lab: np.ndarray, nreg: int, value_range=None):
    """d (B,C,P) float32 C-contiguous, lab (B,P) int32/int64 -> (sums (B,N,C) f32, counts (B,N) i64, status)."""
    B, C, P = d.shape
    sums = np.zeros((B, nreg, C), np.float32)
    counts = np.zeros((B, nreg), np.int64)
    if B == 0 or P == 0 or nreg == 0:
        if nreg == 0 and not _labels_only_minus_one(lab):
            return sums, counts, BAD_LABELS
        if value_range is not None and value_violations(d, *value_range) != 0.0:
            return sums, counts, BAD_VALUES
        return sums, counts, OK
    acc, cnt, parts, status = _pass1(d, lab, nreg, value_range)
    if status != OK:
        return sums, counts, status
    _reduce_sums(acc, cnt, B, parts, sums, counts)
    return sums, counts, OK


@_serialized
def region_fuse_np(d: np.ndarray, lab: np.ndarray, nreg: int, out: np.ndarray, value_range=None) -> int:
    """CSL Eq. 3 into ``out`` (B,C,P) float32; returns a status (out untouched unless OK)."""
    B, C, P = d.shape
    if B == 0 or P == 0 or C == 0 or nreg == 0:
        if nreg == 0 and not _labels_only_minus_one(lab):
            return BAD_LABELS
        if value_range is not None and value_violations(d, *value_range) != 0.0:
            return BAD_VALUES
        if nreg == 0 and d.size:
            np.copyto(out, d)
        return OK
    acc, cnt, parts, status = _pass1(d, lab, nreg, value_range)
    if status != OK:
        return status
    table = np.empty((B, C, nreg + 1), np.float32)
    _means_table(acc, cnt, B, parts, table)
    _scatter_means(d, lab, table, parts, BLOCK, out)
    return OK


@_serialized
def weighted_argmax_np(r: np.ndarray, v: np.ndarray, out: np.ndarray, value_range=None) -> int:
    """r (B,N,P) float32 C-contiguous with N >= 1, v (B,N) float32, out (B,P) int64; returns a status."""
    B, P = r.shape[0], r.shape[2]
    if B == 0 or P == 0:
        return OK
    block = min(BLOCK, P)
    nblk = (P + block - 1) // block
    vbad = np.zeros(B * nblk, np.int64)
    check, lo, hi = _check_args(value_range)
    _weighted_argmax(r, v, block, out, check, lo, hi, vbad)
    if check and vbad.sum() != 0:
        return BAD_VALUES
    return OK
