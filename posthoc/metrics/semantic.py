"""Semantic and open-set semantic segmentation metrics from a confusion matrix.

* :class:`SemanticMetrics`: IoU per class and mIoU (Everingham et al., PASCAL VOC;
  ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``), and for zero-shot segmentation the mIoU of the
  seen and of the unseen classes and their harmonic mean
  ``hIoU = 2 mIoU_s mIoU_u / (mIoU_s + mIoU_u)`` (Bucher et al., ZS3Net, NeurIPS 2019, Sec. 4;
  Xian et al., SPNet, CVPR 2019).
* :class:`OpenIoU`: open-set IoU of Grcić & Šegvić (DenseHybrid, "Hybrid Open-set
  Segmentation with Synthetic Negative Data", Sec. 5): pixels are classified into the K
  known classes plus one "unknown" class (usually: unknown where the anomaly score passes
  a threshold, e.g. the one at TPR 95 %), and for every known class
  ``open-IoU_c = TP_c / (TP_c + FP_c^os + FN_c^os)``, where ``FP^os`` also counts unknown
  (anomaly) pixels labelled c and ``FN^os`` also counts class-c pixels called unknown, i.e.
  the IoU of class c in the (K+1)x(K+1) confusion matrix. ``open_miou`` is its mean over the
  known classes; the gap to the closed-set mIoU shows what the outliers cost.

Classes that occur neither in the labels nor in the predictions have IoU NaN and are left
out of the means (``nanmean``, as mmsegmentation and the Cityscapes scripts do).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DTypeError, ShapeError, ValueRangeError
from ..validation import shape_str
from ._common import EmptyMetricError, check_class_map, check_mergeable, check_scores, to_numpy
from ._state import as_array, check_settings, check_state_keys, sync_state

logger = logging.getLogger(__name__)

__all__ = ["OpenIoU", "SemanticMetrics", "confusion_matrix", "iou_from_confusion", "open_set_prediction"]


def confusion_matrix(preds: np.ndarray, targets: np.ndarray, num_classes: int, ignore_index: int | None) -> np.ndarray:
    """(K,K) int64 confusion matrix, rows = target class, columns = predicted class.

    Args:
        preds: (...) int64 predicted class ids in [0,K) (already checked).
        targets: same shape, int64 class ids in [0,K) or ``ignore_index`` (skipped).
    """
    t = targets.ravel()
    p = preds.ravel()
    if ignore_index is not None:
        keep = t != ignore_index
        if not keep.all():
            t, p = t[keep], p[keep]
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """(K,) float64 IoU per class from a (K,K) confusion matrix; NaN where TP+FP+FN = 0."""
    tp = np.diag(cm).astype(np.float64)
    den = cm.sum(0) + cm.sum(1) - np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, tp / np.maximum(den, 1), np.nan)


def _nanmean(v: np.ndarray) -> float:
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def _as_class_predictions(preds: Any, name: str, target_ndim: int) -> np.ndarray:
    """Integer class map, or logits/probabilities (B,K,H,W) / (K,H,W) -> argmax over K."""
    p = to_numpy(preds, name)
    if p.dtype.kind == "f":
        if p.ndim != target_ndim + 1:
            raise ShapeError(
                f"{name} given as scores must have one class axis more than the labels "
                f"((B,K,H,W) for (B,H,W) labels); got {shape_str(p.shape)} for {target_ndim}-axis labels"
            )
        if not np.isfinite(p).all():
            raise ValueRangeError(f"{name} must be finite; got NaN or Inf in the class scores")
        return np.argmax(p, axis=-3)
    return p


class SemanticMetrics:
    """Confusion-matrix accumulator: IoU per class, mIoU, pixel accuracy, and zero-shot splits.

    Args:
        num_classes: K, the number of classes (ids 0..K-1).
        ignore_index: label value skipped in the targets (255).
        seen: optional ids of the seen classes of a zero-shot split; every other class is
            unseen. Enables ``miou_seen``, ``miou_unseen`` and ``hiou``.
        class_names: optional K names, echoed in ``compute()`` as ``iou_per_class``.

    One 1x4 frame with two classes; the last pixel is void (255):

    >>> import numpy as np
    >>> m = SemanticMetrics(num_classes=2)
    >>> m.update(np.array([[0, 0, 1, 1]]), np.array([[0, 1, 1, 255]]))
    >>> r = m.compute()
    >>> r["iou"], r["miou"], r["n_pixels"]
    ([0.5, 0.5], 0.5, 3)
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, seen: Sequence[int] | None = None,
                 class_names: Sequence[str] | None = None) -> None:
        if int(num_classes) < 1:
            raise ValueRangeError(f"num_classes must be >= 1; got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        if 0 <= self.ignore_index < self.num_classes:
            raise ValueRangeError(
                f"ignore_index must not be a class id in [0,{self.num_classes - 1}]; got {self.ignore_index}"
            )
        self.seen = None
        if seen is not None:
            s = np.unique(np.asarray(list(seen), dtype=np.int64))
            if s.size and (s.min() < 0 or s.max() >= self.num_classes):
                raise ValueRangeError(f"seen class ids must lie in [0,{self.num_classes - 1}]; got {s.tolist()}")
            self.seen = s
        if class_names is not None and len(class_names) != self.num_classes:
            raise ShapeError(f"class_names must have {self.num_classes} entries; got {len(class_names)}")
        self.class_names = list(class_names) if class_names is not None else None
        self.reset()

    def reset(self) -> None:
        """Zero the confusion matrix."""
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.n_frames = 0

    def merge(self, other: SemanticMetrics) -> SemanticMetrics:
        """Add the confusion matrix of ``other`` (same settings); returns ``self``."""
        check_mergeable(self, other, ("num_classes", "ignore_index", "seen"))
        self.confusion += other.confusion
        self.n_frames += other.n_frames
        return self

    # ----------------------------------------------------------------- state API
    def _settings(self) -> dict[str, np.ndarray]:
        return {"num_classes": np.array(self.num_classes, np.int64),
                "ignore_index": np.array(self.ignore_index, np.int64),
                "has_seen": np.array(self.seen is not None),
                "seen": self.seen if self.seen is not None else np.zeros(0, np.int64)}

    def state_dict(self) -> dict[str, np.ndarray]:
        """The state as plain numpy arrays: settings ``num_classes``, ``ignore_index``,
        ``has_seen`` (0-d bool), ``seen`` (S,) int64; ``confusion`` (K,K) int64 (rows = target,
        columns = prediction) and ``n_frames`` (0-d int64). Save with ``np.savez``."""
        return self._settings() | {"confusion": self.confusion.copy(), "n_frames": np.array(self.n_frames, np.int64)}

    def load_state_dict(self, state: dict) -> None:
        """Replace the state by ``state`` (from :meth:`state_dict` of an accumulator with the same settings).

        Raises:
            ValueRangeError: other settings, or negative counts; ShapeError: a confusion matrix
            that is not (K,K).
        """
        _load_confusion(self, "SemanticMetrics", state, self.num_classes)

    def sync(self, process_group: Any = None) -> SemanticMetrics:
        """All-reduce (sum) the confusion matrix and frame count over a ``torch.distributed``
        process group, in place (exact: integer sums); returns ``self``.

        Raises:
            MetricSyncError: no process group, other settings on some rank, or a failed or
            timed-out collective.
        """
        self.load_state_dict(sync_state("SemanticMetrics", self._settings(), self.state_dict(),
                                        ["confusion", "n_frames"], [], process_group))
        return self

    def update(self, preds: Any, targets: Any) -> None:
        """Add frames.

        Args:
            preds: (H,W)/(B,H,W) integer class ids in [0,K), or class scores (K,H,W)/(B,K,H,W)
                (logits or probabilities, argmax taken over K); numpy or torch.
            targets: (H,W)/(B,H,W) integer class ids in [0,K) or ``ignore_index``.
        """
        t = check_class_map(targets, "targets", self.num_classes, self.ignore_index)
        p = _as_class_predictions(preds, "preds", to_numpy(targets, "targets").ndim)
        p = check_class_map(p, "preds", self.num_classes, None, allow_ignore=False)
        if p.shape != t.shape:
            raise ShapeError(f"preds must be (B,H,W) matching targets {shape_str(t.shape)}; got {shape_str(p.shape)}")
        self.confusion += confusion_matrix(p, t, self.num_classes, self.ignore_index)
        self.n_frames += t.shape[0]

    def compute(self) -> dict:
        """Returns ``miou``, ``iou`` (list of K, NaN for absent classes), ``pixel_accuracy``,
        ``mean_accuracy``, ``n_pixels``; with ``seen``: ``miou_seen``, ``miou_unseen``, ``hiou``."""
        total = int(self.confusion.sum())
        if total == 0:
            raise EmptyMetricError("SemanticMetrics.compute() needs at least one non-void labelled pixel; got none")
        iou = iou_from_confusion(self.confusion)
        gt = self.confusion.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(gt > 0, np.diag(self.confusion) / np.maximum(gt, 1), np.nan)
        res = {
            "miou": _nanmean(iou),
            "iou": iou.tolist(),
            "pixel_accuracy": float(np.trace(self.confusion) / total),
            "mean_accuracy": _nanmean(acc),
            "n_pixels": total,
            "n_frames": int(self.n_frames),
        }
        if self.class_names is not None:
            res["iou_per_class"] = dict(zip(self.class_names, iou.tolist(), strict=False))
        if self.seen is not None:
            mask = np.zeros(self.num_classes, bool)
            mask[self.seen] = True
            s, u = _nanmean(iou[mask]), _nanmean(iou[~mask])
            res["miou_seen"] = s
            res["miou_unseen"] = u
            res["hiou"] = 2 * s * u / (s + u) if (s + u) > 0 else float("nan")
        return res


def _load_confusion(obj: Any, owner: str, state: dict, k: int) -> None:
    """load_state_dict of the confusion-matrix accumulators."""
    settings = obj._settings()
    check_state_keys(owner, state, [*settings, "confusion", "n_frames"])
    check_settings(owner, settings, state)
    cm = as_array(state, "confusion", np.int64, 2)
    if cm.shape != (k, k):
        raise ShapeError(f"{owner}.load_state_dict: confusion must be ({k},{k}); got {shape_str(cm.shape)}")
    n = int(as_array(state, "n_frames", np.int64, 0))
    if n < 0 or (cm.size and cm.min() < 0):
        raise ValueRangeError(f"{owner}.load_state_dict: counts must be >= 0; got n_frames={n}, "
                              f"min confusion {int(cm.min()) if cm.size else 0}")
    obj.confusion = cm.copy()
    obj.n_frames = n


def open_set_prediction(semantic: Any, anomaly_scores: Any, threshold: float, unknown_id: int) -> Any:
    """Open-set class map: the closed-set class, or ``unknown_id`` where ``anomaly >= threshold``.

    Args:
        semantic: (B,H,W) integer class ids, or (B,K,H,W) class scores (argmax over K);
            numpy or torch.
        anomaly_scores: (B,H,W) or (B,1,H,W) anomaly scores, higher = more anomalous.
        threshold: e.g. ``PixelMetrics.compute()["fpr95_threshold"]`` (the TPR-95 % operating
            point used by DenseHybrid) — the ``>=`` rule matches the pixel metrics.
        unknown_id: the class id given to unknown pixels (K for :class:`OpenIoU`).

    Returns:
        (B,H,W) int64 numpy array.
    """
    s = check_scores(anomaly_scores, "anomaly_scores")
    sem = _as_class_predictions(semantic, "semantic", s.ndim)
    sem = np.asarray(sem)
    if sem.ndim == 2:
        sem = sem[None]
    if sem.shape != s.shape:
        raise ShapeError(
            f"semantic must be (B,H,W) matching anomaly_scores {shape_str(s.shape)}; got {shape_str(sem.shape)}"
        )
    out = sem.astype(np.int64, copy=True)
    out[s >= threshold] = unknown_id
    return out


class OpenIoU:
    """Open-set IoU over K known classes plus one unknown class (DenseHybrid open-mIoU).

    Args:
        num_known: K. Known classes are 0..K-1; the unknown class is ``unknown_id``.
        unknown_id: id of the unknown / anomaly class in predictions and targets
            (default K).
        ignore_index: target value skipped (255).

    ``update(preds, targets)`` takes (B,H,W) integer maps whose values are known ids or
    ``unknown_id`` (targets may also be ``ignore_index``). Build predictions with
    :func:`open_set_prediction`.
    """

    def __init__(self, num_known: int, unknown_id: int | None = None, ignore_index: int = 255) -> None:
        if int(num_known) < 1:
            raise ValueRangeError(f"num_known must be >= 1; got {num_known}")
        self.num_known = int(num_known)
        self.unknown_id = self.num_known if unknown_id is None else int(unknown_id)
        if 0 <= self.unknown_id < self.num_known:
            raise ValueRangeError(
                f"unknown_id must not be a known class id in [0,{self.num_known - 1}]; got {self.unknown_id}"
            )
        self.ignore_index = int(ignore_index)
        if self.ignore_index == self.unknown_id or 0 <= self.ignore_index < self.num_known:
            raise ValueRangeError(f"ignore_index {self.ignore_index} collides with a class id")
        self.reset()

    def reset(self) -> None:
        """Zero the (K+1)x(K+1) confusion matrix (index K = unknown)."""
        self.confusion = np.zeros((self.num_known + 1, self.num_known + 1), np.int64)
        self.n_frames = 0

    def merge(self, other: OpenIoU) -> OpenIoU:
        """Add the state of ``other`` (same settings); returns ``self``."""
        check_mergeable(self, other, ("num_known", "unknown_id", "ignore_index"))
        self.confusion += other.confusion
        self.n_frames += other.n_frames
        return self

    # ----------------------------------------------------------------- state API
    def _settings(self) -> dict[str, np.ndarray]:
        return {"num_known": np.array(self.num_known, np.int64), "unknown_id": np.array(self.unknown_id, np.int64),
                "ignore_index": np.array(self.ignore_index, np.int64)}

    def state_dict(self) -> dict[str, np.ndarray]:
        """The state as plain numpy arrays: settings ``num_known``, ``unknown_id``,
        ``ignore_index``; ``confusion`` (K+1,K+1) int64 (index K = unknown) and ``n_frames``."""
        return self._settings() | {"confusion": self.confusion.copy(), "n_frames": np.array(self.n_frames, np.int64)}

    def load_state_dict(self, state: dict) -> None:
        """Replace the state by ``state`` (from :meth:`state_dict`, same settings); errors as
        :meth:`SemanticMetrics.load_state_dict`."""
        _load_confusion(self, "OpenIoU", state, self.num_known + 1)

    def sync(self, process_group: Any = None) -> OpenIoU:
        """All-reduce (sum) the confusion matrix and frame count over a ``torch.distributed``
        process group, in place; returns ``self``. Raises MetricSyncError as :meth:`SemanticMetrics.sync`."""
        self.load_state_dict(sync_state("OpenIoU", self._settings(), self.state_dict(), ["confusion", "n_frames"], [],
                                        process_group))
        return self

    def _remap(self, x: Any, name: str, allow_ignore: bool) -> np.ndarray:
        k = self.num_known
        a = to_numpy(x, name)
        if a.dtype.kind not in "iu":
            raise DTypeError(f"{name} must be an integer class map; got dtype {a.dtype}")
        a = a.astype(np.int64)  # a copy: the caller's array is not touched
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise ShapeError(f"{name} must be (H,W) or (B,H,W); got {shape_str(a.shape)}")
        unknown = a == self.unknown_id
        ok = ((a >= 0) & (a < k)) | unknown
        if allow_ignore:
            ok |= a == self.ignore_index
        if not ok.all():
            bad = np.unique(a[~ok])[:10].tolist()
            raise ValueRangeError(
                f"{name} must hold known ids [0,{k - 1}], unknown_id {self.unknown_id}"
                f"{' or ignore_index ' + str(self.ignore_index) if allow_ignore else ''}; got other values {bad}"
            )
        a[unknown] = k
        return a

    def update(self, preds: Any, targets: Any) -> None:
        """Add frames: (B,H,W) predicted and target class maps (known ids or ``unknown_id``)."""
        t = self._remap(targets, "targets", True)
        p = self._remap(preds, "preds", False)
        if p.shape != t.shape:
            raise ShapeError(f"preds must be (B,H,W) matching targets {shape_str(t.shape)}; got {shape_str(p.shape)}")
        self.confusion += confusion_matrix(p, t, self.num_known + 1, self.ignore_index)
        self.n_frames += t.shape[0]

    def compute(self) -> dict:
        """Returns ``open_miou`` (mean open-IoU over known classes), ``open_iou`` (list of K),
        ``unknown_iou`` (IoU of the unknown class), ``unknown_precision``, ``unknown_recall``,
        ``n_pixels``."""
        total = int(self.confusion.sum())
        if total == 0:
            raise EmptyMetricError("OpenIoU.compute() needs at least one non-void labelled pixel; got none")
        iou = iou_from_confusion(self.confusion)
        k = self.num_known
        cm = self.confusion
        pred_u, gt_u = cm[:, k].sum(), cm[k, :].sum()
        return {
            "open_miou": _nanmean(iou[:k]),
            "open_iou": iou[:k].tolist(),
            "unknown_iou": float(iou[k]),
            "unknown_precision": float(cm[k, k] / pred_u) if pred_u else float("nan"),
            "unknown_recall": float(cm[k, k] / gt_u) if gt_u else float("nan"),
            "n_pixels": total,
            "n_frames": int(self.n_frames),
        }
