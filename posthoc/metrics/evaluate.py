"""Both passes of the official SMIYC protocol in one call: pixel metrics, then component metrics.

The component metrics threshold the scores at the pixel best-F1 threshold, which is known
only after every frame has been seen (see :mod:`posthoc.metrics.component`), so the frames
are iterated twice.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import DTypeError, ValueRangeError
from .component import ComponentMetrics
from .pixel import PixelMetrics

logger = logging.getLogger(__name__)

__all__ = ["evaluate_anomaly"]

Frames = Sequence[tuple[Any, Any]] | Callable[[], Iterable[tuple[Any, Any]]]


def _iterate(frames: Frames) -> Iterable[tuple[Any, Any]]:
    if callable(frames):
        return frames()
    if isinstance(frames, (list, tuple)):
        return frames
    raise DTypeError(
        "frames must be a list/tuple of (scores, labels) pairs or a callable returning a fresh iterable of them "
        f"(they are read twice); got {type(frames).__name__}"
    )


def evaluate_anomaly(frames: Frames, *, track: str = "anomaly", mode: str = "smiyc", ignore_index: int = 255,
                     threshold: float | None = None, curve_points: int | None = 4096) -> dict:
    """Pixel and component metrics of a data set, as the official SMIYC evaluation computes them.

    Args:
        frames: a list/tuple of ``(scores, labels)`` pairs ((H,W) or (B,H,W) each, see
            :meth:`PixelMetrics.update`), or a zero-argument callable that returns a fresh
            iterable of them (called twice; use it to stream frames from disk).
        track: ``"anomaly"`` (components >= 500 px predicted / 100 px GT) or ``"obstacle"`` (50/10).
        mode: pixel metric mode, ``"smiyc"`` or ``"exact"``.
        ignore_index: void label.
        threshold: component threshold; None = the pixel best-F1 threshold (official).
        curve_points: passed to :meth:`PixelMetrics.compute`.

    Returns:
        ``{"pixel": PixelMetrics.compute(), "component": ComponentMetrics.compute()}``.
    """
    if track not in ("anomaly", "obstacle"):
        raise ValueRangeError(f"track must be 'anomaly' or 'obstacle'; got {track!r}")
    pm = PixelMetrics(mode=mode, ignore_index=ignore_index)
    for scores, labels in _iterate(frames):
        pm.update(scores, labels)
    pix = pm.compute(curve_points=curve_points)
    if threshold is None:
        cm = ComponentMetrics.from_pixel(pix, track=track, ignore_index=ignore_index)
    else:
        preset = ComponentMetrics.anomaly_track if track == "anomaly" else ComponentMetrics.obstacle_track
        cm = preset(threshold, ignore_index=ignore_index)
    for scores, labels in _iterate(frames):
        cm.update(scores, labels)
    if cm.n_frames != pm.n_frames:
        raise ValueRangeError(
            f"frames gave {pm.n_frames} frames in the first pass and {cm.n_frames} in the second; "
            "pass a list or a callable that returns a fresh iterable"
        )
    logger.info("evaluate_anomaly: %d frames, threshold %.6g", cm.n_frames, cm.threshold)
    return {"pixel": pix, "component": cm.compute()}
