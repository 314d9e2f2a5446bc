"""SML: standardized max logit (Jung et al., ICCV 2021) with the official post-processing."""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posthoc.errors import ShapeError, ValueRangeError
from posthoc.types import TeacherOutput

from ..registry import register_teacher
from ._common import _merge, _split_weights
from .calibration import (
    CalibrationError,
    NotFittedError,
    SigmoidCalibration,
    _as_batch_labels,
    _atomic_write_json,
    _iter_frames,
    _read_json,
    fit_sigmoid_calibration,
    load_calibration,
)
from .generic import _semantic_teacher
from .scores import _SemanticWrapper

log = logging.getLogger(__name__)


def _boundary_suppression(score: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    from posthoc import scores as S

    return S.boundary_suppression(score, prediction)


def _dilated_smoothing(score: torch.Tensor) -> torch.Tensor:
    from posthoc import scores as S

    return S.dilated_smoothing(score)


def _fitted(t: torch.Tensor | None) -> torch.Tensor:
    """A statistic that is set together with ``mean`` (checked by the caller)."""
    if t is None:  # pragma: no cover - set together with mean
        raise NotFittedError("SML statistics are not fitted; call fit(frames) or load_stats(path)")
    return t


@register_teacher("sml")
class SMLTeacher(_SemanticWrapper):
    """Standardized Max Logits (Jung et al., ICCV 2021; official code shjung13/Standardized-max-logits).

    SML(p) = (max_k l_k(p) - mu_c) / sigma_c with c = argmax_k l_k(p) and per-class
    statistics of the max logit over the pixels predicted as c (``fit``), computed at
    the input resolution as the official ``DeepV3Plus.forward`` does. Then, as in the
    official ``BoundarySuppressionWithSmoothing``, boundary suppression around the
    predicted label map and dilated smoothing (``posthoc.scores``). The result is high
    for in-distribution pixels; it is negated and mapped to [0,1] with a global
    :class:`SigmoidCalibration` (fitted in ``fit`` on the same frames).

    Args:
        weights: the semantic model (.onnx path, torch module, semantic Teacher) or a
            dict {"model": ..., "stats": path.json}; None = bundled default.
        device: where the model runs.
        stats: path or dict in the "posthoc.sml_stats" format (overrides weights' "stats").
        boundary_suppression, dilated_smoothing: the two post-processing steps (official
            defaults: both on).
        **settings: forwarded to the semantic teacher.
    """

    FORMAT = "posthoc.sml_stats"

    def __init__(self, weights: Any = None, device: Any = None, *, stats: Any = None,
                 boundary_suppression: bool | None = None, dilated_smoothing: bool | None = None,
                 **settings: Any) -> None:
        self.name = "sml"
        w, meta = _split_weights(weights, "sml", ("model", "stats"))
        if "model" not in w:
            raise ValueRangeError(f"weights for 'sml' need a 'model' entry; got roles {list(w)}")
        self.base = _semantic_teacher(w["model"], "sml model", device, _merge(meta, settings))
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None
        self.count: torch.Tensor | None = None
        self.calibration: SigmoidCalibration | None = None
        self.boundary_suppression = True
        self.dilated_smoothing = True
        src = stats if stats is not None else w.get("stats")
        if src is not None:
            self.load_stats(src)
        if boundary_suppression is not None:
            self.boundary_suppression = bool(boundary_suppression)
        if dilated_smoothing is not None:
            self.dilated_smoothing = bool(dilated_smoothing)

    # ------------------------------------------------------------------ statistics
    def fit(self, frames: Any, *, calibrate: bool = True, pixels_per_frame: int = 20000, seed: int = 0,
            **fit_kwargs: Any) -> SMLTeacher:
        """Fit the class statistics (and then the calibration) on frames.

        Args:
            frames: an image batch, or an iterable of image batches or (images, labels)
                pairs (labels (B,H,W): 0 in-distribution, 1 anomaly, 255 void; anomaly and
                void pixels are left out of the statistics). An iterator is consumed
                once and kept in memory for the calibration pass.
            calibrate: also fit the global calibration of -SML (second pass).
            pixels_per_frame, seed, fit_kwargs: as in :meth:`ScoreTeacher.fit_calibration`.

        Returns:
            self. Statistics are exact sums over all pixels (float64): mean and unbiased
            variance of the max logit per predicted class (official
            ``calculate_statistics``); classes predicted on fewer than 2 pixels get the
            pooled variance (and, if never predicted, the pooled mean; count 0 in the file).
        """
        if isinstance(frames, Iterable) and not isinstance(frames, (np.ndarray, torch.Tensor, list, tuple)):
            frames = list(frames)
        k: int | None = None
        s1 = s2 = cnt = torch.zeros(0, dtype=torch.float64)  # sized on the first frame
        for images, labels in _iter_frames(frames):
            with torch.no_grad():
                logits = self._semantic(images).scores.float()
                mx, pred = logits.max(dim=1)
                keep = torch.ones_like(pred, dtype=torch.bool)
                if labels is not None:
                    lab = _as_batch_labels(labels, pred.shape[0], tuple(pred.shape[-2:])).to(pred.device)
                    keep = lab == 0
                if k is None:
                    k = logits.shape[1]
                    s1 = torch.zeros(k, dtype=torch.float64)
                    s2 = torch.zeros(k, dtype=torch.float64)
                    cnt = torch.zeros(k, dtype=torch.float64)
                elif logits.shape[1] != k:
                    raise ShapeError(f"the model gave {logits.shape[1]} classes on one frame and {k} on another")
                pv = pred[keep].cpu()
                mv = mx[keep].double().cpu()
                s1 += torch.bincount(pv, weights=mv, minlength=k)
                s2 += torch.bincount(pv, weights=mv * mv, minlength=k)
                cnt += torch.bincount(pv, minlength=k).double()
        if k is None:
            raise CalibrationError("frames is empty: SML statistics need at least one frame")
        tot = float(cnt.sum())
        if tot == 0:
            raise CalibrationError("no in-distribution pixel in frames (all labelled anomaly/void)")
        g_mean = float(s1.sum()) / tot
        g_var = max((float(s2.sum()) - tot * g_mean**2) / max(tot - 1.0, 1.0), 1e-12)
        has = cnt > 0
        mean = torch.where(has, s1 / cnt.clamp(min=1), torch.full_like(s1, g_mean))
        # unbiased variance, as the official calculate_statistics (np.var(..., ddof=1) semantics)
        var = ((s2 - cnt * mean**2) / (cnt - 1).clamp(min=1)).clamp(min=0)
        var = torch.where((cnt > 1) & (var > 1e-12), var, torch.full_like(var, g_var))
        if not bool(has.all()):
            log.warning("SML: classes %s were never predicted; they get the pooled statistics",
                        [i for i in range(k) if not has[i]])
        self.mean, self.var, self.count = mean, var, cnt.long()
        if calibrate:
            raw, lab = self._collect(frames, lambda out: -self._sml(out.scores), pixels_per_frame=pixels_per_frame,
                                     seed=seed)
            self.calibration = fit_sigmoid_calibration(raw, lab, score="sml", **fit_kwargs)
        return self

    def fit_calibration(self, frames: Any, *, pixels_per_frame: int = 20000, seed: int = 0,
                        **fit_kwargs: Any) -> SigmoidCalibration:
        """Fit only the global calibration of -SML, keeping the current class statistics.

        For statistics that came from elsewhere (e.g. converted from the official
        ``stats/*_mean.npy``) and have no calibration yet. Frames as in :meth:`fit`.
        """
        if self.mean is None:
            raise NotFittedError("SML statistics are not fitted; call fit(frames) or load_stats(path)")
        raw, lab = self._collect(frames, lambda out: -self._sml(out.scores), pixels_per_frame=pixels_per_frame,
                                 seed=seed)
        self.calibration = fit_sigmoid_calibration(raw, lab, score="sml", **fit_kwargs)
        return self.calibration

    def stats_dict(self) -> dict:
        if self.mean is None:
            raise NotFittedError("SML statistics are not fitted; call fit(frames) or load_stats(path)")
        names = list(self.base.class_names) or [f"class_{i}" for i in range(self.mean.numel())]
        return {
            "format": self.FORMAT, "version": 1, "class_names": names,
            "mean": [float(v) for v in self.mean], "var": [float(v) for v in _fitted(self.var)],
            "count": [int(v) for v in _fitted(self.count)],
            "calibration": self.calibration.to_dict() if self.calibration is not None else None,
            "postprocess": {"boundary_suppression": self.boundary_suppression,
                            "dilated_smoothing": self.dilated_smoothing},
        }

    def save_stats(self, path: Any) -> Path:
        """Write the statistics (+ calibration) as "posthoc.sml_stats" JSON, atomically."""
        return _atomic_write_json(path, self.stats_dict())

    def load_stats(self, src: Any) -> SMLTeacher:
        """Load statistics from a path or a dict in the "posthoc.sml_stats" format; returns self."""
        where = str(src) if not isinstance(src, Mapping) else "stats"
        d = src if isinstance(src, Mapping) else _read_json(src, self.FORMAT)
        if d.get("format", self.FORMAT) != self.FORMAT:
            raise CalibrationError(f"{where} must have format {self.FORMAT!r}; got {d.get('format')!r}")
        try:
            mean = torch.tensor([float(v) for v in d["mean"]], dtype=torch.float64)
            var = torch.tensor([float(v) for v in d["var"]], dtype=torch.float64)
            count = torch.tensor([int(v) for v in d.get("count", [0] * len(mean))], dtype=torch.long)
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f"{where} needs lists 'mean' and 'var' of numbers: {e}") from e
        if mean.ndim != 1 or mean.shape != var.shape or mean.numel() == 0:
            raise CalibrationError(f"{where}: 'mean' and 'var' must be equal-length lists; got {len(mean)}, {len(var)}")
        if not bool(torch.isfinite(mean).all() and torch.isfinite(var).all()) or bool((var <= 0).any()):
            raise CalibrationError(f"{where}: 'mean' must be finite and 'var' finite and > 0")
        names = d.get("class_names")
        mine = list(self.base.class_names)
        if names is not None and mine and list(names) != mine:
            raise CalibrationError(f"{where} was fitted for classes {list(names)[:5]}...; the model has {mine[:5]}...")
        self.mean, self.var, self.count = mean, var, count
        self.calibration = load_calibration(d["calibration"]) if d.get("calibration") else None
        pp = d.get("postprocess") or {}
        self.boundary_suppression = bool(pp.get("boundary_suppression", True))
        self.dilated_smoothing = bool(pp.get("dilated_smoothing", True))
        return self

    # ------------------------------------------------------------------ inference
    def _sml(self, logits: torch.Tensor) -> torch.Tensor:
        """(B,K,H,W) logits -> (B,1,H,W) SML after post-processing (high = in-distribution)."""
        if self.mean is None:
            raise NotFittedError("SML statistics are not fitted; call fit(frames) or load_stats(path)")
        k = logits.shape[1]
        if k != self.mean.numel():
            raise ShapeError(f"SML statistics have {self.mean.numel()} classes; the model outputs {k}")
        mx, pred = logits.float().max(dim=1)
        mean = self.mean.to(device=logits.device, dtype=torch.float32)
        std = _fitted(self.var).to(device=logits.device, dtype=torch.float32).sqrt()
        sml = ((mx - mean[pred]) / std[pred])[:, None]
        if self.boundary_suppression:
            sml = _boundary_suppression(sml, pred)
        if self.dilated_smoothing:
            sml = _dilated_smoothing(sml)
        if sml.ndim == 3:
            sml = sml[:, None]
        return sml

    def __call__(self, images: Any) -> TeacherOutput:
        with torch.no_grad():
            out = self._semantic(images)
            raw = -self._sml(out.scores)
            if self.calibration is None:
                raise NotFittedError("the SML teacher has no calibration; call fit(frames) or load_stats(path)")
            return TeacherOutput(self.calibration(raw), "anomaly", ["anomaly"], features=out.features,
                                 logits=out.scores)
