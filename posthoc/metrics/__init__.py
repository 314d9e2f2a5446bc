"""Official-grade metrics: SMIYC pixel and component metrics, semantic, open-set and panoptic.

Every accumulator has ``update(...)``, ``compute() -> dict``, ``merge(other)`` and
``reset()``; states merge by addition, so a data set can be split over processes or
machines and the results combined exactly. ``state_dict()`` / ``load_state_dict()`` give
the state as plain numpy arrays (``np.savez``, no pickle), and ``sync(process_group=None)``
all-reduces it in place over ``torch.distributed`` (:class:`MetricSyncError` when that
fails). See ``docs/metrics.md``.

* :class:`PixelMetrics` — AP, AUROC, FPR95, best F1; ``mode="smiyc"`` (official per-frame
  768-bin binning) or ``"exact"`` (sort-based, equals sklearn).
* :class:`ComponentMetrics` — sIoU_gt, PPV, F1 at sIoU 0.25..0.75 (official instancer);
  presets :meth:`ComponentMetrics.anomaly_track` / :meth:`ComponentMetrics.obstacle_track`;
  threshold from the pixel pass with :meth:`ComponentMetrics.from_pixel`.
* :func:`evaluate_anomaly` — both passes over a list of frames or a frame factory;
  :func:`evaluate_anomaly_maps` — the same for several maps of each frame at once.
* :class:`SemanticMetrics` — IoU, mIoU, zero-shot mIoU(seen/unseen) and hIoU.
* :class:`OpenIoU` — open-set IoU (known classes + unknown); :func:`open_set_prediction`.
* :class:`PanopticQuality` — PQ/SQ/RQ with known classes and an unknown thing class.
"""
from __future__ import annotations

from ._common import EmptyMetricError
from ._state import MetricSyncError
from .component import SIOU_THRESHOLDS, TRACK_PRESETS, ComponentMetrics, ThresholdNotSetError
from .evaluate import evaluate_anomaly, evaluate_anomaly_maps
from .panoptic import PanopticQuality
from .pixel import PixelMetrics
from .semantic import OpenIoU, SemanticMetrics, open_set_prediction

__all__ = [
    "SIOU_THRESHOLDS",
    "TRACK_PRESETS",
    "ComponentMetrics",
    "EmptyMetricError",
    "MetricSyncError",
    "OpenIoU",
    "PanopticQuality",
    "PixelMetrics",
    "SemanticMetrics",
    "ThresholdNotSetError",
    "evaluate_anomaly",
    "evaluate_anomaly_maps",
    "open_set_prediction",
]
