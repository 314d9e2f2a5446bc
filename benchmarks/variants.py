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

Beside the chain, the training-free peers (:mod:`posthoc.peers`) are alternatives to
``csl2`` on the same teacher and proposals (not stacked on it):

* ``objectomaly@<src>``: :func:`posthoc.peers.objectomaly` of the anomaly map with the
  label map CSL2 fuses (after assignment and mask split);
* ``maskomaly@<src>``: :func:`posthoc.peers.maskomaly` on the source's raw masks
  (``mask_logits`` + ``class_logits``, or ``region_scores`` + ``validity`` read as one class
  + "no object"); only for sources with ``gives_masks``;
* ``ugains``: :func:`posthoc.peers.ugains` with SAM point prompts (needs SAM weights; it
  does not read the proposals, so it is one map per teacher).

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

from posthoc import peers as peer_ops
from posthoc.errors import ShapeError
from posthoc.mask2anomaly import CITYSCAPES_SUPPRESS_IDS, suppress_ids_from_names
from posthoc.pipeline import Pipeline
from posthoc.types import TeacherOutput

from .config import PEERS, BenchError

log = logging.getLogger(__name__)

__all__ = ["CHAIN_STEPS", "STAGE_OUTPUTS", "Variant", "VariantMaps", "as_anomaly", "suppress_choice", "variant_chain"]

_TITLES = {"csl2": "+CSL2", "refine": "+refine", "offsets": "+offsets"}
#: the chain steps (each on top of the previous selected one)
CHAIN_STEPS = ("csl2", "refine", "offsets")
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


def variant_chain(variants: Sequence[str], sources: Sequence[str],
                  peer_sources: dict | None = None) -> list[Variant]:
    """Every map the run produces, in table order.

    Args:
        peer_sources: for ``objectomaly`` / ``maskomaly``, the sources each runs on (default:
            all); for ``ugains``, a true value when it runs (default: when selected).
    """
    out = []
    if "teacher" in variants:
        out.append(Variant("teacher", "alone", None, ()))
    steps = [v for v in CHAIN_STEPS if v in variants]
    ps = peer_sources or {}
    for src in sources:
        for i in range(len(steps)):
            chain = tuple(steps[: i + 1])
            out.append(Variant("+".join(chain) + "@" + src, " ".join(_TITLES[s] for s in chain) + f" [{src}]",
                               src, chain))
        for peer in ("objectomaly", "maskomaly"):
            if peer in variants and src in ps.get(peer, sources):
                out.append(Variant(f"{peer}@{src}", f"{peer} [{src}]", src, (peer,)))
    if "ugains" in variants and ps.get("ugains", True):
        out.append(Variant("ugains", "ugains [SAM]", None, ("ugains",)))
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

    def __init__(self, chain: Sequence[Variant], suppress_ids: Sequence[int] | None = None, *,
                 sam: Any = None) -> None:
        self.chain = list(chain)
        self.sam = sam
        ids = CITYSCAPES_SUPPRESS_IDS if suppress_ids is None else tuple(suppress_ids)
        self.pipelines: dict[str, Pipeline] = {}
        for v in self.chain:  # a source's last chain variant has all its steps
            if v.source is not None and v.steps[0] not in PEERS:
                self.pipelines[v.source] = Pipeline(
                    fuse="csl2" in v.steps, refine="refine" in v.steps, offsets="offsets" in v.steps,
                    suppress_ids=ids,
                )
            elif v.source is not None and v.source not in self.pipelines:  # a peer alone: labels only
                self.pipelines[v.source] = Pipeline(fuse=False, refine=False, offsets=False, suppress_ids=ids)
        if any(v.steps == ("ugains",) for v in self.chain) and sam is None:
            raise BenchError("variant 'ugains' needs SAM weights (--sam-checkpoint PATH); none were given")

    def _peer(self, v: Variant, anomaly: torch.Tensor, stages: dict, props_by_src: dict, images: Any) -> torch.Tensor:
        peer = v.steps[0]
        if peer == "ugains":
            if images is None:
                raise BenchError("variant 'ugains' needs the batch's images")
            from posthoc.adapters.proposals_sam import sam_point_predictor

            return peer_ops.ugains(anomaly, sam_point_predictor(self.sam, images))
        st = stages[v.source]
        if peer == "objectomaly":
            labels = st.get("components", st["labels"])
            return peer_ops.objectomaly(anomaly, torch.as_tensor(labels).to(anomaly.device))
        props = props_by_src[v.source]
        hw = tuple(anomaly.shape[-2:])
        if props.mask_logits is not None and props.class_logits is not None:
            mp = torch.sigmoid(torch.as_tensor(props.mask_logits).float())
            cp = torch.as_tensor(props.class_logits).float().softmax(-1)
        elif props.region_scores is not None and props.validity is not None:
            mp = torch.as_tensor(props.region_scores).float()
            val = torch.as_tensor(props.validity).float()
            cp = torch.stack([val, 1 - val], -1)
        else:
            raise BenchError(f"variant 'maskomaly' needs raw masks; proposal source {v.source!r} gave none")
        return peer_ops.maskomaly(mp, cp, size=hw).to(anomaly.device)

    def __call__(self, anomaly: torch.Tensor, t_out: Any, props_by_src: dict, timer: Any = None,
                 images: Any = None) -> dict:
        """All variant maps (B,1,H,W) float32 of one batch, keyed by :attr:`Variant.key`
        (``images``: the batch, (B,H,W,3) uint8, needed by ``ugains``)."""
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
            if v.steps and v.steps[0] in PEERS:
                with timer(f"peer:{v.steps[0]}") if timer is not None else contextlib.nullcontext():
                    out = self._peer(v, anomaly, stages, props_by_src, images)
            elif v.source is None:  # TeacherOutput already checked the teacher's range when it was built
                maps[v.key] = anomaly
                continue
            else:
                out = stages[v.source][STAGE_OUTPUTS[v.steps[-1]]]
            if tuple(out.shape) != tuple(anomaly.shape):
                raise ShapeError(f"variant {v.key} produced shape {tuple(out.shape)}; expected {tuple(anomaly.shape)}")
            # no range check here: the teacher map was checked when its TeacherOutput was built, and
            # every stage keeps [0,1] by construction (fuse: a product of region means and values
            # in [0,1]; refine: anomaly * (1 - R), R in {0,1}; offset_resample: a clamped convex blend)
            maps[v.key] = out if out.dtype == torch.float32 else out.float()
        return maps
