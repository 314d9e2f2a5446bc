"""Component-level anomaly metrics of SegmentMeIfYouCan: sIoU_gt, PPV and F1 over sIoU thresholds.

Follows the official code (``road_anomaly_benchmark/metrics/instance_segmentation.py``:
``default_instancer``, ``segment_metrics``, ``MetricSegment.aggregate``; Chan et al.,
"SegmentMeIfYouCan", NeurIPS 2021 Datasets and Benchmarks, Sec. 4):

1. prediction = ``score > threshold`` (strictly greater) outside void; GT = ``label == 1``;
2. 8-connected components of both (``cv2.connectedComponents``; the official code uses
   ``scipy.ndimage.label`` with a 3x3 structure: the same partition);
3. predicted components smaller than ``min_pred_size`` pixels are dropped; GT components
   smaller than ``min_gt_size`` become void. (As in the official loop, which starts at
   component 0, the non-anomaly background also becomes void when it has fewer than
   ``min_gt_size`` pixels: only possible on tiny images.) Everything is then restricted
   to the non-void pixels;
4. for each GT component G with the set S of predicted components that touch it, the
   adjusted IoU is ``sIoU(G) = |G ∩ P(S)| / (|G ∪ P(S)| - |P(S) ∩ other GT components|)``,
   which reduces to ``|G ∩ P| / (|G| + |P(S) ∩ background|)``; for each predicted component
   P the precision is ``|P ∩ GT| / |P|`` (and ``sIoU_pred`` symmetrically);
5. for each t in ``linspace(0.25, 0.75, 11)``: TP = #GT with sIoU >= t, FN = #GT with
   sIoU < t, FP = #predicted with precision < t, **summed over the data set**, and
   ``F1(t) = 2TP / (2TP + FN + FP)``; ``f1_mean`` is the mean over the 11 thresholds;
   ``siou_gt`` / ``ppv`` are means over every component of the data set.

Per frame the contingency between GT and predicted components is one ``np.bincount``
(instead of the official loop over component masks; tested equal to it).

The threshold: the official code thresholds at the best-F1 threshold of the pixel metric
(``get_thresh_p_from_curve``), known only after a full pass over the data set. Keeping
every score map until then would cost 8 MB per 1024x2048 frame, so posthoc makes it a
two-pass API: run :class:`~posthoc.metrics.PixelMetrics` first, then build this accumulator
with :meth:`ComponentMetrics.from_pixel` (or pass ``threshold=`` or call
:meth:`ComponentMetrics.set_threshold`), then run ``update`` over the frames again
(:func:`posthoc.metrics.evaluate_anomaly` does both passes). ``update`` with no threshold
set raises an error that says so.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import cv2
import numpy as np

from ..errors import PosthocError, ShapeError, ValueRangeError
from ._common import (
    EmptyMetricError,
    check_anomaly_ignore_index,
    check_binary_labels,
    check_finite_values,
    check_mergeable,
    check_same_shape,
    check_scores,
)
from ._state import as_array, check_settings, check_state_keys, split_sizes, sync_state

logger = logging.getLogger(__name__)

__all__ = ["SIOU_THRESHOLDS", "TRACK_PRESETS", "ComponentMetrics", "ThresholdNotSetError", "frame_components"]

#: the 11 sIoU / precision thresholds of the official code
SIOU_THRESHOLDS = np.linspace(0.25, 0.75, 11, endpoint=True)

_DENSE_LIMIT = 1 << 22  # max cells of a dense contingency table; beyond it np.unique is used


class ThresholdNotSetError(PosthocError, ValueError):
    """ComponentMetrics.update() was called before a score threshold was chosen."""


def _components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    n, lab = cv2.connectedComponents(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return int(n), lab


#: how ``score > threshold`` is compared: ``"float64"`` (numpy >= 2, posthoc's default) or
#: ``"float16"`` (the numpy-1.x SMIYC server, see :class:`ComponentMetrics`)
THRESHOLD_DTYPES = ("float64", "float16")


def frame_components(scores: np.ndarray, labels: np.ndarray, threshold: float, min_pred_size: int,
                     min_gt_size: int, ignore_index: int = 255, threshold_dtype: str = "float64") -> dict:
    """Component statistics of one frame (official ``default_instancer`` + ``segment_metrics``).

    Args:
        scores: (H,W) float anomaly scores, higher = more anomalous, finite on non-void
            pixels (NaN/Inf there raise NonFiniteError).
        labels: (H,W) integer, 0 = in-distribution, 1 = anomaly, ``ignore_index`` = void.
        threshold: a pixel is predicted anomalous when ``score > threshold``, compared in
            float64 whatever the score dtype (``threshold_dtype="float64"``), or with scores and
            threshold both rounded to float16 (``"float16"``, the numpy-1.x server).
        min_pred_size: predicted components with fewer pixels are dropped.
        min_gt_size: GT components with fewer pixels become void.

    Returns:
        dict of float64 arrays ``siou_gt`` (one per kept GT component), ``siou_pred`` and
        ``prec_pred`` (one per predicted component inside the evaluated region), and int64
        arrays ``size_gt`` / ``size_pred``.
    """
    void = labels == ignore_index
    if not np.isfinite(scores).all():  # cheap test first; only non-void pixels must be finite
        check_finite_values(scores[~void], "scores")
    gt_mask = (labels == 1).view(np.uint8)
    # in float64, as the official pipeline does on numpy >= 2 (its threshold is read back from
    # HDF5 as np.float64); a Python float would compare float16 maps in float16 (NEP 50)
    if threshold_dtype == "float16":
        # numpy 1.x value-based casting: a float16 map compared with a float64 scalar is compared
        # in float16, i.e. against the threshold rounded to the nearest float16
        pred_mask = np.greater(scores.astype(np.float16, copy=False), np.float16(threshold))
    else:
        pred_mask = np.greater(scores, np.float64(threshold))
    pred_mask &= ~void
    n_g, gt_cc = _components(gt_mask)
    n_p, pr_cc = _components(pred_mask.view(np.uint8))

    # Only pixels that are GT anomaly or predicted anomaly enter the contingency table
    # (void pixels are in neither: GT = label 1, predictions are masked by void).
    union = gt_mask | pred_mask.view(np.uint8)
    idx = np.flatnonzero(union)
    gc = gt_cc.ravel()[idx]
    pc = pr_cc.ravel()[idx]

    # drop small predicted components (component 0 = background stays 0)
    p_size = np.bincount(pc, minlength=n_p)
    keep_p = p_size >= min_pred_size
    keep_p[0] = False
    n_pk = int(keep_p.sum())
    p_lut = np.zeros(n_p, np.int64)
    p_lut[keep_p] = np.arange(1, n_pk + 1)

    # small GT components -> void; as in the official loop (which starts at component 0) the
    # background becomes void too when it has fewer than min_gt_size pixels
    g_size = np.bincount(gc, minlength=n_g)
    g_size[0] = labels.size - int(np.count_nonzero(gt_mask))
    small_g = g_size < min_gt_size
    keep_g = ~small_g
    keep_g[0] = False
    n_gk = int(keep_g.sum())
    g_lut = np.zeros(n_g, np.int64)
    g_lut[keep_g] = np.arange(1, n_gk + 1)

    width = n_pk + 1
    cells = (n_gk + 1) * width
    key = g_lut[gc] * width + p_lut[pc]
    if small_g.any():
        key = key[~small_g[gc]]
    if cells <= _DENSE_LIMIT:
        table = np.bincount(key, minlength=cells)
        keys = np.flatnonzero(table)
        cnt = table[keys]
    else:
        keys, cnt = np.unique(key, return_counts=True)
    gi, pj = keys // width, keys % width
    cnt = cnt.astype(np.int64)

    gt_area = np.bincount(gi, weights=cnt, minlength=n_gk + 1)[1:]
    pred_area = np.bincount(pj, weights=cnt, minlength=n_pk + 1)[1:]
    bg_of_pred = np.zeros(n_pk + 1)  # |P_j ∩ background|
    m0 = gi == 0
    bg_of_pred[pj[m0]] = cnt[m0]
    bg_of_gt = np.zeros(n_gk + 1)  # |G_i ∩ no prediction|
    m0 = pj == 0
    bg_of_gt[gi[m0]] = cnt[m0]
    ov = (gi > 0) & (pj > 0)
    ogi, opj, ocnt = gi[ov], pj[ov], cnt[ov]

    inter_gt = np.bincount(ogi, weights=ocnt, minlength=n_gk + 1)[1:]
    union_gt = gt_area + np.bincount(ogi, weights=bg_of_pred[opj], minlength=n_gk + 1)[1:]
    inter_pred = np.bincount(opj, weights=ocnt, minlength=n_pk + 1)[1:]
    union_pred = pred_area + np.bincount(opj, weights=bg_of_gt[ogi], minlength=n_pk + 1)[1:]
    present = pred_area > 0  # predicted components entirely inside voided GT vanish
    return {
        "siou_gt": inter_gt / union_gt,
        "siou_pred": inter_pred[present] / union_pred[present],
        "prec_pred": inter_pred[present] / pred_area[present],
        "size_gt": gt_area.astype(np.int64),
        "size_pred": pred_area[present].astype(np.int64),
    }


#: SMIYC component presets per track: (min_pred_size, min_gt_size) in pixels
#: (RoadAnomaly21: 500 / 100; RoadObstacle21: 50 / 10), as the official evaluation sets them
TRACK_PRESETS = {"anomaly": (500, 100), "obstacle": (50, 10)}


class ComponentMetrics:
    """SMIYC component-level metrics: sIoU_gt, PPV and F1 at sIoU thresholds 0.25 ... 0.75.

    Args:
        threshold: score threshold (``score > threshold`` = predicted anomaly). ``None`` =
            the pixel best-F1 threshold, as in the official code: set it before ``update``
            with :meth:`from_pixel` or :meth:`set_threshold` (see the module docstring).
        min_pred_size: predicted components below this many pixels are dropped (anomaly
            track 500, obstacle track 50).
        min_gt_size: GT components below this many pixels become void (anomaly track 100,
            obstacle track 10).
        ignore_index: void label value (255 in SMIYC; 0 and 1 are class values and refused).
        threshold_dtype: ``"float64"`` (default) compares ``score > threshold`` in float64, as
            the official code does under numpy >= 2. ``"float16"`` reproduces the official
            server, which pins numpy 1.x: there ``float16_map > np.float64(t)`` is computed in
            float16 (value-based casting), i.e. against ``t`` rounded to float16. The two differ
            only when ``t`` rounds *up* to a float16 value that some pixels hold exactly: those
            pixels are predicted under float64 and dropped under float16 (in one of eight runs
            we checked this changed one false-positive component, sIoU 18.29 vs 18.28). When
            ``t`` rounds down or is exact, both give the same masks.

    States merge by concatenating the per-component values (a few numbers per frame), so
    merged results equal a single run exactly (means use ``math.fsum``).
    """

    def __init__(self, threshold: float | None = None, min_pred_size: int = 500, min_gt_size: int = 100,
                 ignore_index: int = 255, threshold_dtype: str = "float64") -> None:
        if threshold_dtype not in THRESHOLD_DTYPES:
            raise ValueRangeError(f"threshold_dtype must be one of {THRESHOLD_DTYPES}; got {threshold_dtype!r}")
        self.threshold_dtype = threshold_dtype
        if min_pred_size < 0 or min_gt_size < 0:
            raise ValueRangeError(
                f"min_pred_size and min_gt_size must be >= 0; got {min_pred_size} and {min_gt_size}"
            )
        self.threshold: float | None = None
        if threshold is not None:
            self.set_threshold(threshold)
        self.min_pred_size = int(min_pred_size)
        self.min_gt_size = int(min_gt_size)
        self.ignore_index = check_anomaly_ignore_index(ignore_index, "ComponentMetrics")
        self.reset()

    # ----------------------------------------------------------------- presets / threshold
    @classmethod
    def anomaly_track(cls, threshold: float | None = None, ignore_index: int = 255) -> ComponentMetrics:
        """SMIYC RoadAnomaly21 settings: predicted components >= 500 px, GT components >= 100 px."""
        return cls(threshold, *TRACK_PRESETS["anomaly"], ignore_index=ignore_index)

    @classmethod
    def obstacle_track(cls, threshold: float | None = None, ignore_index: int = 255) -> ComponentMetrics:
        """SMIYC RoadObstacle21 settings: predicted components >= 50 px, GT components >= 10 px."""
        return cls(threshold, *TRACK_PRESETS["obstacle"], ignore_index=ignore_index)

    @classmethod
    def from_pixel(cls, pixel_metrics: Any, track: str = "anomaly", **kwargs: Any) -> ComponentMetrics:
        """Second pass of the official protocol: threshold = the pixel best-F1 threshold.

        Args:
            pixel_metrics: a filled :class:`~posthoc.metrics.PixelMetrics`, or the dict its
                ``compute()`` returned.
            track: ``"anomaly"`` (500/100) or ``"obstacle"`` (50/10); explicit
                ``min_pred_size`` / ``min_gt_size`` keyword arguments override it.
        """
        presets = TRACK_PRESETS
        if track not in presets:
            raise ValueRangeError(f"track must be one of {sorted(presets)}; got {track!r}")
        res = pixel_metrics if isinstance(pixel_metrics, dict) else pixel_metrics.compute(curve_points=2)
        if "best_f1_threshold" not in res:
            raise ValueRangeError(f"pixel metrics result has no 'best_f1_threshold'; got keys {sorted(res)}")
        kwargs.setdefault("min_pred_size", presets[track][0])
        kwargs.setdefault("min_gt_size", presets[track][1])
        return cls(threshold=res["best_f1_threshold"], **kwargs)

    def set_threshold(self, threshold: float) -> None:
        """Set the score threshold; only allowed while no frame has been added."""
        t = float(threshold)
        if not math.isfinite(t):
            raise ValueRangeError(f"threshold must be a finite number; got {threshold!r}")
        if getattr(self, "n_frames", 0):
            raise ValueRangeError(
                f"cannot change the threshold of a ComponentMetrics that already holds {self.n_frames} frames; "
                "call reset() first"
            )
        self.threshold = t

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget every frame (the threshold and sizes stay)."""
        self.n_frames = 0
        self._siou_gt: list[np.ndarray] = []
        self._siou_pred: list[np.ndarray] = []
        self._prec_pred: list[np.ndarray] = []
        self._size_gt: list[np.ndarray] = []
        self._size_pred: list[np.ndarray] = []

    def merge(self, other: ComponentMetrics) -> ComponentMetrics:
        """Add the state of ``other`` (same threshold and sizes); returns ``self``."""
        check_mergeable(self, other, ("threshold", "min_pred_size", "min_gt_size", "ignore_index", "threshold_dtype"))
        self.n_frames += other.n_frames
        for name in ("_siou_gt", "_siou_pred", "_prec_pred", "_size_gt", "_size_pred"):
            getattr(self, name).extend(getattr(other, name))
        return self

    # ----------------------------------------------------------------- state API
    _PER_GT = ("siou_gt", "size_gt")
    _PER_PRED = ("siou_pred", "prec_pred", "size_pred")

    def _settings(self) -> dict[str, np.ndarray]:
        return {"threshold": np.array(np.nan if self.threshold is None else self.threshold, np.float64),
                "min_pred_size": np.array(self.min_pred_size, np.int64),
                "min_gt_size": np.array(self.min_gt_size, np.int64),
                "ignore_index": np.array(self.ignore_index, np.int64),
                "threshold_dtype": np.array(self.threshold_dtype)}

    def state_dict(self) -> dict[str, np.ndarray]:
        """The accumulated state as plain numpy arrays (save with ``np.savez``; no pickle needed).

        Keys: the settings ``threshold`` (0-d float64, NaN = not set), ``min_pred_size``,
        ``min_gt_size``, ``ignore_index``, ``threshold_dtype`` (0-d str); ``n_frames``; the
        per-component values of every frame concatenated in frame order: ``siou_gt`` (G,) float64 and ``size_gt`` (G,)
        int64 per GT component, ``siou_pred``, ``prec_pred`` (P,) float64 and ``size_pred``
        (P,) int64 per predicted component; ``gt_sizes`` / ``pred_sizes`` (n_frames,) int64
        components per frame.
        """
        st = self._settings() | {"n_frames": np.array(self.n_frames, np.int64)}
        for name in self._PER_GT + self._PER_PRED:
            parts = getattr(self, f"_{name}")
            dt = np.int64 if name.startswith("size") else np.float64
            st[name] = np.concatenate(parts).astype(dt, copy=False) if parts else np.zeros(0, dt)
        st["gt_sizes"] = np.array([a.shape[0] for a in self._siou_gt], np.int64)
        st["pred_sizes"] = np.array([a.shape[0] for a in self._siou_pred], np.int64)
        return st

    def load_state_dict(self, state: dict) -> None:
        """Replace this accumulator's state by ``state`` (from :meth:`state_dict`, same settings).

        Raises:
            ValueRangeError: the state was saved with another threshold or other sizes;
            ShapeError / DTypeError: malformed arrays (sizes that do not add up, ...).
        """
        keys = [*self._settings(), "n_frames", *self._PER_GT, *self._PER_PRED, "gt_sizes", "pred_sizes"]
        check_state_keys("ComponentMetrics", state, keys)
        check_settings("ComponentMetrics", self._settings(), state)
        n = int(as_array(state, "n_frames", np.int64, 0))
        parts = {}
        for sizes_key, names in (("gt_sizes", self._PER_GT), ("pred_sizes", self._PER_PRED)):
            sizes = as_array(state, sizes_key, np.int64, 1)
            if sizes.shape[0] != n:
                raise ShapeError(f"ComponentMetrics.load_state_dict: {sizes_key} must have n_frames = {n} entries; "
                                 f"got {sizes.shape[0]}")
            for name in names:
                dt = np.int64 if name.startswith("size") else np.float64
                parts[name] = split_sizes(as_array(state, name, dt, 1), sizes,
                                          f"ComponentMetrics.load_state_dict ({name} by {sizes_key})")
        self.n_frames = n
        for name, v in parts.items():
            setattr(self, f"_{name}", list(v))

    def sync(self, process_group: Any = None) -> ComponentMetrics:
        """All-reduce the state over a ``torch.distributed`` process group, in place; returns ``self``.

        Every rank then holds every frame's component values (concatenated in rank order;
        the metrics do not depend on the order: counts, and means with ``math.fsum``).

        Raises:
            MetricSyncError: no process group, other settings (threshold, sizes) on some rank,
                or a failed or timed-out collective.
        """
        cat = [*self._PER_GT, *self._PER_PRED, "gt_sizes", "pred_sizes"]
        self.load_state_dict(sync_state("ComponentMetrics", self._settings(), self.state_dict(), ["n_frames"], cat,
                                        process_group))
        return self

    def update(self, scores: Any, labels: Any) -> None:
        """Add frames.

        Args:
            scores: (H,W), (B,H,W) or (B,1,H,W) float anomaly scores, numpy or torch; not modified.
            labels: same spatial shape, integer or bool; 0 / 1 / ``ignore_index``.

        Raises:
            ThresholdNotSetError: no threshold yet (see :meth:`from_pixel`).
            ShapeError, DTypeError, ValueRangeError: bad input.
        """
        if self.threshold is None:
            raise ThresholdNotSetError(
                "ComponentMetrics.threshold is None, which means the pixel best-F1 threshold (official SMIYC "
                "protocol), known only after a full pixel pass: run PixelMetrics over the data set first, then "
                "use ComponentMetrics.from_pixel(pixel_metrics) or set_threshold(t), or evaluate_anomaly(...)"
            )
        s = check_scores(scores)
        lab = check_binary_labels(labels, self.ignore_index)
        check_same_shape(s, "scores", lab, "labels")
        for b in range(s.shape[0]):
            r = frame_components(s[b], lab[b], self.threshold, self.min_pred_size, self.min_gt_size,
                                 self.ignore_index, self.threshold_dtype)
            self.n_frames += 1
            self._siou_gt.append(r["siou_gt"])
            self._siou_pred.append(r["siou_pred"])
            self._prec_pred.append(r["prec_pred"])
            self._size_gt.append(r["size_gt"])
            self._size_pred.append(r["size_pred"])

    # ----------------------------------------------------------------- compute
    def compute(self) -> dict:
        """Data-set metrics.

        Returns:
            dict: ``siou_gt``, ``siou_pred``, ``ppv`` (mean precision of predicted
            components), ``f1_25``, ``f1_50``, ``f1_75``, ``f1_mean``; ``tp_25``/``fn_25``/``fp_25``
            (and 50, 75, and ``*_mean`` averaged over the 11 thresholds); ``f1_per_threshold``
            and ``siou_thresholds`` (lists of 11); ``n_gt_components``,
            ``n_pred_components``, ``n_frames``, ``threshold``, ``min_pred_size``, ``min_gt_size``.
            A mean over zero components is NaN (logged as a warning), and F1 is NaN when
            there is neither a GT nor a predicted component.

        Raises:
            EmptyMetricError: no frame was added.
        """
        if self.n_frames == 0:
            raise EmptyMetricError("ComponentMetrics.compute() needs at least one update(); got none")
        sg = np.concatenate(self._siou_gt) if self._siou_gt else np.zeros(0)
        sp = np.concatenate(self._siou_pred) if self._siou_pred else np.zeros(0)
        pp = np.concatenate(self._prec_pred) if self._prec_pred else np.zeros(0)

        def mean(v: np.ndarray, what: str) -> float:
            if v.size == 0:
                logger.warning("ComponentMetrics: no %s components in %d frames; its mean is NaN", what,
                               self.n_frames)
                return float("nan")
            return math.fsum(v.tolist()) / v.size

        res: dict = {
            "siou_gt": mean(sg, "ground-truth"),
            "siou_pred": mean(sp, "predicted"),
            "ppv": mean(pp, "predicted"),
        }
        f1s, tps, fns, fps = [], [], [], []
        for t in SIOU_THRESHOLDS:
            tp = int(np.count_nonzero(sg >= t))
            fn = int(np.count_nonzero(sg < t))
            fp = int(np.count_nonzero(pp < t))
            den = 2 * tp + fn + fp
            f1s.append(2 * tp / den if den else float("nan"))
            tps.append(tp)
            fns.append(fn)
            fps.append(fp)
        for k, name in ((0, "25"), (5, "50"), (10, "75")):
            res[f"f1_{name}"] = f1s[k]
            res[f"tp_{name}"] = tps[k]
            res[f"fn_{name}"] = fns[k]
            res[f"fp_{name}"] = fps[k]
        n = len(SIOU_THRESHOLDS)
        res["f1_mean"] = sum(f1s) / n
        res["tp_mean"] = sum(tps) / n
        res["fn_mean"] = sum(fns) / n
        res["fp_mean"] = sum(fps) / n
        res["f1_per_threshold"] = f1s
        res["siou_thresholds"] = SIOU_THRESHOLDS.tolist()
        res["n_gt_components"] = int(sg.size)
        res["n_pred_components"] = int(pp.size)
        res["n_frames"] = int(self.n_frames)
        res["threshold"] = self.threshold
        res["min_pred_size"] = self.min_pred_size
        res["min_gt_size"] = self.min_gt_size
        return res

    def __repr__(self) -> str:
        return (f"ComponentMetrics(threshold={self.threshold}, min_pred_size={self.min_pred_size}, "
                f"min_gt_size={self.min_gt_size}, frames={self.n_frames})")
