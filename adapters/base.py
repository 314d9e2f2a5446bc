"""The two interfaces every adapter implements."""
from __future__ import annotations

import abc
from typing import Any

from posthoc.types import Proposals, TeacherOutput

__all__ = ["ProposalSource", "Teacher"]


class Teacher(abc.ABC):
    """A per-pixel model wrapped for posthoc.

    Call it on a batch of RGB images, (B,H,W,3) uint8 numpy/torch or (B,3,H,W) float
    tensors in [0,1]; it returns a :class:`posthoc.TeacherOutput` whose scores are at
    the input resolution.
    """

    #: "anomaly" or "semantic"
    kind: str = "anomaly"
    #: registry name, set by @register_teacher
    name: str = ""

    @abc.abstractmethod
    def __call__(self, images: Any) -> TeacherOutput:  # pragma: no cover - interface
        ...

    @property
    def class_names(self) -> list[str]:
        return ["anomaly"] if self.kind == "anomaly" else []


class ProposalSource(abc.ABC):
    """A class-agnostic region proposer.

    Call it on the same batch of images (and, optionally, the teacher's output, which
    sources such as mean-shift on teacher features use); it returns a
    :class:`posthoc.Proposals`.
    """

    name: str = ""
    #: whether the proposals depend on ``teacher_output`` (e.g. mean-shift on teacher features).
    #: Sources that look only at the images set this to False, which lets the benchmark compute
    #: them once per frame and share them between teachers. Unknown sources are assumed to use it.
    uses_teacher_output: bool = True
    #: whether its Proposals carry a mask transformer's raw masks (``region_scores`` + ``validity``
    #: or ``mask_logits`` + ``class_logits``), which mask post-processing such as Maskomaly reads
    gives_masks: bool = False

    @abc.abstractmethod
    def __call__(self, images: Any, teacher_output: TeacherOutput | None = None) -> Proposals:  # pragma: no cover
        ...
