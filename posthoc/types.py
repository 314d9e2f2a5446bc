"""Data types that travel between teachers, proposal sources and the ops.

``Proposals`` and ``TeacherOutput`` are plain containers: they validate their
fields on construction and hold numpy arrays or torch tensors as given.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, TypeVar

import numpy as np
import torch

from .errors import DTypeError, ShapeError, ValueRangeError
from .validation import as_torch, check_finite, check_labels, check_range, shape_str

__all__ = ["Array", "ArrayT", "Proposals", "TeacherOutput"]

#: What the array arguments of the functional core accept: a numpy array or a torch tensor.
Array: TypeAlias = np.ndarray | torch.Tensor
#: The same as a type variable: a function annotated ``(x: ArrayT) -> ArrayT`` returns numpy for numpy
#: input and torch for torch input, in a type checker as at run time (:func:`posthoc.validation.restore`).
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass
class Proposals:
    """Class-agnostic region proposals for a batch.

    Attributes:
        labels: (B,H,W) integer region index per pixel, -1 = unassigned.
        region_scores: optional (B,N,h,w) soft region scores, probabilities in [0,1]
            (may be at a lower resolution than ``labels``).
        validity: optional (B,N) per-region validity, probabilities in [0,1].
        class_logits: optional (B,N,K+1) class logits, any range, the last entry being
            "no object" (mask-transformer sources only).
        mask_logits: optional (B,N,h,w) mask logits, any range (mask-transformer sources).
        meta: free-form information about the source (name, settings).
        labels_final: True when ``labels`` is the finished partition: the source already
            assigned and split its soft proposals (with :func:`posthoc.assign_labels`) or
            produced the regions itself (superpixels, mean-shift). :class:`posthoc.Pipeline`
            then uses ``labels`` as they are and neither re-assigns nor re-splits them; with
            False (a plain label map or masks) it assigns and splits as its settings say.
    """

    labels: Any
    region_scores: Any | None = None
    validity: Any | None = None
    class_logits: Any | None = None
    mask_logits: Any | None = None
    meta: dict = field(default_factory=dict)
    labels_final: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.labels_final, bool):
            raise DTypeError(f"Proposals.labels_final must be a bool; got {type(self.labels_final).__name__}")
        lab, _ = as_torch(self.labels, "Proposals.labels")
        if lab.ndim != 3:
            raise ShapeError(f"Proposals.labels must be (B,H,W); got shape {shape_str(lab.shape)}")
        check_labels(lab, "Proposals.labels")
        b = lab.shape[0]
        n = None
        if self.region_scores is not None:
            r, _ = as_torch(self.region_scores, "Proposals.region_scores")
            if r.ndim != 4 or r.shape[0] != b:
                raise ShapeError(
                    f"Proposals.region_scores must be (B,N,h,w) with B={b}; got {shape_str(r.shape)}"
                )
            check_range(r, "Proposals.region_scores", 0.0, 1.0)
            n = r.shape[1]
        if self.validity is not None:
            v, _ = as_torch(self.validity, "Proposals.validity")
            if v.ndim != 2 or v.shape[0] != b or (n is not None and v.shape[1] != n):
                want = f"(B,N)=({b},{n if n is not None else 'N'})"
                raise ShapeError(f"Proposals.validity must be {want}; got {shape_str(v.shape)}")
            check_range(v, "Proposals.validity", 0.0, 1.0)
            n = v.shape[1]
        if self.class_logits is not None:
            c, _ = as_torch(self.class_logits, "Proposals.class_logits")
            if c.ndim != 3 or c.shape[0] != b or (n is not None and c.shape[1] != n):
                raise ShapeError(
                    f"Proposals.class_logits must be (B,N,K+1) with B={b}, N={n}; got {shape_str(c.shape)}"
                )
            check_finite(c, "Proposals.class_logits")
            n = c.shape[1]
        if self.mask_logits is not None:
            m, _ = as_torch(self.mask_logits, "Proposals.mask_logits")
            if m.ndim != 4 or m.shape[0] != b or (n is not None and m.shape[1] != n):
                raise ShapeError(
                    f"Proposals.mask_logits must be (B,N,h,w) with B={b}, N={n}; got {shape_str(m.shape)}"
                )
            check_finite(m, "Proposals.mask_logits")

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_regions(self) -> int:
        """Number of regions: N of the soft scores if present, else max label + 1."""
        for x in (self.region_scores, self.validity, self.class_logits, self.mask_logits):
            if x is not None:
                return int(x.shape[1])
        lab, _ = as_torch(self.labels, "Proposals.labels")
        return int(lab.max()) + 1 if lab.numel() else 0


@dataclass
class TeacherOutput:
    """What a teacher returns for a batch of images.

    Attributes:
        scores: (B,C,H,W) at the input resolution. For ``kind="anomaly"``: C=1, a
            probability in [0,1], higher = more anomalous. For ``kind="semantic"``:
            logits over ``class_names``, any range.
        kind: ``"anomaly"`` or ``"semantic"``.
        class_names: names of the C classes (for ``"anomaly"``: ``["anomaly"]``).
        features: optional dict of named feature maps (B,F,h,w).
        logits: optional (B,K,H,W) semantic logits the anomaly score was computed from
            (lets the benchmark derive region class logits without a second run).
    """

    scores: Any
    kind: Literal["anomaly", "semantic"]
    class_names: Sequence[str]
    features: dict | None = None
    logits: Any | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("anomaly", "semantic"):
            raise ValueRangeError(f"TeacherOutput.kind must be 'anomaly' or 'semantic'; got {self.kind!r}")
        s, _ = as_torch(self.scores, "TeacherOutput.scores")
        if s.ndim != 4:
            raise ShapeError(f"TeacherOutput.scores must be (B,C,H,W); got shape {shape_str(s.shape)}")
        if not s.is_floating_point():
            raise DTypeError(f"TeacherOutput.scores must be floating point; got {s.dtype}")
        if self.kind == "anomaly":
            if s.shape[1] != 1:
                raise ShapeError(f"anomaly TeacherOutput.scores must be (B,1,H,W); got {shape_str(s.shape)}")
            check_range(s, "anomaly TeacherOutput.scores", 0.0, 1.0)
        else:
            check_finite(s, "TeacherOutput.scores")
        if len(self.class_names) != s.shape[1]:
            raise ShapeError(
                f"TeacherOutput.class_names must have C={s.shape[1]} entries; got {len(self.class_names)}"
            )

    @property
    def anomaly(self) -> torch.Tensor:
        """The (B,1,H,W) anomaly probability (only for ``kind='anomaly'``)."""
        if self.kind != "anomaly":
            raise ValueRangeError("TeacherOutput.anomaly is only defined for kind='anomaly'")
        return as_torch(self.scores, "scores")[0]
