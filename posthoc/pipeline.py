"""``Pipeline``: holds settings and composes the functional core (docs/architecture.md, data flow).

    proposals ─▶ labels: as given when ``Proposals.labels_final``, else
                 assign_labels (soft_assign | hard_assign, then split_components)
              ─▶ [fuse(D, labels)] ─▶ [refine] ─▶ [offset_resample with offsets_from_proposals]
                                    └▶ [mine_unknown_instances]

This is the one chain: ``posthoc-bench`` builds every variant it reports with a
``Pipeline`` and reads the stage outputs (``fused``, ``refined``, ``resampled``), so a
benchmark number is what a user's call computes. The class only stores settings and
calls the public functions; ``tests/posthoc/test_pipeline.py`` shows that calling it
equals calling the functions by hand. It accepts precomputed teacher outputs and
proposals, so a benchmark never runs a model twice.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .assign import assign_labels
from .components import split_components
from .errors import ShapeError, ValueRangeError
from .fusion import fuse, region_class_logits
from .mask2anomaly import CITYSCAPES_SUPPRESS_IDS, mine_unknown_instances, refine
from .offsets import offset_resample, offsets_from_proposals
from .types import Proposals, TeacherOutput
from .validation import as_label_map, as_torch, check_tensor_type, label_check_memo, restore, shape_str

__all__ = ["Pipeline"]


def _in_unit(x: Any) -> bool:
    """Whether every value of ``x`` lies in [0,1] (False for NaN); one ``aminmax`` pass."""
    t, _ = as_torch(x, "current")
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t.reshape(-1))
    return bool(lo >= 0) and bool(hi <= 1)

logger = logging.getLogger(__name__)

_ASSIGN = ("auto", "soft", "hard", "labels")


@dataclass
class Pipeline:
    """Settings for the post-hoc chain; call it on a teacher output and proposals.

    Attributes:
        normalize: ``fuse`` normalization ("auto", "softmax", "sigmoid", "none").
        assign: how proposals become a label map: ``"soft"`` (:func:`posthoc.soft_assign`,
            CSL Eq. 2), ``"hard"`` (:func:`posthoc.hard_assign`), ``"labels"`` (use
            ``Proposals.labels`` as given) or ``"auto"`` (soft when the proposals carry
            region scores and validity, else labels). Proposals with ``labels_final=True``
            (what every built-in proposal source returns) are used as given whatever
            this says: their source already assigned and split them.
        mask_threshold_hard, validity_threshold_hard: :func:`posthoc.hard_assign` thresholds.
        split: run :func:`posthoc.split_components` (CSL mask split) on labels that are not
            final.
        connectivity, min_size: :func:`posthoc.split_components` arguments.
        fuse: apply CSL structure-constrained fusion (:func:`posthoc.fuse`, Eq. 3). With
            False the later stages work on the teacher's scores directly (``"fused"`` is
            then absent from the result).
        refine: apply Mask2Anomaly refinement (anomaly maps, C=1, only).
        suppress_ids, score_threshold, mask_threshold, min_masks: refinement arguments
            (:func:`posthoc.refinement_mask`; defaults = the official code).
        offsets: apply :func:`posthoc.offset_resample` with
            :func:`posthoc.offsets_from_proposals` on the final label map.
        max_offset, boundary_width, teacher_weight: ``offsets_from_proposals`` arguments
            (the current score map is passed as its ``teacher``).
        mine: run :func:`posthoc.mine_unknown_instances` (needs ``stuff_ids`` and ``thing_ids``).
        stuff_ids, thing_ids, mine_threshold: mining arguments.
        backend: kernel backend for ``fuse`` / ``soft_assign``.
    """

    normalize: str = "auto"
    assign: str = "auto"
    mask_threshold_hard: float = 0.5
    validity_threshold_hard: float = 0.8
    split: bool = True
    connectivity: int = 8
    min_size: int = 0
    fuse: bool = True
    refine: bool = False
    suppress_ids: Sequence[int] = CITYSCAPES_SUPPRESS_IDS
    score_threshold: float = 0.95
    mask_threshold: float = 0.5
    min_masks: int = 2
    offsets: bool = False
    max_offset: float = 4.0
    boundary_width: float = 3.0
    teacher_weight: float = 0.5
    mine: bool = False
    stuff_ids: Sequence[int] | None = None
    thing_ids: Sequence[int] | None = None
    mine_threshold: float = 0.5
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.assign not in _ASSIGN:
            raise ValueRangeError(f"Pipeline.assign must be one of {_ASSIGN}; got {self.assign!r}")
        if self.mine and (self.stuff_ids is None or self.thing_ids is None):
            raise ValueRangeError("Pipeline(mine=True) needs stuff_ids and thing_ids; got None")

    def config(self) -> dict:
        """The settings as a plain dict (for run records)."""
        d = asdict(self)
        d["suppress_ids"] = list(self.suppress_ids)
        for k in ("stuff_ids", "thing_ids"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _scores(teacher_output_or_scores: Any, semantic_logits: Any) -> tuple[Any, Any]:
        if isinstance(teacher_output_or_scores, TeacherOutput):
            to = teacher_output_or_scores
            scores = to.scores
            if semantic_logits is None:
                semantic_logits = to.logits if to.logits is not None else (scores if to.kind == "semantic" else None)
        else:
            check_tensor_type(teacher_output_or_scores, "teacher_output_or_scores")
            scores = teacher_output_or_scores
            if semantic_logits is None and scores.ndim == 4 and scores.shape[1] > 1:
                semantic_logits = scores
        if scores.ndim != 4:
            raise ShapeError(
                f"Pipeline needs batched scores (B,C,H,W); got shape {shape_str(scores.shape)} "
                f"(add a batch axis, or call the functions directly for single images)"
            )
        return scores, semantic_logits

    def _labels(self, prop: Proposals, hw: tuple[int, int]) -> tuple[Any, bool]:
        """(label map, whether it still needs the mask split)."""
        if prop.labels_final:
            lab_hw = tuple(int(s) for s in prop.labels.shape[-2:])
            if lab_hw != hw:
                raise ShapeError(
                    f"final proposal labels must be (B,H,W) at the scores' resolution {hw}; got "
                    f"{shape_str(prop.labels.shape)}"
                )
            return prop.labels, False
        has_soft = prop.region_scores is not None and prop.validity is not None
        mode = self.assign
        if mode == "auto":
            mode = "soft" if has_soft else "labels"
        if mode in ("soft", "hard") and not has_soft:
            raise ValueRangeError(
                f"Pipeline(assign={mode!r}) needs proposals with region_scores and validity; got none"
            )
        if mode == "labels":
            return prop.labels, self.split
        assert prop.region_scores is not None and prop.validity is not None  # has_soft, checked above
        labels = assign_labels(
            prop.region_scores, prop.validity, size=hw, mode=mode, mask_threshold=self.mask_threshold_hard,
            validity_threshold=self.validity_threshold_hard, split=False, backend=self.backend,
        )
        return labels, self.split

    def _class_source(self, prop: Proposals, labels: Any, semantic_logits: Any, what: str) -> tuple[Any, Any]:
        """(masks, class_logits) for refinement/mining: the proposals' own, else derived."""
        if prop.class_logits is not None:
            masks = prop.mask_logits if prop.mask_logits is not None else prop.labels
            return masks, prop.class_logits
        if semantic_logits is None:
            raise ValueRangeError(
                f"Pipeline({what}=True) needs class logits: proposals.class_logits, or the teacher's semantic "
                f"logits (TeacherOutput.logits / semantic_logits=) to derive them with region_class_logits; got neither"
            )
        sem, sem_np = as_torch(semantic_logits, "semantic_logits")
        lab_hw = tuple(labels.shape[-2:])
        if sem.ndim == 4 and tuple(sem.shape[-2:]) != lab_hw:
            # logits at the model's resolution: resize bilinearly to the label map (as the teacher adapters do)
            sem = torch.nn.functional.interpolate(sem.float(), size=lab_hw, mode="bilinear", align_corners=False)
            semantic_logits = restore(sem, sem_np)
        return labels, region_class_logits(semantic_logits, labels, backend=self.backend)

    # ------------------------------------------------------------------ call
    def __call__(self, teacher_output_or_scores: Any, proposals: Any, *, semantic_logits: Any = None) -> dict:
        """Run the chain and return every stage's output.

        Args:
            teacher_output_or_scores: a :class:`posthoc.TeacherOutput` or (B,C,H,W) float
                scores (logits when C>1, an anomaly probability in [0,1] when C=1).
            proposals: a :class:`posthoc.Proposals`, a (B,H,W) integer label map (-1 =
                unassigned) or (B,N,H,W) non-overlapping boolean masks.
            semantic_logits: optional (B,K,H,W) semantic logits used to derive region class
                logits when the proposals carry none (default: ``TeacherOutput.logits``).

        Returns:
            dict with ``"labels"`` (assigned label map, (B,H,W) int64), ``"components"``
            (after the split, if it ran), ``"fused"`` (CSL Eq. 3, input shape, float32; if ``fuse``),
            optionally ``"refinement_mask"`` (B,1,H,W) and ``"refined"``, ``"offsets"``
            (B,2,H,W), ``"confidence"`` (B,1,H,W) and ``"resampled"``,
            ``"unknown_instances"`` (B,H,W) int64, and ``"output"`` (the last score map).
        """
        with torch.no_grad(), label_check_memo():  # the label map is checked once, not by every op
            scores, semantic_logits = self._scores(teacher_output_or_scores, semantic_logits)
            hw = (int(scores.shape[-2]), int(scores.shape[-1]))
            if isinstance(proposals, Proposals):
                prop = proposals
            else:
                check_tensor_type(proposals, "proposals")
                t, _ = as_torch(proposals, "proposals")
                if t.dtype == torch.bool:  # non-overlapping boolean masks -> label map (overlap checked)
                    lab = as_label_map(proposals, as_torch(scores, "scores")[0], batched=True, arg_name="proposals")
                    prop = Proposals(labels=restore(lab, isinstance(proposals, np.ndarray)))
                else:
                    prop = Proposals(labels=proposals)
            out: dict = {}
            labels, needs_split = self._labels(prop, hw)
            out["labels"] = labels
            if needs_split:
                labels = split_components(labels, self.connectivity, self.min_size)
                out["components"] = labels
            current = scores
            unit = False  # whether `current` is known to lie in [0,1] (then not read again to check it)
            if self.fuse:
                current = fuse(scores, labels, normalize=self.normalize, backend=self.backend)
                out["fused"] = current
                unit = True  # CSL Eq. 3 on probabilities: a region mean in [0,1] times a value in [0,1]
            if self.refine or self.mine:
                anomaly_like = current.shape[1] == 1
                if self.refine and not anomaly_like:
                    raise ShapeError(
                        f"Pipeline(refine=True) refines anomaly maps (B,1,H,W); got fused scores "
                        f"{shape_str(current.shape)}"
                    )
                masks, cls = self._class_source(prop, labels, semantic_logits, "refine" if self.refine else "mine")
                if self.refine:
                    refined, r = refine(
                        current, masks, cls, self.suppress_ids, self.score_threshold, self.mask_threshold,
                        self.min_masks, return_mask=True,
                    )
                    out["refinement_mask"] = r
                    out["refined"] = refined
                    current = refined  # anomaly * (1 - R), R in {0,1}: stays in [0,1] when it was
                if self.mine:
                    assert self.stuff_ids is not None and self.thing_ids is not None  # __post_init__ checked
                    out["unknown_instances"] = mine_unknown_instances(
                        masks, cls, self.stuff_ids, self.thing_ids, self.mine_threshold,
                        mask_threshold=self.mask_threshold, size=hw,
                    )
            if self.offsets:
                teacher = current if self.teacher_weight > 0 and (unit or _in_unit(current)) else None
                offs, conf = offsets_from_proposals(
                    labels, max_offset=self.max_offset, boundary_width=self.boundary_width,
                    teacher=teacher, teacher_weight=self.teacher_weight,
                )
                out["offsets"], out["confidence"] = offs, conf
                current = offset_resample(current, offs, conf, units="pixels")
                out["resampled"] = current
            out["output"] = current
            return out
