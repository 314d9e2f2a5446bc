"""Score teachers: post-hoc anomaly scores over any semantic model (msp, maxlogit, entropy, energy)."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from posthoc.errors import ValueRangeError
from posthoc.types import TeacherOutput

from ..base import Teacher
from ..registry import register_teacher
from ._common import _merge, _split_weights
from .calibration import (
    CalibrationError,
    NotFittedError,
    SigmoidCalibration,
    _as_batch_labels,
    _iter_frames,
    _subsample,
    fit_sigmoid_calibration,
    load_calibration,
)
from .generic import _semantic_teacher

log = logging.getLogger(__name__)


_SCORES = ("msp", "maxlogit", "entropy", "energy")


def raw_score(logits: torch.Tensor, score: str) -> torch.Tensor:
    """Per-pixel anomaly score from semantic logits, higher = more anomalous.

    Args:
        logits: (B,K,H,W) float logits, any range.
        score: "msp": 1 - max_k softmax (Hendrycks & Gimpel, ICLR 2017), in [0,1];
            "entropy": entropy of softmax / log K, in [0,1]; "maxlogit": -max_k l_k
            (Hendrycks et al., ICML 2022), any range; "energy": -logsumexp_k l_k, the
            free energy with T=1 (Liu et al., NeurIPS 2020, Eq. 1), any range.

    Returns:
        (B,1,H,W) float32.

    Raises:
        ValueRangeError: fewer than 2 classes. With one class MSP and entropy are the same
            for every pixel, and max logit and energy are just the negated output: the model
            is an anomaly scorer already, so it is refused with a pointer to ``kind="anomaly"``.
    """
    if score not in _SCORES:
        raise ValueRangeError(f"score must be one of {_SCORES}; got {score!r}")
    k = logits.shape[1] if logits.ndim == 4 else None
    if k is None or k < 2:
        got = f"K={k} channel" if k is not None else f"shape {tuple(logits.shape)}"
        raise ValueRangeError(
            f"the {score!r} score needs (B,K,H,W) class logits with K >= 2 classes; got {got}. "
            "A one-channel output is an anomaly score already: use it as kind='anomaly' "
            "(get_teacher('onnx', weights=path, kind='anomaly'), or --teacher model.onnx in posthoc-bench)"
        )
    x = logits.float()
    if score == "msp":
        return 1.0 - torch.softmax(x, dim=1).amax(dim=1, keepdim=True)
    if score == "entropy":
        logp = torch.log_softmax(x, dim=1)
        h = -(logp.exp() * logp).sum(dim=1, keepdim=True)
        return (h / math.log(k)).clamp_(0.0, 1.0)
    if score == "maxlogit":
        return -x.amax(dim=1, keepdim=True)
    return -torch.logsumexp(x, dim=1, keepdim=True)  # energy


class _SemanticWrapper(Teacher):
    """Shared plumbing for anomaly teachers computed from a semantic teacher's logits."""

    kind = "anomaly"
    base: Teacher  # the semantic teacher, set by the subclass

    def _semantic(self, images: Any) -> TeacherOutput:
        out = self.base(images)
        if out.kind != "semantic":
            raise ValueRangeError(f"the base teacher must be semantic; got kind {out.kind!r}")
        return out

    @property
    def semantic_class_names(self) -> list[str]:
        return list(self.base.class_names)

    def _collect(self, frames: Any, fn: Callable, *, pixels_per_frame: int, seed: int):
        """Run fn(semantic output) -> raw (B,1,H,W) over frames; pooled subsample of (raw, labels)."""
        gen = torch.Generator().manual_seed(int(seed))
        rs, ls, any_lab = [], [], False
        for images, labels in _iter_frames(frames):
            with torch.no_grad():
                out = self._semantic(images)
                raw = fn(out)
            lab = None
            if labels is not None:
                lab = _as_batch_labels(labels, raw.shape[0], tuple(raw.shape[-2:]))
                any_lab = True
            r, lb = _subsample(raw, lab, int(pixels_per_frame) * raw.shape[0], gen)
            rs.append(r)
            ls.append(lb if lb is not None else torch.full_like(r, 255, dtype=torch.long))
        if not rs:
            raise CalibrationError("frames is empty: a calibration needs at least one frame")
        return torch.cat(rs), (torch.cat(ls) if any_lab else None)


class ScoreTeacher(_SemanticWrapper):
    """A generic post-hoc anomaly score over any semantic model, as a teacher.

    ``msp`` and ``entropy`` are probabilities already; ``maxlogit`` and ``energy`` are
    mapped to [0,1] by a global :class:`SigmoidCalibration` that must be fitted
    (:meth:`fit_calibration`) or given (``calibration=`` path/dict, or the bundled
    "calibration" file).

    Args:
        score: "msp", "maxlogit", "entropy" or "energy" (see :func:`raw_score`).
        weights: the semantic model: an .onnx path, a torch module, a semantic Teacher,
            or a dict {"model": ..., "calibration": path}; None = bundled default.
        device: where the model runs.
        calibration: path / dict / SigmoidCalibration for maxlogit and energy.
        **settings: forwarded to the semantic teacher (mean, std, channel_order,
            input_size, class_names, output_name, providers, ...).

    Returns (``__call__``):
        TeacherOutput(kind="anomaly", scores (B,1,H,W) in [0,1], logits (B,K,H,W)).
    """

    def __init__(self, score: str, weights: Any = None, device: Any = None, *, calibration: Any = None,
                 **settings: Any) -> None:
        if score not in _SCORES:
            raise ValueRangeError(f"score must be one of {_SCORES}; got {score!r}")
        self.score = score
        self.name = score
        w, meta = _split_weights(weights, score, ("model", "calibration"))
        if "model" not in w:
            raise ValueRangeError(f"weights for {score!r} need a 'model' entry; got roles {list(w)}")
        self.base = _semantic_teacher(w["model"], f"{score} model", device, _merge(meta, settings))
        cal = calibration if calibration is not None else w.get("calibration")
        self.calibration = load_calibration(cal) if cal is not None else None
        if self.calibration is not None and self.calibration.score and self.calibration.score != score:
            raise CalibrationError(f"calibration was fitted for score {self.calibration.score!r}, not {score!r}")

    @property
    def needs_calibration(self) -> bool:
        return self.score in ("maxlogit", "energy")

    def fit_calibration(self, frames: Any, *, pixels_per_frame: int = 20000, seed: int = 0,
                        **fit_kwargs: Any) -> SigmoidCalibration:
        """Fit the global sigmoid on frames (image batches, or (images, labels) pairs).

        Labels (0 = in-distribution, 1 = anomaly, 255 = void) switch the fit to Platt
        scaling; without them the quantile map of :func:`fit_sigmoid_calibration` is used.
        Pixels are subsampled (``pixels_per_frame`` per image, seeded) and pooled.
        """
        raw, lab = self._collect(frames, lambda out: raw_score(out.scores, self.score),
                                 pixels_per_frame=pixels_per_frame, seed=seed)
        self.calibration = fit_sigmoid_calibration(raw, lab, score=self.score, **fit_kwargs)
        log.info("fitted %s calibration %s", self.score, self.calibration)
        return self.calibration

    def save_calibration(self, path: Any) -> Path:
        if self.calibration is None:
            raise NotFittedError(f"{self.score}: no calibration to save; call fit_calibration(frames) first")
        return self.calibration.save(path)

    def load_calibration(self, path: Any) -> ScoreTeacher:
        self.calibration = load_calibration(path)
        return self

    def __call__(self, images: Any) -> TeacherOutput:
        with torch.no_grad():
            out = self._semantic(images)
            raw = raw_score(out.scores, self.score)
            if self.needs_calibration:
                if self.calibration is None:
                    raise NotFittedError(
                        f"the {self.score} teacher maps an unbounded score to [0,1] with a global calibration; "
                        "call fit_calibration(frames) or pass calibration=path.json"
                    )
                prob = self.calibration(raw)
            else:
                prob = raw.clamp(0.0, 1.0)
            return TeacherOutput(prob, "anomaly", ["anomaly"], features=out.features, logits=out.scores)


def _score_factory(score: str):
    def factory(weights: Any = None, device: Any = None, **kw: Any) -> ScoreTeacher:
        return ScoreTeacher(score, weights=weights, device=device, **kw)

    factory.__name__ = f"{score}_teacher"
    factory.__doc__ = f"``get_teacher({score!r})``: :class:`ScoreTeacher` with score={score!r}."
    return factory


msp_teacher = register_teacher("msp")(_score_factory("msp"))
maxlogit_teacher = register_teacher("maxlogit")(_score_factory("maxlogit"))
entropy_teacher = register_teacher("entropy")(_score_factory("entropy"))
energy_teacher = register_teacher("energy")(_score_factory("energy"))
