"""Global score calibration (docs/architecture.md, "Scores"): one sigmoid fitted once on data, never a per-image
min-max, plus the frame iteration the fits and statistics use."""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posthoc.errors import DTypeError, PosthocError, ShapeError, ValueRangeError
from posthoc.validation import shape_str

log = logging.getLogger(__name__)


class NotFittedError(PosthocError, RuntimeError):
    """A teacher needs statistics or a calibration that were neither fitted nor loaded."""


class CalibrationError(PosthocError, ValueError):
    """A calibration or statistics file is malformed, or a fit is impossible on the data given."""


def _atomic_write_json(path: Any, obj: dict) -> Path:
    """Write JSON to ``path`` atomically (temp file in the same folder, then os.replace)."""
    from posthoc.adapters.io import write_json_atomic

    return write_json_atomic(Path(path).expanduser(), obj, indent=1)


def _read_json(path: Any, fmt: str) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise CalibrationError(f"{fmt} file {str(p)!r} does not exist")
    try:
        obj = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CalibrationError(f"{fmt} file {str(p)!r} is not valid JSON: {e}") from e
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CalibrationError(f"{str(p)!r} must be a JSON object with \"format\": \"{fmt}\"; got format {got!r}")
    return obj


class SigmoidCalibration:
    """A global monotone map of a raw anomaly score to [0,1]: ``p = sigmoid((raw - shift) / scale)``.

    One map for the whole data set (docs/architecture.md, "Scores"), so the pooled ranking of
    pixels, and with it AP/AUROC/FPR95, is unchanged; never a per-image min-max.

    Attributes:
        shift: raw score mapped to p = 0.5.
        scale: > 0; raw-score units per unit of logit.
        score: which raw score this maps ("maxlogit", "energy", "sml", ...).
        fit: how it was fitted (mode, pixel count, quantiles ...), informational.
    """

    FORMAT = "posthoc.calibration"

    def __init__(self, shift: float, scale: float, score: str = "", fit: Mapping | None = None) -> None:
        shift, scale = float(shift), float(scale)
        if not (math.isfinite(shift) and math.isfinite(scale)) or scale <= 0:
            raise CalibrationError(f"calibration needs a finite shift and a finite scale > 0; got {shift}, {scale}")
        self.shift, self.scale, self.score = shift, scale, str(score)
        self.fit = dict(fit or {})

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        """raw (any shape, float, higher = more anomalous) -> probability in [0,1], same shape."""
        return torch.sigmoid((raw.float() - self.shift) / self.scale)

    def to_dict(self) -> dict:
        return {"format": self.FORMAT, "version": 1, "method": "sigmoid", "score": self.score,
                "shift": self.shift, "scale": self.scale, "fit": self.fit}

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "calibration") -> SigmoidCalibration:
        if (not isinstance(d, Mapping) or d.get("format", cls.FORMAT) != cls.FORMAT
                or d.get("method", "sigmoid") != "sigmoid"):
            raise CalibrationError(f"{where} must be a {cls.FORMAT!r} object with method 'sigmoid'; got {d!r:.200}")
        try:
            return cls(d["shift"], d["scale"], d.get("score", ""), d.get("fit"))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, CalibrationError):
                raise
            raise CalibrationError(f"{where} needs numeric 'shift' and 'scale'; got {d!r:.200}") from e

    def save(self, path: Any) -> Path:
        """Write the JSON format documented in the module docstring, atomically."""
        return _atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Any) -> SigmoidCalibration:
        return cls.from_dict(_read_json(path, cls.FORMAT), str(path))

    def __repr__(self) -> str:
        return f"SigmoidCalibration(shift={self.shift:.6g}, scale={self.scale:.6g}, score={self.score!r})"


def load_calibration(src: Any) -> SigmoidCalibration:
    """A calibration from a path, a dict (the JSON object) or a SigmoidCalibration."""
    if isinstance(src, SigmoidCalibration):
        return src
    if isinstance(src, Mapping):
        return SigmoidCalibration.from_dict(src)
    if isinstance(src, (str, os.PathLike)):
        return SigmoidCalibration.load(src)
    raise DTypeError(f"calibration must be a path, a dict or a SigmoidCalibration; got {type(src).__name__}")


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def fit_sigmoid_calibration(raw: Any, labels: Any = None, *, score: str = "", quantiles=(0.5, 0.99),
                            probs=(0.1, 0.5), balanced: bool = True, max_iter: int = 100) -> SigmoidCalibration:
    """Fit a global sigmoid to pooled raw anomaly scores.

    Args:
        raw: 1-D float array/tensor of raw scores (higher = more anomalous), pooled over
            frames (a subsample is fine).
        labels: optional 1-D array of the same length, 1 = anomaly, 0 = in-distribution
            (other values, e.g. void 255, are ignored). Given both classes, the fit is
            Platt scaling: a 1-D logistic regression of labels on raw (class-balanced
            by default), fitted by Newton's method.
        quantiles, probs: without labels of both classes (e.g. anomaly-free training
            frames) the map sends the pooled ``quantiles[0]`` of raw to ``probs[0]`` and
            ``quantiles[1]`` to ``probs[1]``: by default the median in-distribution pixel
            to 0.1 and the 99th percentile to 0.5. Pixels labelled 1 are left out of it;
            void/unlabelled ones are kept.
        balanced: weight both classes equally in the Platt fit.

    Returns:
        SigmoidCalibration.

    Raises:
        CalibrationError: no finite scores, a degenerate distribution (all equal), or a
            Platt fit whose slope is not positive (the score ranks anomalies lower:
            wrong polarity).
    """
    r_all = torch.as_tensor(np.asarray(raw.cpu() if isinstance(raw, torch.Tensor) else raw),
                            dtype=torch.float64).flatten()
    finite = torch.isfinite(r_all)
    platt = False
    if labels is not None:
        y_all = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)).flatten()
        if y_all.shape != r_all.shape:
            raise ShapeError(f"labels must match raw scores {shape_str(r_all.shape)}; got {shape_str(y_all.shape)}")
        lab_keep = finite & ((y_all == 0) | (y_all == 1))
        y = y_all[lab_keep].double()
        platt = 0 < float(y.sum()) < y.numel()
    if platt:
        r = r_all[lab_keep]
    else:  # quantile map over every finite pixel not labelled anomalous (void / unlabelled pixels count)
        keep = finite if labels is None else finite & (y_all != 1)
        r = r_all[keep]
    if r.numel() < 2:
        raise CalibrationError(f"calibration needs at least 2 finite scores; got {r.numel()}")
    if platt:
        w = torch.ones_like(y)
        if balanced:
            npos = float(y.sum())
            w = torch.where(y > 0, 0.5 / npos, 0.5 / (y.numel() - npos))
        else:
            w = w / w.sum()
        mu, sd = float(r.mean()), float(r.std())
        if sd <= 0:
            raise CalibrationError("all raw scores are equal; a calibration cannot be fitted")
        z = (r - mu) / sd
        a, b = 1.0, 0.0
        for _ in range(max_iter):
            p = torch.sigmoid(a * z + b)
            g_a = float((w * (p - y) * z).sum()) + 1e-6 * a
            g_b = float((w * (p - y)).sum())
            s = w * p * (1 - p)
            h_aa = float((s * z * z).sum()) + 1e-6
            h_ab = float((s * z).sum())
            h_bb = float(s.sum()) + 1e-12
            det = h_aa * h_bb - h_ab * h_ab
            if det <= 0:
                break
            da = (h_bb * g_a - h_ab * g_b) / det
            db = (h_aa * g_b - h_ab * g_a) / det
            a, b = a - da, b - db
            if abs(da) + abs(db) < 1e-10:
                break
        if not (a > 0 and math.isfinite(a) and math.isfinite(b)):
            raise CalibrationError(
                f"the Platt fit of {score or 'the score'} has slope {a:.3g} <= 0: anomalies score lower than "
                "in-distribution pixels (wrong polarity, or labels swapped)"
            )
        scale = sd / a
        shift = mu - b * scale
        fit = {"mode": "platt", "pixels": int(r.numel()), "positives": int(y.sum()), "balanced": bool(balanced)}
        return SigmoidCalibration(shift, scale, score, fit)
    q0, q1 = (float(v) for v in quantiles)
    p0, p1 = (float(v) for v in probs)
    if not (0 <= q0 < q1 <= 1 and 0 < p0 < p1 < 1):
        raise ValueRangeError(f"need 0<=q0<q1<=1 and 0<p0<p1<1; got quantiles {quantiles}, probs {probs}")
    v0, v1 = (float(v) for v in np.quantile(r.numpy(), [q0, q1]))  # numpy: no size limit (torch.quantile has one)
    if not v1 > v0:
        raise CalibrationError(
            f"raw scores at quantiles {q0} and {q1} are equal ({v0:g}); a calibration cannot be fitted on them"
        )
    scale = (v1 - v0) / (_logit(p1) - _logit(p0))
    shift = v0 - scale * _logit(p0)
    fit = {"mode": "quantile", "pixels": int(r.numel()), "quantiles": [q0, q1], "probs": [p0, p1],
           "values": [v0, v1]}
    return SigmoidCalibration(shift, scale, score, fit)


def _one_batch(img: Any) -> Any:
    """A single (H,W,3) / (3,H,W) image becomes a batch of one; batches pass through."""
    if isinstance(img, (np.ndarray, torch.Tensor)) and img.ndim == 3:
        return img[None]
    return img


_FRAME_FORMS = ("an image batch (B,H,W,3) / (B,3,H,W)", "an iterable of image batches or single images",
                "of (images, labels) pairs", "of frames with .image and .label (posthoc.bench.datasets.Frame)")


def _iter_frames(frames: Any) -> Iterable[tuple[Any, Any]]:
    """Yield (images, labels-or-None) from one of :data:`_FRAME_FORMS`."""
    if isinstance(frames, (np.ndarray, torch.Tensor)):
        yield _one_batch(frames), None
        return
    if isinstance(frames, (str, bytes, Mapping)) or not isinstance(frames, Iterable):
        raise DTypeError(f"frames must be {', '.join(_FRAME_FORMS)}; got {type(frames).__name__}")
    for item in frames:
        if hasattr(item, "image") and hasattr(item, "label"):  # posthoc.bench.datasets.Frame
            yield _one_batch(item.image), item.label
        elif isinstance(item, (np.ndarray, torch.Tensor)):
            yield _one_batch(item), None
        elif isinstance(item, (tuple, list)):
            if len(item) != 2:
                raise DTypeError(f"frame tuples must be (images, labels); got {len(item)} items")
            yield _one_batch(item[0]), item[1]
        else:
            raise DTypeError(f"each frame must be an image (batch), an (images, labels) pair or a frame with "
                             f".image and .label; got {type(item).__name__}")


def _as_batch_labels(labels: Any, b: int, hw: tuple[int, int]) -> torch.Tensor:
    lab = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels))
    if lab.ndim == 2:
        lab = lab[None]
    if lab.ndim != 3 or lab.shape[0] != b or tuple(lab.shape[1:]) != tuple(hw):
        raise ShapeError(f"frame labels must be (B,H,W)=({b},{hw[0]},{hw[1]}); got {shape_str(lab.shape)}")
    return lab.long()


def _subsample(x: torch.Tensor, lab: torch.Tensor | None, n: int, gen: torch.Generator):
    x = x.flatten()
    idx = torch.randperm(x.numel(), generator=gen)[:n] if x.numel() > n else None
    if idx is None:
        return x.cpu(), (lab.flatten().cpu() if lab is not None else None)
    return x.cpu()[idx], (lab.flatten().cpu()[idx] if lab is not None else None)
