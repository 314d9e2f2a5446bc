"""The variants a run reports, each computed by :class:`posthoc.Pipeline`.

The chain is ``teacher`` (the teacher's anomaly probability alone), then for every proposal
source the selected steps of ``csl2`` → ``refine`` → ``offsets``, each on top of the
previous selected one. One ``Pipeline`` per source computes all of that source's variants
in one call, and the benchmark reads its stage outputs:

* ``csl2``: ``"fused"``, :func:`posthoc.fuse` of the anomaly map with the proposals'
  labels (CSL scheme 2, Eq. 3);
* ``refine``: ``"refined"``, :func:`posthoc.refine` (Mask2Anomaly refinement).
  Mask-transformer sources give ``class_logits``; for every other source each region of
  the label map is one mask and its class logits are :func:`posthoc.region_class_logits`
  of the teacher's semantic logits. The "suppress" classes come from
  :func:`posthoc.mask2anomaly.suppress_ids_from_names` on the teacher's semantic class
  names, else the Cityscapes default (trainIds 2-10, which the synthetic world follows);
* ``offsets``: ``"resampled"``, :func:`posthoc.offset_resample` with the OVeNet-style field
  of :func:`posthoc.offsets_from_proposals`.

So a number in ``results.json`` is what ``posthoc.Pipeline(...)(teacher_output, proposals)``
gives a user.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from posthoc.errors import ShapeError
from posthoc.mask2anomaly import CITYSCAPES_SUPPRESS_IDS, suppress_ids_from_names
from posthoc.pipeline import Pipeline
from posthoc.types import TeacherOutput

from .config import VARIANTS, BenchError

log = logging.getLogger(__name__)

__all__ = ["STAGE_OUTPUTS", "Variant", "VariantMaps", "as_anomaly", "suppress_choice", "variant_chain"]

_TITLES = {"csl2": "+CSL2", "refine": "+refine", "offsets": "+offsets"}
#: the Pipeline stage output that each step's variant reads
STAGE_OUTPUTS = {"csl2": "fused", "refine": "refined", "offsets": "resampled"}


@dataclass(frozen=True)
class Variant:
    """One map a run produces: ``key`` (cache and results.json key, e.g. ``csl2+refine@csl``),
    ``display`` (table name), ``source`` (None for the teacher alone) and ``steps``."""

    key: str
    display: str
    source: str | None
    steps: tuple[str, ...]


def variant_chain(variants: Sequence[str], sources: Sequence[str]) -> list[Variant]:
    """Every map the run produces, in table order."""
    out = []
    if "teacher" in variants:
        out.append(Variant("teacher", "alone", None, ()))
    steps = [v for v in VARIANTS[1:] if v in variants]
    for src in sources:
        for i in range(len(steps)):
            chain = tuple(steps[: i + 1])
            out.append(Variant("+".join(chain) + "@" + src, " ".join(_TITLES[s] for s in chain) + f" [{src}]",
                               src, chain))
    return out


def suppress_choice(teacher: Any) -> tuple[list[int] | None, str]:
    """Refinement's suppress ids for ``teacher`` and how they were chosen (for results.json)."""
    try:
        names = list(getattr(teacher, "semantic_class_names", None) or [])
    except Exception:
        names = []
    ids = suppress_ids_from_names(names)
    if ids is None:
        return None, "default Cityscapes trainIds 2-10 (the teacher exposes no semantic class names)"
    return ids, f"by name from the teacher's classes: {[names[i] for i in ids]}"


def as_anomaly(t_out: Any, teacher: str) -> torch.Tensor:
    """The (B,1,H,W) float32 anomaly probability of a teacher's output (BenchError for a semantic teacher)."""
    if not isinstance(t_out, TeacherOutput):
        raise BenchError(f"teacher {teacher!r} returned {type(t_out).__name__}; expected posthoc.TeacherOutput")
    if t_out.kind != "anomaly":
        raise BenchError(
            f"teacher {teacher!r} is a {t_out.kind} model (scores over {len(t_out.class_names)} classes); "
            "the anomaly benchmark needs an anomaly teacher, e.g. msp/maxlogit/entropy/energy/sml on top of it"
        )
    a = t_out.anomaly
    return a.float() if a.dtype != torch.float32 else a


class VariantMaps:
    """Holds one :class:`posthoc.Pipeline` per proposal source and computes a batch's variant maps.

    Args:
        chain: :func:`variant_chain`.
        suppress_ids: refinement's suppressed class ids (None = the Cityscapes default).
    """

    def __init__(self, chain: Sequence[Variant], suppress_ids: Sequence[int] | None = None) -> None:
        self.chain = list(chain)
        ids = CITYSCAPES_SUPPRESS_IDS if suppress_ids is None else tuple(suppress_ids)
        self.pipelines: dict[str, Pipeline] = {}
        for v in self.chain:  # a source's last variant has all its steps
            if v.source is not None:
                self.pipelines[v.source] = Pipeline(
                    fuse="csl2" in v.steps, refine="refine" in v.steps, offsets="offsets" in v.steps,
                    suppress_ids=ids,
                )

    def __call__(self, anomaly: torch.Tensor, t_out: Any, props_by_src: dict, timer: Any = None) -> dict:
        """All variant maps (B,1,H,W) float32 of one batch, keyed by :attr:`Variant.key`."""
        maps: dict[str, torch.Tensor] = {}
        stages: dict[str, dict] = {}
        for src, pipe in self.pipelines.items():
            props = props_by_src[src]
            if pipe.refine and props.class_logits is None and t_out.logits is None:
                raise BenchError(
                    f"variant 'refine' needs class logits: proposal source {src!r} has none and the teacher gives no "
                    "semantic logits (TeacherOutput.logits); drop 'refine' from --variants or use a mask-transformer "
                    "source"
                )
            with timer(f"pipeline:{src}") if timer is not None else contextlib.nullcontext():
                stages[src] = pipe(anomaly, props, semantic_logits=t_out.logits)
        for v in self.chain:
            if v.source is None:  # TeacherOutput already checked the teacher's range when it was built
                maps[v.key] = anomaly
                continue
            out = stages[v.source][STAGE_OUTPUTS[v.steps[-1]]]
            if tuple(out.shape) != tuple(anomaly.shape):
                raise ShapeError(f"variant {v.key} produced shape {tuple(out.shape)}; expected {tuple(anomaly.shape)}")
            # no range check here: the teacher map was checked when its TeacherOutput was built, and
            # every stage keeps [0,1] by construction (fuse: a product of region means and values
            # in [0,1]; refine: anomaly * (1 - R), R in {0,1}; offset_resample: a clamped convex blend)
            maps[v.key] = out if out.dtype == torch.float32 else out.float()
        return maps
