"""Pixel-level anomaly metrics pooled over a data set: AP, AUROC, FPR95, best F1.

Two modes, and every result names the one it used:

* ``"smiyc"`` reproduces the official SegmentMeIfYouCan code
  (``road_anomaly_benchmark/metrics/pixel_classification.py``, config ``PixBinaryClass``, and
  ``pixel_classification_curves.py::curves_from_cmats``, commit 1c7804e):

  1. per frame, only non-void pixels count; thresholds are the union of
     ``[vmin - eps, vmax + eps]`` (``eps = max(0.01 * (vmax - vmin), 0.01)``) and
     ``min(384, n)`` linearly interpolated quantiles (``np.quantile`` 'linear') of the
     positive and of the negative scores; per bin ``[e_k, e_k+1)`` the positive and
     negative pixels are counted (``np.histogram``);
  2. the per-frame (lower edge, counts) entries of all frames are concatenated, sorted by
     threshold descending (``np.argsort(...)[::-1]``) and cumulated: TP(t) = #positives with
     score >= t;
  3. repeated thresholds are collapsed to their last entry (the official code also keeps
     the very first entry, even when its threshold repeats; we keep that too, so the
     numbers are the official ones);
  4. the curve gets the points (0,0) and (P,N) if missing; AP is the step sum
     ``sum(diff(recall) * precision[1:])``, AUROC the trapezoid rule over (FPR, TPR), FPR95
     the FPR at the first threshold (from high to low) whose TPR >= 0.95, without
     interpolation (1.0 when never reached), best F1 = max 2TP/(2TP+FP+FN) and its threshold.

  State: about 770 thresholds and two counts per frame (~18 KB), merged by concatenation.

* ``"exact"`` is sort-based and equals sklearn: ``average_precision_score`` and
  ``roc_auc_score`` on the pooled non-void pixels (tested to 1e-12). Recall only changes at
  the distinct scores of anomaly pixels, so the curve is evaluated there: for each such
  score v (from high to low) TP(v) and FP(v) = #negatives >= v come from the sorted
  negatives by binary search; AP = sum over those points of (recall step) x precision,
  AUROC = P(s_pos > s_neg) + P(s_pos = s_neg) / 2 (Mann-Whitney, equal to the trapezoid
  rule over the exact ROC curve), FPR95 and best F1 as above (both are attained at an
  anomaly score).

  State and memory: float16 scores (as in SMIYC submission files and posthoc-bench's
  cache) go into two exact 65536-bin histograms of the float16 values: 1 MiB whatever
  the data-set size. Other dtypes keep every non-void score, sorted per frame (4 bytes
  per pixel for float32: about 700 MB for 100 frames of 1024x2048, plus 8 bytes per pixel
  transiently while ``compute`` merges them).

Large float32 frames are sorted with an LSD radix sort compiled by numba (3 passes of 11
bits over the order-preserving integer keys; about 3-4x faster than ``np.sort`` here,
same result), falling back to ``np.sort`` when numba is unavailable.

In both modes a pixel counts as positive at threshold ``t`` when ``score >= t``.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..errors import DTypeError, ShapeError, ValueRangeError
from ._common import (
    EmptyMetricError,
    check_anomaly_ignore_index,
    check_binary_labels,
    check_finite_values,
    check_mergeable,
    check_same_shape,
    check_scores,
)
from ._state import all_gather_arrays, as_array, check_settings, check_state_keys, split_sizes, sync_state

logger = logging.getLogger(__name__)

__all__ = [
    "RADIX_MIN",
    "SMIYC_NUM_BINS",
    "PixelMetrics",
    "exact_curve",
    "reduce_curve",
    "smiyc_curve",
    "smiyc_frame_bins",
    "sort_scores",
    "sorted_quantiles",
]

SMIYC_NUM_BINS = 768
_MODES = ("smiyc", "exact")


# --------------------------------------------------------------------------- sorted multisets
#: float32 arrays with at least this many values are sorted by :func:`sort_scores`'s numba
#: radix sort; below it ``np.sort`` is as fast and needs no compilation
RADIX_MIN = 1 << 16
_radix_kernel: Any = None  # None: not built yet; False: unavailable; else the compiled kernel


def _build_radix_kernel():
    """Compile (once, cached on disk) an LSD radix sort of float32 values: 3 passes of 11 bits.

    Sorts by the order-preserving uint32 key of each float (sign-magnitude -> offset binary),
    so the output equals ``np.sort`` for finite input (-0.0 sorts before +0.0; they compare equal).
    """
    import numba

    @numba.njit(cache=True, nogil=True)
    def radix_sort_f32(x):  # pragma: no cover - compiled
        n = x.size
        u = x.view(np.uint32)
        a = np.empty(n, np.uint32)
        b = np.empty(n, np.uint32)
        c0 = np.zeros(2048, np.int64)
        c1 = np.zeros(2048, np.int64)
        c2 = np.zeros(1024, np.int64)
        for i in range(n):
            k = u[i]
            if k >> 31:
                k = ~k
            else:
                k = k | np.uint32(0x80000000)
            a[i] = k
            c0[k & 0x7FF] += 1
            c1[(k >> 11) & 0x7FF] += 1
            c2[k >> 22] += 1
        for c in (c0, c1, c2):
            t = 0
            for j in range(c.size):
                v = c[j]
                c[j] = t
                t += v
        for i in range(n):
            k = a[i]
            j = k & 0x7FF
            b[c0[j]] = k
            c0[j] += 1
        for i in range(n):
            k = b[i]
            j = (k >> 11) & 0x7FF
            a[c1[j]] = k
            c1[j] += 1
        for i in range(n):
            k = a[i]
            j = k >> 22
            b[c2[j]] = k
            c2[j] += 1
        for i in range(n):
            k = b[i]
            if k >> 31:
                b[i] = k & np.uint32(0x7FFFFFFF)
            else:
                b[i] = ~k
        return b.view(np.float32)

    return radix_sort_f32


def sort_scores(x: np.ndarray) -> np.ndarray:
    """Sorted copy of a 1-D finite float array, equal to ``np.sort(x)``.

    float32 arrays of at least :data:`RADIX_MIN` values use a numba LSD radix sort (3 passes
    of 11 bits; compiled once and cached on disk, so the first call may take a while); other
    arrays, or a machine where numba fails, use ``np.sort``. The exact pixel metrics sort
    every frame's scores with it.

    >>> sort_scores(np.array([0.5, -1.0, 0.25], np.float32)).tolist()
    [-1.0, 0.25, 0.5]
    """
    global _radix_kernel
    if x.dtype == np.float32 and x.size >= RADIX_MIN:
        if _radix_kernel is None:
            try:
                kernel = _build_radix_kernel()
                kernel(np.zeros(4, np.float32))  # compile (or load from the on-disk cache) now
                _radix_kernel = kernel
            except Exception as e:
                logger.info("numba radix sort unavailable (%s: %s); using np.sort", type(e).__name__, e)
                _radix_kernel = False
        if _radix_kernel is not False:
            return _radix_kernel(np.ascontiguousarray(x))
    return np.sort(x)


def _f16_keys(x: np.ndarray) -> np.ndarray:
    """Order-preserving uint16 keys of float16 values (sign-magnitude -> offset binary)."""
    u = x.view(np.uint16)
    neg = (u & 0x8000) != 0
    return np.where(neg, ~u, u | 0x8000).astype(np.uint16)


def _f16_from_keys(k: np.ndarray) -> np.ndarray:
    k = k.astype(np.uint16)
    pos = (k & 0x8000) != 0
    return np.where(pos, k & 0x7FFF, ~k).astype(np.uint16).view(np.float16)


def _f16_histogram(x: np.ndarray) -> np.ndarray:
    """(65536,) int64 counts of float16 values, indexed by their order-preserving key."""
    return np.bincount(_f16_keys(x), minlength=65536)


class _Sorted:
    """A sorted multiset of finite floats: a sorted array, or distinct sorted values + counts.

    ``take`` gives order statistics and ``count_lt`` / ``count_le`` rank queries, so the same
    code serves a ``np.sort``-ed frame and a float16 histogram (no sort needed).
    """

    __slots__ = ("cum", "n", "values")

    def __init__(self, values: np.ndarray, counts: np.ndarray | None = None) -> None:
        self.values = values
        if counts is None:
            self.cum = None
            self.n = int(values.shape[0])
        else:
            self.cum = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
            self.n = int(self.cum[-1])

    @classmethod
    def from_unsorted(cls, x: np.ndarray) -> _Sorted:
        if x.dtype == np.float16 and x.size > 4096:
            h = _f16_histogram(x)
            nz = np.flatnonzero(h)
            return cls(_f16_from_keys(nz), h[nz])
        return cls(sort_scores(x))

    @classmethod
    def from_histogram(cls, h: np.ndarray) -> _Sorted:
        nz = np.flatnonzero(h)
        return cls(_f16_from_keys(nz), h[nz])

    def take(self, idx: np.ndarray) -> np.ndarray:
        if self.cum is None:
            return self.values[idx]
        return self.values[np.searchsorted(self.cum, idx, "right") - 1]

    def count_lt(self, v: np.ndarray) -> np.ndarray:
        i = self.values.searchsorted(v, "left")
        return i if self.cum is None else self.cum[i]

    def count_le(self, v: np.ndarray) -> np.ndarray:
        i = self.values.searchsorted(v, "right")
        return i if self.cum is None else self.cum[i]

    def distinct(self) -> tuple[np.ndarray, np.ndarray]:
        if self.cum is None:
            return _unique_counts_sorted(self.values)
        v, c = self.values, np.diff(self.cum)
        if v.size > 1 and np.any(v[1:] == v[:-1]):  # -0.0 and +0.0 are two float16 keys
            return _merge_runs([(v[:1], c[:1]), (v[1:], c[1:])])
        return v, c

    @property
    def first(self):
        return self.values[0]

    @property
    def last(self):
        return self.values[-1]

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + (0 if self.cum is None else self.cum.nbytes)


# --------------------------------------------------------------------------- smiyc binning
def sorted_quantiles(s: np.ndarray | _Sorted, q: np.ndarray) -> np.ndarray:
    """``np.quantile(s, q)`` (method 'linear') of a sorted multiset, without re-partitioning.

    Reproduces numpy's linear interpolation (``numpy/lib/_function_base_impl.py::_lerp``)
    operation by operation, so the result is bit-identical to ``np.quantile`` (tested).

    Args:
        s: (n,) sorted ascending array (n >= 1, any float dtype, finite), or a ``_Sorted``.
        q: (m,) float64 quantiles in [0,1].

    Returns:
        (m,) float64 quantile values.
    """
    ms = s if isinstance(s, _Sorted) else _Sorted(s)
    n = ms.n
    vi = (n - 1) * q
    prev = np.floor(vi)
    prev_i = prev.astype(np.intp)
    next_i = prev_i + 1
    above = vi >= n - 1
    prev_i[above] = n - 1
    next_i[above] = n - 1
    gamma = vi - np.where(above, -1, prev_i)  # numpy computes gamma from the clipped (-1) index
    a = ms.take(prev_i)
    b = ms.take(next_i)
    diff_b_a = b - a
    out = np.add(a, diff_b_a * gamma)
    hi = gamma >= 0.5
    np.subtract(b, diff_b_a * (1 - gamma), out=out, where=hi, casting="unsafe", dtype=out.dtype)
    return out


def _bin_counts(ms: _Sorted, edges: np.ndarray) -> np.ndarray:
    """Counts per bin [e_k, e_k+1) (last bin closed), as ``np.histogram(vals, bins=edges)[0]``."""
    if ms.n == 0:
        return np.zeros(edges.size - 1, dtype=np.int64)
    cum = np.empty(edges.size, dtype=np.int64)
    cum[:-1] = ms.count_lt(edges[:-1])
    cum[-1] = ms.count_le(edges[-1:])[0]
    return np.diff(cum)


def smiyc_frame_bins(pos_sorted: np.ndarray | _Sorted, neg_sorted: np.ndarray | _Sorted,
                     num_bins: int = SMIYC_NUM_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame of the official 'percentiles' binning (``binary_confusion_matrix``).

    Args:
        pos_sorted: (P,) scores of the frame's anomaly pixels, sorted ascending, finite (or a
            ``_Sorted`` multiset).
        neg_sorted: (N,) scores of the frame's in-distribution pixels, likewise.
            P + N >= 1; both in the same float dtype.
        num_bins: 768 in the official ``PixBinaryClass`` config; at most ``num_bins // 2``
            quantiles are taken per class.

    Returns:
        ``(thresholds, tp_rel, fp_rel)``: (M,) float64 lower bin edges in descending order, and
        (M,) int64 numbers of positive / negative pixels in each bin (``bin_edges[1:]``,
        ``tp_rel``, ``fp_rel`` of the official code after its reversal).
    """
    pos = pos_sorted if isinstance(pos_sorted, _Sorted) else _Sorted(pos_sorted)
    neg = neg_sorted if isinstance(neg_sorted, _Sorted) else _Sorted(neg_sorted)
    parts = [m for m in (pos, neg) if m.n]
    if not parts:
        raise EmptyMetricError("smiyc_frame_bins needs at least one non-void pixel; got none")
    vmin = parts[0].first if len(parts) == 1 else np.minimum(parts[0].first, parts[1].first)
    vmax = parts[0].last if len(parts) == 1 else np.maximum(parts[0].last, parts[1].last)
    vrange = vmax - vmin
    eps = np.maximum(vrange * 1e-2, 1e-2)
    pieces = [np.asarray([vmin - eps, vmax + eps])]
    for m in (pos, neg):
        if m.n:
            pieces.append(sorted_quantiles(m, np.linspace(0, 1, min(num_bins // 2, m.n))))
    edges = np.unique(np.concatenate(pieces))
    tp = _bin_counts(pos, edges)
    fp = _bin_counts(neg, edges)
    return edges[:-1][::-1].copy(), tp[::-1].copy(), fp[::-1].copy()


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    # same expression as numpy.trapezoid (bit-identical)
    d = np.diff(x)
    return float((d * (y[1:] + y[:-1]) / 2.0).sum())


def _curve_summary(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray,
                   thresholds: np.ndarray) -> dict:
    """Shared tail of both modes: rates, F1, FPR95 on a curve ordered from high to low threshold."""
    tpr = tp / (tp + fn)
    fpr = fp / (fp + tn)
    n_pred = tp + fp
    precision = np.ones(tp.shape[0], np.float64)
    ok = n_pred > 0
    precision[ok] = tp[ok] / n_pred[ok]
    recall = tpr
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = (2 * tp) / (2 * tp + fp + fn)
    i95 = int(np.searchsorted(tpr, 0.95))
    if i95 < tpr.shape[0]:
        fpr95, thr95 = float(fpr[i95]), float(thresholds[i95])
    else:  # never reached (cannot happen on a complete curve, kept as in the official code)
        fpr95, thr95 = 1.0, 0.0
    ix = int(np.nanargmax(f1))
    return {
        "precision": precision, "recall": recall, "tpr": tpr, "fpr": fpr, "f1": f1,
        "fpr95": fpr95, "fpr95_threshold": thr95,
        "best_f1": float(f1[ix]), "best_f1_threshold": float(thresholds[ix]),
    }


def smiyc_curve(thresholds: np.ndarray, tp_rel: np.ndarray, fp_rel: np.ndarray,
                num_pos: int, num_neg: int) -> dict:
    """Merge the per-frame bins of a data set and compute the official curve and metrics.

    Follows ``MetricPixelClassification.aggregate_dynamic_bins`` and ``curves_from_cmats``.

    Args:
        thresholds: (T,) float64, the per-frame lower edges concatenated in frame order.
        tp_rel, fp_rel: (T,) int64 positive / negative counts per entry.
        num_pos, num_neg: totals over the data set; both must be > 0.

    Returns:
        dict with ``ap``, ``auroc``, ``fpr95``, ``fpr95_threshold``, ``best_f1``,
        ``best_f1_threshold`` (Python floats) and the curve arrays ``precision``, ``recall``,
        ``tpr``, ``fpr``, ``thresholds`` (float64, from high to low threshold).
    """
    order = np.argsort(thresholds)[::-1]
    tp_c = np.cumsum(tp_rel[order].astype(np.float64))
    fp_c = np.cumsum(fp_rel[order].astype(np.float64))
    thr = thresholds[order]
    n = thr.shape[0]
    keep = np.concatenate([[0], np.nonzero(thr[:-1] != thr[1:])[0], [n - 1]])
    tp, fp, thr = tp_c[keep], fp_c[keep], thr[keep]
    fn = num_pos - tp
    tn = num_neg - fp
    if tp[0] != 0 or fp[0] != 0:
        tp = np.concatenate([[0], tp])
        fp = np.concatenate([[0], fp])
        fn = np.concatenate([[num_pos], fn])
        tn = np.concatenate([[num_neg], tn])
        thr = np.concatenate([[float(np.max(thr)) + 1], thr])
    if tp[-1] != num_pos or fp[-1] != num_neg:
        tp = np.concatenate([tp, [num_pos]])
        fp = np.concatenate([fp, [num_neg]])
        fn = np.concatenate([fn, [0]])
        tn = np.concatenate([tn, [0]])
        thr = np.concatenate([thr, [float(np.max(thr)) - 1]])
    out = _curve_summary(tp, fp, fn, tn, thr)
    out["ap"] = float(np.sum(np.diff(out["recall"]) * out["precision"][1:]))
    out["auroc"] = _trapezoid(out["tpr"], out["fpr"])
    out["thresholds"] = thr
    return out


# --------------------------------------------------------------------------- exact mode
def _unique_counts_sorted(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted 1-D array and how often each occurs."""
    n = s.shape[0]
    if n == 0:
        return s[:0].copy(), np.zeros(0, np.int64)
    flag = np.empty(n, dtype=bool)
    flag[0] = True
    np.not_equal(s[1:], s[:-1], out=flag[1:])
    idx = np.flatnonzero(flag)
    counts = np.diff(np.append(idx, n)).astype(np.int64)
    return s[idx], counts


def _merge_runs(runs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Merge (sorted values, counts) runs into distinct sorted values with summed counts."""
    runs = [r for r in runs if r[0].size]
    if not runs:
        return np.zeros(0, np.float64), np.zeros(0, np.int64)
    values = np.unique(np.concatenate([v for v, _ in runs]))
    counts = np.zeros(values.shape[0], np.int64)
    for v, c in runs:
        np.add.at(counts, np.searchsorted(values, v), c)
    return values, counts


class _ExactState:
    """Additive multiset of the scores of one class (see the module docstring, exact mode)."""

    def __init__(self) -> None:
        self.hist: np.ndarray | None = None  # float16 frames: (65536,) int64 by order key
        self.runs: list[np.ndarray] = []  # other dtypes: one sorted array per frame

    def add(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        if x.dtype == np.float16:
            h = _f16_histogram(x)
            self.hist = h if self.hist is None else self.hist + h
        else:
            self.runs.append(sort_scores(x))

    def merge(self, other: _ExactState) -> None:
        if other.hist is not None:
            self.hist = other.hist.copy() if self.hist is None else self.hist + other.hist
        self.runs.extend(other.runs)

    def multiset(self) -> _Sorted:
        """Everything added so far as one sorted multiset (one sort of the concatenated runs)."""
        raw = None
        if self.runs:
            if len(self.runs) > 1:
                cat = np.concatenate(self.runs)
                # float32: linear-time radix sort; else timsort, which merges the sorted runs
                raw = sort_scores(cat) if cat.dtype == np.float32 else np.sort(cat, kind="stable")
                self.runs = [raw]  # keep the merged run: a second compute() is cheaper
            else:
                raw = self.runs[0]
        if self.hist is None:
            return _Sorted(raw if raw is not None else np.zeros(0, np.float32))
        hs = _Sorted.from_histogram(self.hist)
        if raw is None:
            return hs
        v, c = _merge_runs([hs.distinct(), _unique_counts_sorted(raw)])
        return _Sorted(v, c)

    @property
    def nbytes(self) -> int:
        return (0 if self.hist is None else self.hist.nbytes) + sum(r.nbytes for r in self.runs)


def exact_curve(pos: _Sorted, neg: _Sorted) -> dict:
    """Exact curve and metrics from the sorted scores of each class.

    The curve has one point per distinct anomaly score v (from high to low), where recall
    changes, plus (0,0) at +inf and (P,N) at -inf. TP(v) = #positives >= v,
    FP(v) = #negatives >= v. AP = sum_k (R_k - R_k-1) P_k, as ``average_precision_score``
    (the points sklearn adds at negative scores have a zero recall step);
    AUROC = [#(s_pos > s_neg) + #(s_pos = s_neg) / 2] / (P N), equal to ``roc_auc_score``.

    Args:
        pos, neg: sorted multisets of the anomaly and in-distribution scores, both non-empty.

    Returns:
        the same keys as :func:`smiyc_curve`.
    """
    pv, pc = pos.distinct()
    num_pos, num_neg = float(pos.n), float(neg.n)
    v = pv[::-1]
    c = pc[::-1].astype(np.float64)
    neg_lt = neg.count_lt(v).astype(np.float64)
    neg_le = neg.count_le(v).astype(np.float64)
    tp = np.cumsum(c)
    fp = num_neg - neg_lt  # negatives >= v
    precision = tp / (tp + fp)
    recall = tp / num_pos
    ap = max(0.0, float(np.sum(np.diff(np.r_[0.0, recall]) * precision)))
    auroc = float((np.dot(c, neg_lt) + 0.5 * np.dot(c, neg_le - neg_lt)) / (num_pos * num_neg))

    tp = np.r_[0.0, tp, num_pos]
    fp = np.r_[0.0, fp, num_neg]
    thr = np.r_[np.inf, v.astype(np.float64), -np.inf]
    out = _curve_summary(tp, fp, num_pos - tp, num_neg - fp, thr)
    out["ap"] = ap
    out["auroc"] = auroc
    out["thresholds"] = thr
    return out


# --------------------------------------------------------------------------- curves for plots
def reduce_curve(curves: dict, max_points: int | None) -> dict:
    """Keep at most about ``max_points`` points of a curve, for plotting and JSON.

    Keeps the end points, points evenly spaced in recall, in FPR and in index, so the PR
    and ROC plots keep their shape. The metrics are always computed on the full curve.
    """
    n = curves["recall"].shape[0]
    if max_points is None or n <= max_points:
        return curves
    k = max(2, max_points // 3)
    grid = np.linspace(0.0, 1.0, k)
    idx = np.concatenate([
        np.linspace(0, n - 1, k).round().astype(np.int64),
        np.searchsorted(curves["recall"], grid),
        np.searchsorted(curves["fpr"], grid),
        [0, n - 1],
    ])
    idx = np.unique(np.clip(idx, 0, n - 1))
    return {key: v[idx] for key, v in curves.items()}


# --------------------------------------------------------------------------- accumulator
class PixelMetrics:
    """Pixel-level AP / AUROC / FPR95 / best F1, pooled over every pixel of a data set.

    Frames are added with :meth:`update`; :meth:`compute` returns the data-set metrics.
    States of the same mode add up with :meth:`merge` (a data set split over processes
    and merged in frame order gives exactly the single-run numbers; in ``smiyc`` mode the
    merge order can only change the official tie quirk described in the module docstring).

    Args:
        mode: ``"smiyc"`` (official per-frame 768-bin 'percentiles' binning, default) or
            ``"exact"`` (sort-based, equals sklearn). See the module docstring.
        ignore_index: label value of void pixels (255 in SMIYC).
        num_bins: bins per frame in ``smiyc`` mode (768 as the official ``PixBinaryClass``).

    Example (two frames, (H,W) or (B,H,W) each; 255 is void):
        >>> pm = PixelMetrics(mode="exact")
        >>> pm.update(np.array([[0.9, 0.8, 0.3, 0.1]], np.float32), np.array([[1, 0, 1, 0]], np.uint8))
        >>> pm.update(np.array([[0.7, 0.2]], np.float32), np.array([[1, 255]], np.uint8))
        >>> res = pm.compute()
        >>> round(res["ap"], 4), round(res["auroc"], 4), res["fpr95"], res["n_pixels_pos"]
        (0.8056, 0.6667, 0.5, 3)
    """

    def __init__(self, mode: str = "smiyc", ignore_index: int = 255, num_bins: int = SMIYC_NUM_BINS) -> None:
        if mode not in _MODES:
            raise ValueRangeError(f"mode must be one of {_MODES}; got {mode!r}")
        if int(num_bins) < 2:
            raise ValueRangeError(f"num_bins must be >= 2; got {num_bins}")
        self.mode = mode
        self.ignore_index = check_anomaly_ignore_index(ignore_index, "PixelMetrics")
        self.num_bins = int(num_bins)
        self.reset()

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget every frame."""
        self.n_frames = 0
        self.n_pos = 0
        self.n_neg = 0
        self._frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # smiyc
        self._pos = _ExactState()  # exact
        self._neg = _ExactState()

    def merge(self, other: PixelMetrics) -> PixelMetrics:
        """Add the state of ``other`` (same mode and settings) to this one; returns ``self``."""
        check_mergeable(self, other, ("mode", "ignore_index", "num_bins"))
        self.n_frames += other.n_frames
        self.n_pos += other.n_pos
        self.n_neg += other.n_neg
        if self.mode == "smiyc":
            self._frames.extend(other._frames)
        else:
            self._pos.merge(other._pos)
            self._neg.merge(other._neg)
        return self

    @property
    def state_nbytes(self) -> int:
        """Bytes held by the accumulated state."""
        if self.mode == "smiyc":
            return sum(t.nbytes + a.nbytes + b.nbytes for t, a, b in self._frames)
        return self._pos.nbytes + self._neg.nbytes

    # ----------------------------------------------------------------- state API
    def _settings(self) -> dict[str, np.ndarray]:
        return {"mode": np.array(self.mode), "ignore_index": np.array(self.ignore_index, np.int64),
                "num_bins": np.array(self.num_bins, np.int64)}

    def state_dict(self) -> dict[str, np.ndarray]:
        """The accumulated state as plain numpy arrays (save with ``np.savez``; no pickle needed).

        Keys: the settings ``mode`` (0-d str), ``ignore_index``, ``num_bins``; the counts
        ``n_frames``, ``n_pos``, ``n_neg`` (0-d int64); in ``smiyc`` mode the per-frame bins
        concatenated in frame order, ``bin_thresholds`` (T,) float64, ``bin_tp`` / ``bin_fp``
        (T,) int64 and ``bin_sizes`` (F,) int64 entries per binned frame; in ``exact`` mode,
        per class ``c`` in ``pos``/``neg``: ``{c}_hist`` (65536,) int64 counts of float16
        scores by order key (or (0,) when none), ``{c}_runs`` (M,) the other scores as sorted
        runs concatenated and ``{c}_run_sizes`` (R,) int64.
        """
        st = self._settings() | {
            "n_frames": np.array(self.n_frames, np.int64),
            "n_pos": np.array(self.n_pos, np.int64),
            "n_neg": np.array(self.n_neg, np.int64),
        }
        if self.mode == "smiyc":
            fr = self._frames
            for j, (key, dt) in enumerate((("bin_thresholds", np.float64), ("bin_tp", np.int64),
                                           ("bin_fp", np.int64))):
                st[key] = np.concatenate([f[j] for f in fr]).astype(dt, copy=False) if fr else np.zeros(0, dt)
            st["bin_sizes"] = np.array([f[0].shape[0] for f in fr], np.int64)
        else:
            for c, ex in (("pos", self._pos), ("neg", self._neg)):
                st[f"{c}_hist"] = ex.hist.astype(np.int64, copy=True) if ex.hist is not None else np.zeros(0, np.int64)
                st[f"{c}_runs"] = np.concatenate(ex.runs) if ex.runs else np.zeros(0, np.float32)
                st[f"{c}_run_sizes"] = np.array([r.shape[0] for r in ex.runs], np.int64)
        return st

    def load_state_dict(self, state: dict) -> None:
        """Replace this accumulator's state by ``state`` (from :meth:`state_dict`, same settings).

        Raises:
            ValueRangeError: the state was saved with other settings (mode, ignore_index,
                num_bins), or holds negative counts; ShapeError / DTypeError: malformed arrays.
        """
        keys = ["mode", "ignore_index", "num_bins", "n_frames", "n_pos", "n_neg"]
        keys += (["bin_thresholds", "bin_tp", "bin_fp", "bin_sizes"] if self.mode == "smiyc" else
                 [f"{c}_{k}" for c in ("pos", "neg") for k in ("hist", "runs", "run_sizes")])
        check_state_keys("PixelMetrics", state, keys)
        check_settings("PixelMetrics", self._settings(), state)
        counts = [int(as_array(state, k, np.int64, 0)) for k in ("n_frames", "n_pos", "n_neg")]
        if min(counts) < 0:
            raise ValueRangeError(f"PixelMetrics.load_state_dict: counts must be >= 0; got n_frames, n_pos, n_neg "
                                  f"= {counts}")
        frames: list = []
        pos, neg = _ExactState(), _ExactState()
        if self.mode == "smiyc":
            thr = as_array(state, "bin_thresholds", np.float64, 1)
            tp = as_array(state, "bin_tp", np.int64, 1)
            fp = as_array(state, "bin_fp", np.int64, 1)
            sizes = as_array(state, "bin_sizes", np.int64, 1)
            if not thr.shape == tp.shape == fp.shape:
                raise ShapeError(f"PixelMetrics.load_state_dict: bin_thresholds, bin_tp and bin_fp must have one "
                                 f"length; got {thr.shape}, {tp.shape}, {fp.shape}")
            if sizes.shape[0] > counts[0]:
                raise ValueRangeError(f"PixelMetrics.load_state_dict: {sizes.shape[0]} binned frames but n_frames "
                                      f"= {counts[0]}")
            parts = [split_sizes(a, sizes, "PixelMetrics.load_state_dict (bin_sizes)") for a in (thr, tp, fp)]
            frames = list(zip(*parts, strict=True))
        else:
            for c, ex in (("pos", pos), ("neg", neg)):
                h = as_array(state, f"{c}_hist", np.int64, 1)
                if h.shape[0] not in (0, 65536):
                    raise ShapeError(f"PixelMetrics.load_state_dict: {c}_hist must be (65536,) or (0,); got {h.shape}")
                ex.hist = h.copy() if h.shape[0] and h.sum() > 0 else None
                runs = as_array(state, f"{c}_runs", None, 1)
                if runs.dtype.kind != "f":
                    raise DTypeError(f"PixelMetrics.load_state_dict: {c}_runs must be float; got {runs.dtype}")
                ex.runs = [r for r in split_sizes(runs, as_array(state, f"{c}_run_sizes", np.int64, 1),
                                                  f"PixelMetrics.load_state_dict ({c}_run_sizes)") if r.size]
        self.n_frames, self.n_pos, self.n_neg = counts
        self._frames = frames
        self._pos, self._neg = pos, neg

    def sync(self, process_group: Any = None) -> PixelMetrics:
        """All-reduce the state over a ``torch.distributed`` process group, in place; returns ``self``.

        Afterwards every rank holds the state of the whole group: counts and float16
        histograms are summed, per-frame bins and sorted runs are concatenated in rank
        order. When rank r evaluated the r-th contiguous block of the frames, the result
        equals a single process over all frames exactly (the ``smiyc`` tie quirk included).

        Raises:
            MetricSyncError: no process group, different settings across ranks, or a failed
                or timed-out collective (e.g. a rank died).
        """
        st = self.state_dict()
        if self.mode == "smiyc":
            cat = ["bin_thresholds", "bin_tp", "bin_fp", "bin_sizes"]
            sums = ["n_frames", "n_pos", "n_neg"]
        else:
            # one float dtype for the runs on every rank (float32 unless some rank holds float64)
            (codes,) = all_gather_arrays([np.array([2 if (st["pos_runs"].dtype == np.float64 or
                                                          st["neg_runs"].dtype == np.float64) else 1], np.int64)],
                                         process_group, "PixelMetrics.sync (dtype)")
            dt = np.float64 if max(int(c[0]) for c in codes) == 2 else np.float32
            for c in ("pos", "neg"):
                st[f"{c}_runs"] = st[f"{c}_runs"].astype(dt, copy=False)
                if st[f"{c}_hist"].shape[0] == 0:
                    st[f"{c}_hist"] = np.zeros(65536, np.int64)
            cat = [f"{c}_{k}" for c in ("pos", "neg") for k in ("runs", "run_sizes")]
            sums = ["n_frames", "n_pos", "n_neg", "pos_hist", "neg_hist"]
        self.load_state_dict(sync_state("PixelMetrics", self._settings(), st, sums, cat, process_group))
        return self

    # ----------------------------------------------------------------- update
    def update(self, scores: Any, labels: Any) -> None:
        """Add frames.

        Args:
            scores: (H,W), (B,H,W) or (B,1,H,W) anomaly scores, numpy or torch (any device),
                float16/32/64, higher = more anomalous, finite on non-void pixels. Any range
                (probabilities in [0,1] for SMIYC submissions); not modified.
            labels: same spatial shape, integer or bool; 0 = in-distribution, 1 = anomaly,
                ``ignore_index`` = void. A frame that is all void adds nothing but its count.

        Raises:
            ShapeError, DTypeError, ValueRangeError (labels outside {0,1,ignore}),
            NonFiniteError (NaN/Inf scores on non-void pixels).
        """
        s = check_scores(scores)
        lab = check_binary_labels(labels, self.ignore_index)
        check_same_shape(s, "scores", lab, "labels")
        for b in range(s.shape[0]):
            self._update_frame(s[b], lab[b])

    def _update_frame(self, s: np.ndarray, lab: np.ndarray) -> None:
        pos = s[lab == 1]
        neg = s[lab == 0]
        check_finite_values(pos, "scores")
        check_finite_values(neg, "scores")
        self.n_frames += 1
        self.n_pos += pos.size
        self.n_neg += neg.size
        if pos.size + neg.size == 0:
            return
        if self.mode == "smiyc":
            self._frames.append(
                smiyc_frame_bins(_Sorted.from_unsorted(pos), _Sorted.from_unsorted(neg), self.num_bins)
            )
        else:
            self._pos.add(pos)
            self._neg.add(neg)

    # ----------------------------------------------------------------- compute
    def compute(self, curve_points: int | None = 4096) -> dict:
        """Metrics over every frame added so far.

        Args:
            curve_points: the returned curves are thinned to about this many points for
                plotting (None = the full curve). The metrics use the full curve.

        Returns:
            dict: ``mode``; ``ap``, ``auroc``, ``fpr95`` (FPR at TPR >= 0.95, no interpolation),
            ``fpr95_threshold``, ``best_f1``, ``best_f1_threshold`` (a pixel is positive when
            score >= threshold) as floats; ``n_frames``, ``n_pixels_pos``, ``n_pixels_neg``;
            ``curves``: dict of float64 arrays ``precision``, ``recall``, ``tpr``, ``fpr``,
            ``thresholds``, ordered from high to low threshold.

        Raises:
            EmptyMetricError: no frame, no non-void pixel, or only one class in the data set
                (AP/AUROC/FPR95 are undefined then).
        """
        if self.n_frames == 0:
            raise EmptyMetricError("PixelMetrics.compute() needs at least one update(); got none")
        if self.n_pos == 0 or self.n_neg == 0:
            raise EmptyMetricError(
                "PixelMetrics needs both anomaly (1) and in-distribution (0) pixels over the data set; "
                f"got {self.n_pos} anomaly and {self.n_neg} in-distribution pixels in {self.n_frames} frames "
                "(check the label remap and ignore_index)"
            )
        if self.mode == "smiyc":
            thr = np.concatenate([f[0] for f in self._frames])
            tp = np.concatenate([f[1] for f in self._frames])
            fp = np.concatenate([f[2] for f in self._frames])
            c = smiyc_curve(thr, tp, fp, self.n_pos, self.n_neg)
        else:
            c = exact_curve(self._pos.multiset(), self._neg.multiset())
        curves = reduce_curve({k: c[k] for k in ("precision", "recall", "tpr", "fpr", "thresholds")}, curve_points)
        res = {
            "mode": self.mode,
            "ap": float(c["ap"]),
            "auroc": float(c["auroc"]),
            "fpr95": float(c["fpr95"]),
            "fpr95_threshold": float(c["fpr95_threshold"]),
            "best_f1": float(c["best_f1"]),
            "best_f1_threshold": float(c["best_f1_threshold"]),
            "n_frames": int(self.n_frames),
            "n_pixels_pos": int(self.n_pos),
            "n_pixels_neg": int(self.n_neg),
            "curves": curves,
        }
        logger.debug("PixelMetrics(%s): AP=%.6f FPR95=%.6f over %d frames", self.mode, res["ap"], res["fpr95"],
                     self.n_frames)
        return res

    def __repr__(self) -> str:
        return (f"PixelMetrics(mode={self.mode!r}, ignore_index={self.ignore_index}, frames={self.n_frames}, "
                f"pos={self.n_pos}, neg={self.n_neg})")
