"""Panoptic quality (PQ) with known classes and an unknown class, for open-set panoptic output.

Definition (Kirillov et al., "Panoptic Segmentation", CVPR 2019, Eq. 1 and Sec. 4.1, and the
reference implementation ``cocodataset/panopticapi``, ``pq_compute_single_core``):

* a segment is a stuff class region (one per class and image) or a thing instance
  (class, instance id);
* a predicted and a GT segment of the same class match when IoU > 0.5, with the
  predicted pixels on void GT left out of the union; matches are unique by construction;
* unmatched GT segments are FN; unmatched predicted segments are FP unless more than half
  of them lies on void GT;
* crowd (``gt_crowd``): the GT crowd pixels of a class form one crowd segment of that class;
  it is never matched and never a FN, and an unmatched prediction of the class counts its
  pixels on it as void for the "> half on void" test (panopticapi keeps one crowd segment
  per category and image, which is what COCO panoptic has);
* per class ``PQ = sum IoU(TP) / (TP + FP/2 + FN/2) = SQ * RQ``, with
  ``SQ = sum IoU(TP) / TP`` and ``RQ = TP / (TP + FP/2 + FN/2)``; averages run over the
  classes with TP + FP + FN > 0.

Open set (Hwang et al., "Exemplar-Based Open-Set Panoptic Segmentation Network", CVPR 2021,
Sec. 5): the unknown class is evaluated as one more *thing* class, and PQ is reported
separately for the known classes and for the unknown class.

The state is four numbers per class (IoU sum, TP, FP, FN), so states add up exactly.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DTypeError, ShapeError, ValueRangeError
from ..validation import shape_str
from ._common import EmptyMetricError, as_batch, check_class_map, check_mergeable, to_numpy
from ._state import as_array, check_settings, check_state_keys, sync_state

__all__ = ["PanopticQuality"]

_DENSE_LIMIT = 1 << 22


class PanopticQuality:
    """PQ / SQ / RQ over known thing and stuff classes plus an unknown (thing) class.

    Args:
        num_known: K; known class ids are 0..K-1.
        thing_ids: ids of the known thing classes (the others are stuff).
        unknown_id: id of the unknown class in the inputs (default K); always a thing class.
        ignore_index: void label in the GT, and "no segment" in the predictions (255).
    """

    def __init__(self, num_known: int, thing_ids: Sequence[int], unknown_id: int | None = None,
                 ignore_index: int = 255) -> None:
        if int(num_known) < 1:
            raise ValueRangeError(f"num_known must be >= 1; got {num_known}")
        self.num_known = int(num_known)
        self.unknown_id = self.num_known if unknown_id is None else int(unknown_id)
        self.ignore_index = int(ignore_index)
        if 0 <= self.unknown_id < self.num_known:
            raise ValueRangeError(f"unknown_id must not be a known class id; got {self.unknown_id}")
        if self.ignore_index == self.unknown_id or 0 <= self.ignore_index < self.num_known:
            raise ValueRangeError(f"ignore_index {self.ignore_index} collides with a class id")
        things = np.unique(np.asarray(list(thing_ids), dtype=np.int64))
        if things.size and (things.min() < 0 or things.max() >= self.num_known):
            raise ValueRangeError(f"thing_ids must lie in [0,{self.num_known - 1}]; got {things.tolist()}")
        self.thing_ids = things
        self._is_thing = np.zeros(self.num_known + 1, bool)
        self._is_thing[things] = True
        self._is_thing[self.num_known] = True  # unknown = thing
        self.reset()

    def reset(self) -> None:
        """Zero the per-class sums."""
        n = self.num_known + 1
        self.iou_sum = np.zeros(n, np.float64)
        self.tp = np.zeros(n, np.int64)
        self.fp = np.zeros(n, np.int64)
        self.fn = np.zeros(n, np.int64)
        self.n_frames = 0

    def merge(self, other: PanopticQuality) -> PanopticQuality:
        """Add the per-class sums of ``other`` (same settings); returns ``self``."""
        check_mergeable(self, other, ("num_known", "unknown_id", "ignore_index", "thing_ids"))
        self.iou_sum += other.iou_sum
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.n_frames += other.n_frames
        return self

    # ----------------------------------------------------------------- state API
    _SUMS = ("iou_sum", "tp", "fp", "fn")

    def _settings(self) -> dict[str, np.ndarray]:
        return {"num_known": np.array(self.num_known, np.int64), "unknown_id": np.array(self.unknown_id, np.int64),
                "ignore_index": np.array(self.ignore_index, np.int64), "thing_ids": self.thing_ids.copy()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """The state as plain numpy arrays: settings ``num_known``, ``unknown_id``,
        ``ignore_index``, ``thing_ids`` (T,) int64; per class (ids 0..K-1, then unknown)
        ``iou_sum`` (K+1,) float64 and ``tp``/``fp``/``fn`` (K+1,) int64; ``n_frames``."""
        return self._settings() | {k: getattr(self, k).copy() for k in self._SUMS} | {
            "n_frames": np.array(self.n_frames, np.int64)}

    def load_state_dict(self, state: dict) -> None:
        """Replace the state by ``state`` (from :meth:`state_dict`, same settings).

        Raises:
            ValueRangeError: other settings or negative counts; ShapeError: per-class arrays
            that are not (K+1,).
        """
        settings = self._settings()
        check_state_keys("PanopticQuality", state, [*settings, *self._SUMS, "n_frames"])
        check_settings("PanopticQuality", settings, state)
        n = self.num_known + 1
        new = {}
        for k in self._SUMS:
            a = as_array(state, k, np.float64 if k == "iou_sum" else np.int64, 1)
            if a.shape != (n,):
                raise ShapeError(f"PanopticQuality.load_state_dict: {k} must be ({n},); got {shape_str(a.shape)}")
            if k != "iou_sum" and a.size and a.min() < 0:
                raise ValueRangeError(f"PanopticQuality.load_state_dict: {k} must be >= 0; got minimum {int(a.min())}")
            new[k] = a.copy()
        nf = int(as_array(state, "n_frames", np.int64, 0))
        if nf < 0:
            raise ValueRangeError(f"PanopticQuality.load_state_dict: n_frames must be >= 0; got {nf}")
        for k, v in new.items():
            setattr(self, k, v)
        self.n_frames = nf

    def sync(self, process_group: Any = None) -> PanopticQuality:
        """All-reduce (sum) the per-class sums and the frame count over a ``torch.distributed``
        process group, in place; returns ``self``. Counts are exact; ``iou_sum`` (float64) differs
        from a one-process sum by rounding only (~1e-16 relative).

        Raises:
            MetricSyncError: no process group, other settings on some rank, or a failed or
            timed-out collective.
        """
        self.load_state_dict(sync_state("PanopticQuality", self._settings(), self.state_dict(),
                                        [*self._SUMS, "n_frames"], [], process_group))
        return self

    # ----------------------------------------------------------------- inputs
    def _classes(self, x: Any, name: str) -> np.ndarray:
        a = to_numpy(x, name)
        a = as_batch(a, name)
        limit = max(self.num_known, self.unknown_id + 1)
        a = check_class_map(a, name, limit, self.ignore_index)
        bad = (a >= self.num_known) & (a != self.unknown_id) & (a != self.ignore_index)
        if bad.any():
            raise ValueRangeError(
                f"{name} must hold known ids [0,{self.num_known - 1}], unknown_id {self.unknown_id} or "
                f"{self.ignore_index}; got other values {np.unique(a[bad])[:10].tolist()}"
            )
        a = a.copy()
        a[a == self.unknown_id] = self.num_known
        a[a == self.ignore_index] = -1
        return a

    def _instances(self, x: Any, name: str, shape: tuple) -> np.ndarray:
        a = as_batch(to_numpy(x, name), name)
        if a.dtype.kind not in "iu":
            raise DTypeError(f"{name} must be an integer instance-id map; got dtype {a.dtype}")
        if a.shape != shape:
            raise ShapeError(
                f"{name} must be (B,H,W) matching the semantic map {shape_str(shape)}; got {shape_str(a.shape)}"
            )
        a = a.astype(np.int64)
        if a.size and a.min() < 0:
            raise ValueRangeError(f"{name} must hold instance ids >= 0; got minimum {int(a.min())}")
        return a

    def _segments(self, sem: np.ndarray, inst: np.ndarray, mult: int,
                  crowd: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
        """Per-pixel segment index (-1 = none), segment classes, number of segments, crowd flags."""
        valid = sem >= 0
        own = self._is_thing[np.maximum(sem, 0)]
        if crowd is not None:
            own = own | crowd
        key = sem * mult + np.where(own, inst, 0)
        keys, inv = np.unique(key[valid], return_inverse=True)
        seg = np.full(sem.shape, -1, np.int64)
        seg[valid] = inv.ravel()
        is_crowd = (keys % mult == mult - 1) if crowd is not None else np.zeros(keys.shape[0], bool)
        return seg, keys // mult, keys.shape[0], is_crowd

    # ----------------------------------------------------------------- update / compute
    def update(self, pred_semantic: Any, pred_instance: Any, gt_semantic: Any, gt_instance: Any,
               gt_crowd: Any = None) -> None:
        """Add frames.

        Args:
            pred_semantic: (H,W)/(B,H,W) integer predicted class per pixel: known id,
                ``unknown_id``, or ``ignore_index`` (pixel in no segment).
            pred_instance: same shape, integer instance ids >= 0 (used for thing and unknown
                pixels; each distinct (class, id) pair is one segment; ignored for stuff).
            gt_semantic: same shape, GT class per pixel (``ignore_index`` = void).
            gt_instance: same shape, GT instance ids >= 0.
            gt_crowd: optional same-shape bool map of GT crowd pixels (``iscrowd`` segments);
                the crowd pixels of a class form one crowd segment (see the module docstring).
        """
        ps = self._classes(pred_semantic, "pred_semantic")
        gs = self._classes(gt_semantic, "gt_semantic")
        if ps.shape != gs.shape:
            raise ShapeError(f"pred_semantic must be (B,H,W) matching gt_semantic {shape_str(gs.shape)}; "
                             f"got {shape_str(ps.shape)}")
        pi = self._instances(pred_instance, "pred_instance", ps.shape)
        gi = self._instances(gt_instance, "gt_instance", gs.shape)
        crowd = None
        if gt_crowd is not None:
            crowd = as_batch(to_numpy(gt_crowd, "gt_crowd"), "gt_crowd")
            if crowd.dtype != np.bool_:
                raise DTypeError(f"gt_crowd must be a bool map; got dtype {crowd.dtype}")
            if crowd.shape != gs.shape:
                raise ShapeError(f"gt_crowd must be (B,H,W) matching gt_semantic {shape_str(gs.shape)}; "
                                 f"got {shape_str(crowd.shape)}")
        # one id past every instance id is the crowd segment of a class
        mult = int(max(pi.max(initial=0), gi.max(initial=0))) + 2
        for b in range(gs.shape[0]):
            g_inst = gi[b].ravel()
            is_crowd = None
            if crowd is not None and crowd[b].any():
                is_crowd = crowd[b].ravel() & (gs[b].ravel() >= 0)
                g_inst = np.where(is_crowd, mult - 1, g_inst)
            self._update_frame(ps[b].ravel(), pi[b].ravel(), gs[b].ravel(), g_inst, mult, is_crowd)
            self.n_frames += 1

    def _update_frame(self, ps, pi, gs, gi, mult, crowd=None) -> None:
        g_seg, g_cls, n_g, g_crowd = self._segments(gs, gi, mult, crowd)
        p_seg, p_cls, n_p, _ = self._segments(ps, pi, mult)
        g_seg[g_seg < 0] = n_g  # void GT
        p_seg[p_seg < 0] = n_p  # no predicted segment
        width = n_p + 1
        cells = (n_g + 1) * width
        key = g_seg * width + p_seg
        if cells <= _DENSE_LIMIT:
            table = np.bincount(key, minlength=cells).reshape(n_g + 1, width)
        else:
            k, c = np.unique(key, return_counts=True)
            table = None
            pairs = (k // width, k % width, c)
        if table is None:
            # sparse fallback: rebuild only the sums that are needed
            gi_, pj_, c = pairs
            gt_area = np.bincount(gi_, weights=c, minlength=n_g + 1)[:n_g]
            pred_area = np.bincount(pj_, weights=c, minlength=n_p + 1)[:n_p]
            void_inter = np.zeros(n_p + 1)
            m = gi_ == n_g
            void_inter[pj_[m]] = c[m]
            void_inter = void_inter[:n_p]
            m = (gi_ < n_g) & (pj_ < n_p)
            cand_g, cand_p, inter = gi_[m], pj_[m], c[m].astype(np.float64)
        else:
            gt_area = table[:n_g].sum(1).astype(np.float64)
            pred_area = table[:, :n_p].sum(0).astype(np.float64)
            void_inter = table[n_g, :n_p].astype(np.float64)
            cand_g, cand_p = np.nonzero(table[:n_g, :n_p])
            inter = table[cand_g, cand_p].astype(np.float64)
        same = g_cls[cand_g] == p_cls[cand_p]
        cand_g, cand_p, inter = cand_g[same], cand_p[same], inter[same]
        # pixels of a prediction on the crowd segment of its class count as void for the FP test
        on_crowd = g_crowd[cand_g]
        crowd_inter = np.zeros(n_p)
        np.add.at(crowd_inter, cand_p[on_crowd], inter[on_crowd])
        cand_g, cand_p, inter = cand_g[~on_crowd], cand_p[~on_crowd], inter[~on_crowd]
        union = pred_area[cand_p] + gt_area[cand_g] - inter - void_inter[cand_p]
        iou = inter / union
        match = iou > 0.5
        mg, mp, miou = cand_g[match], cand_p[match], iou[match]
        cls = g_cls[mg]
        np.add.at(self.iou_sum, cls, miou)
        np.add.at(self.tp, cls, 1)
        g_matched = np.zeros(n_g, bool)
        g_matched[mg] = True
        p_matched = np.zeros(n_p, bool)
        p_matched[mp] = True
        np.add.at(self.fn, g_cls[~g_matched & ~g_crowd], 1)
        fp_seg = ~p_matched & (void_inter + crowd_inter <= 0.5 * pred_area)
        np.add.at(self.fp, p_cls[fp_seg], 1)

    def compute(self) -> dict:
        """Returns ``pq``/``sq``/``rq`` (all classes that occur), ``pq_known``/``sq_known``/``rq_known``,
        ``pq_things``/``pq_stuff`` (known), ``pq_unknown``/``sq_unknown``/``rq_unknown`` (NaN if the
        unknown class never occurs), ``per_class`` (list of dicts for ids 0..K-1 then unknown), counts."""
        if self.n_frames == 0:
            raise EmptyMetricError("PanopticQuality.compute() needs at least one update(); got none")
        den = self.tp + 0.5 * self.fp + 0.5 * self.fn
        present = (self.tp + self.fp + self.fn) > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            pq = np.where(present, self.iou_sum / np.where(den > 0, den, 1), np.nan)
            sq = np.where(present, np.where(self.tp > 0, self.iou_sum / np.maximum(self.tp, 1), 0.0), np.nan)
            rq = np.where(present, self.tp / np.where(den > 0, den, 1), np.nan)
        k = self.num_known
        known = np.arange(k + 1) < k
        thing = self._is_thing & known

        def avg(v: np.ndarray, sel: np.ndarray) -> float:
            s = sel & present
            return float(v[s].mean()) if s.any() else float("nan")

        all_ = np.ones(k + 1, bool)
        unk = ~known
        res = {
            "pq": avg(pq, all_), "sq": avg(sq, all_), "rq": avg(rq, all_),
            "pq_known": avg(pq, known), "sq_known": avg(sq, known), "rq_known": avg(rq, known),
            "pq_things": avg(pq, thing), "pq_stuff": avg(pq, known & ~thing),
            "pq_unknown": avg(pq, unk), "sq_unknown": avg(sq, unk), "rq_unknown": avg(rq, unk),
            "n_classes_present": int(present.sum()),
            "n_frames": int(self.n_frames),
            "per_class": [
                {"id": (c if c < k else self.unknown_id), "pq": float(pq[c]), "sq": float(sq[c]), "rq": float(rq[c]),
                 "tp": int(self.tp[c]), "fp": int(self.fp[c]), "fn": int(self.fn[c])}
                for c in range(k + 1)
            ],
        }
        return res
