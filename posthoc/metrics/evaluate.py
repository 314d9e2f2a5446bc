"""Both passes of the official SMIYC protocol in one call: pixel metrics, then component metrics.

The component metrics threshold the scores at the pixel best-F1 threshold, which is known
only after every frame has been seen (see :mod:`posthoc.metrics.component`), so the frames
are iterated twice.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..errors import DTypeError, ValueRangeError
from ._common import EmptyMetricError
from .component import TRACK_PRESETS, ComponentMetrics
from .pixel import PixelMetrics

logger = logging.getLogger(__name__)

__all__ = ["evaluate_anomaly", "evaluate_anomaly_maps"]

Frames = Sequence[tuple[Any, Any]] | Callable[[], Iterable[tuple[Any, Any]]]


def _iterate(frames: Frames, pairs: str = "(scores, labels)") -> Iterable[tuple[Any, Any]]:
    """One pass over ``frames``: a list/tuple, or a callable that returns a fresh iterable."""
    if callable(frames):
        return frames()
    if isinstance(frames, (list, tuple)):
        return frames
    raise DTypeError(
        f"frames must be a list/tuple of {pairs} pairs or a callable returning a fresh iterable of them "
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

    def as_maps():
        for scores, labels in _iterate(frames):
            yield labels, {"scores": scores}

    res = evaluate_anomaly_maps(as_maps, track=track, mode=mode, ignore_index=ignore_index, threshold=threshold,
                                curve_points=curve_points)
    return res["scores"]


def evaluate_anomaly_maps(frames: Callable[[], Iterable[tuple[Any, Mapping[str, Any]]]] | Sequence, *,
                          track: str = "anomaly", mode: str = "smiyc", ignore_index: int = 255,
                          threshold: float | None = None, curve_points: int | None = 4096,
                          on_empty: str = "raise", threshold_dtype: str = "float64",
                          names: Sequence[str] | None = None,
                          reduce: Callable[[str, dict], None] | None = None,
                          pixel: Mapping[str, PixelMetrics] | None = None) -> dict[str, dict]:
    """The SMIYC two-pass protocol for several score maps of the same frames at once.

    This is the one implementation of the protocol: :func:`evaluate_anomaly` and the
    benchmark both call it. Pass 1 fills one :class:`PixelMetrics` per map name; pass 2
    thresholds each map at its own pixel best-F1 threshold (or ``threshold``) and fills one
    :class:`ComponentMetrics` with the track preset (:data:`TRACK_PRESETS`). Each frame's
    labels are read once per pass for all maps.

    Args:
        frames: a list/tuple of ``(labels, {name: scores})`` pairs, or a zero-argument
            callable that returns a fresh iterable of them (called twice). Every frame must
            give the same names.
        track, mode, ignore_index, threshold, curve_points: as for :func:`evaluate_anomaly`.
        on_empty: ``"raise"`` (default) lets :class:`EmptyMetricError` through when a map's
            frames hold no positive or no negative pixel; ``"record"`` stores
            ``{"pixel": {"error": message}, "component": None}`` for that map instead and
            logs a warning (the benchmark's behaviour).
        threshold_dtype: ``"float64"`` (default) or ``"float16"`` to reproduce the numpy-1.x
            SMIYC server's component metrics (see :class:`ComponentMetrics`).
        names: the map names, when known in advance; then ``frames`` may be empty (a
            process whose shard of a distributed run holds no frame), and every frame must
            give exactly these names.
        reduce: called as ``reduce("pixel", {name: PixelMetrics})`` after the first pass
            and ``reduce("component", {name: ComponentMetrics})`` after the second, before
            anything is computed; it may change the accumulators in place. With
            ``lambda stage, accs: [a.sync() for a in accs.values()]`` every process of a
            ``torch.distributed`` group evaluates its own frames and gets the metrics of
            all of them (the component threshold then comes from the pooled pixel pass, as
            in one process). Every process calls it with the same names in the same order.
        pixel: filled pixel accumulators per map name (e.g. the states of several shards
            merged in frame order); then the first pass is skipped, ``frames`` is read once
            for the component pass, and ``names`` defaults to the keys of ``pixel``.

    Returns:
        ``{name: {"pixel": PixelMetrics.compute(curve_points), "component":
        ComponentMetrics.compute() or None}}``; ``component`` is None when the pixel pass
        gave no finite best-F1 threshold (and ``threshold`` is None).
    """
    if track not in TRACK_PRESETS:
        raise ValueRangeError(f"track must be 'anomaly' or 'obstacle'; got {track!r}")
    if on_empty not in ("raise", "record"):
        raise ValueRangeError(f"on_empty must be 'raise' or 'record'; got {on_empty!r}")

    def passes():
        return _iterate(frames, "(labels, {name: scores})")

    pix: dict[str, PixelMetrics] = {}
    if pixel is not None:
        names = tuple(pixel if names is None else names)
        if set(names) != set(pixel):
            raise ValueRangeError(f"pixel must hold the accumulators of {list(names)}; got {list(pixel)}")
        pix = dict(pixel)
    elif names is not None:
        names = tuple(names)
        pix = {k: PixelMetrics(mode=mode, ignore_index=ignore_index) for k in names}
    for labels, maps in (() if pixel is not None else passes()):
        if names is None:
            names = tuple(maps)
            pix = {k: PixelMetrics(mode=mode, ignore_index=ignore_index) for k in names}
        elif tuple(maps) != names:
            raise ValueRangeError(f"every frame must give the maps {list(names)}; got {list(maps)}")
        for k in names:
            pix[k].update(maps[k], labels)
    if names is None:
        raise EmptyMetricError("evaluate_anomaly: no frames were given")
    if reduce is not None:
        reduce("pixel", pix)
    out: dict[str, dict] = {}
    comp: dict[str, ComponentMetrics | None] = {}
    for k in names:
        try:
            r = pix[k].compute(curve_points=curve_points)
        except EmptyMetricError as e:
            if on_empty == "raise":
                raise
            logger.warning("%s: %s", k, e)
            r = {"error": str(e)}
        out[k] = {"pixel": r, "component": None}
        if threshold is not None:
            comp[k] = ComponentMetrics(threshold, *TRACK_PRESETS[track], ignore_index=ignore_index,
                                       threshold_dtype=threshold_dtype)
        else:
            thr = r.get("best_f1_threshold")
            ok = thr is not None and math.isfinite(float(thr))
            comp[k] = (ComponentMetrics.from_pixel(r, track=track, ignore_index=ignore_index,
                                                   threshold_dtype=threshold_dtype) if ok else None)
    active = {k: cm for k in names if (cm := comp[k]) is not None}
    if active:
        for labels, maps in passes():
            if tuple(maps) != names:
                raise ValueRangeError(f"every frame must give the maps {list(names)}; got {list(maps)} (second pass)")
            for k, cm in active.items():
                cm.update(maps[k], labels)
        if reduce is not None:
            reduce("component", dict(active))
        for k, cm in active.items():
            if cm.n_frames != pix[k].n_frames:
                raise ValueRangeError(
                    f"frames gave {pix[k].n_frames} frames in the first pass and {cm.n_frames} in the second; "
                    "pass a list or a callable that returns a fresh iterable"
                )
            logger.info("evaluate_anomaly %s: %d frames, threshold %.6g", k, cm.n_frames, cm.threshold)
            out[k]["component"] = cm.compute()
    return out
