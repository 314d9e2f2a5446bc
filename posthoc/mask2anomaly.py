"""Mask2Anomaly post-processing: anomaly refinement masks and unknown-instance mining.

Rai et al., "Unmasking Anomalies in Road-Scene Segmentation" (ICCV 2023) and its TPAMI
extension "Mask2Anomaly".

Refinement: the paper's formula and the official code disagree; posthoc follows the
OFFICIAL CODE (github.com/shyam671/Mask2Anomaly-Unmasking-Anomalies-in-Road-Scene-Segmentation,
``mask2former/maskformer_model.py::semantic_inference`` and
``anomaly_utils/anomaly_inference.py``):

* ``scores, labels = softmax(class_logits over K+1).max(-1)``; keep the masks with
  ``labels != no-object``, ``scores > 0.95`` and ``2 <= labels <= 10`` (Cityscapes trainIds
  of the stuff classes other than road and sidewalk), i.e. ``suppress_ids = range(2, 11)``;
* mask logits are upsampled bilinearly to the image size (as Mask2Former does before
  ``semantic_inference``) and the kept masks give ``scores * sigmoid(mask_logits)``;
* only if more than one mask is kept (``min_masks=2``), ``R = max_n(...) >= 0.5``, else R=0;
* the refined anomaly is ``anomaly * (1 - R)``.

Unknown-instance mining (TPAMI §6.3) has no public code; every ambiguous step is an
argument of :func:`mine_unknown_instances`, and its docstring states the default reading.

Masks may be given as float mask logits (B,N,h,w) or, for proposal sources without mask
logits, as an integer label map (B,H,W): region n is then the hard mask ``labels == n``,
i.e. ``sigmoid(mask logit)`` is 1 inside and 0 outside.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F

from .components import connected_components
from .errors import DTypeError, ShapeError, ValueRangeError
from .types import Array, ArrayT
from .validation import (
    as_float32,
    as_torch,
    check_finite,
    check_float,
    check_labels,
    check_ndim,
    check_size,
    restore,
    shape_str,
    to_device,
)

__all__ = [
    "CITYSCAPES_SUPPRESS_IDS",
    "CITYSCAPES_SUPPRESS_NAMES",
    "mine_unknown_instances",
    "refine",
    "refinement_mask",
    "suppress_ids_from_names",
]

logger = logging.getLogger(__name__)

#: Cityscapes trainIds 2..10 (building .. sky): the official code's ``(labels < 11) & (labels > 1)``
CITYSCAPES_SUPPRESS_IDS = tuple(range(2, 11))
#: the Cityscapes names of those trainIds (building .. sky), for teachers with other class orders
CITYSCAPES_SUPPRESS_NAMES = (
    "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation", "terrain", "sky",
)


def suppress_ids_from_names(
    class_names: Sequence[str] | None, suppress_names: Sequence[str] = CITYSCAPES_SUPPRESS_NAMES
) -> list[int] | None:
    """Refinement "suppress" class ids for a teacher, found by name in its semantic class list.

    The official code suppresses Cityscapes trainIds 2-10 (:data:`CITYSCAPES_SUPPRESS_IDS`);
    a teacher whose classes come in another order names them. Matching ignores case and
    surrounding spaces.

    Args:
        class_names: the teacher's K semantic class names, in logit order; None, an empty
            list, or generic names ``class_<i>`` (a model that gives no names) mean "unknown".
        suppress_names: the class names to suppress (default: the Cityscapes names of
            trainIds 2-10).

    Returns:
        The ids (positions in ``class_names``) to suppress, possibly empty (a warning is
        logged: refinement will then suppress nothing); None when the names are unknown,
        in which case callers use :data:`CITYSCAPES_SUPPRESS_IDS`.

    >>> suppress_ids_from_names(["road", "sidewalk", "building", "car", "sky"])
    [2, 4]
    >>> suppress_ids_from_names(["class_0", "class_1"]) is None
    True
    """
    names = [str(n) for n in (class_names or [])]
    if not names or all(re.fullmatch(r"class_\d+", n) for n in names):
        return None
    want = {str(n).strip().lower() for n in suppress_names}
    ids = [i for i, n in enumerate(names) if n.strip().lower() in want]
    if not ids:
        logger.warning(
            "refine: none of the teacher's classes %s is a suppress class %s; refinement will not suppress",
            names, tuple(suppress_names),
        )
    return ids


# ----------------------------------------------------------------------------- input handling


class _Masks:
    """Validated masks: either float logits (B,N,h,w) or an int label map (B,H,W)."""

    def __init__(self, t: torch.Tensor, is_labels: bool, n: int):
        self.t = t
        self.is_labels = is_labels
        self.n = n

    def hw(self) -> tuple[int, int]:
        return int(self.t.shape[-2]), int(self.t.shape[-1])


def _class_logits(class_logits: Any, batched_hint: bool | None = None) -> tuple[torch.Tensor, bool, bool]:
    c, was_numpy = as_torch(class_logits, "class_logits")
    check_float(c, "class_logits")
    check_ndim(c, "class_logits", (2, 3), "(B,N,K+1) or (N,K+1)")
    batched = c.ndim == 3
    c = as_float32(c if batched else c.unsqueeze(0))
    check_finite(c, "class_logits")
    if c.shape[-1] < 2:
        raise ShapeError(
            f"class_logits must be (B,N,K+1) with K >= 1 classes plus 'no object'; got {shape_str(c.shape)}"
        )
    return c, was_numpy, batched


def _masks(mask_logits: Any, cls: torch.Tensor, batched: bool) -> _Masks:
    m, m_np = as_torch(mask_logits, "mask_logits")
    m = to_device(m, m_np, cls, "mask_logits", "class_logits")
    B, N = cls.shape[:2]
    if m.is_floating_point():
        want = f"(B,N,h,w) with B={B}, N={N}" if batched else f"(N,h,w) with N={N}"
        if m.ndim != (4 if batched else 3):
            raise ShapeError(f"mask_logits must be {want} (matching class_logits); got shape {shape_str(m.shape)}")
        m4 = m if batched else m.unsqueeze(0)
        if m4.shape[0] != B:
            raise ShapeError(
                f"mask_logits must be {want}; got {shape_str(m.shape)} (mismatch in the batch axis (0))"
            )
        if m4.shape[1] != N:
            raise ShapeError(
                f"mask_logits must be {want}; got {shape_str(m.shape)} (mismatch in the region axis N)"
            )
        m4 = as_float32(m4)
        check_finite(m4, "mask_logits")
        return _Masks(m4, False, N)
    if m.dtype == torch.bool or m.is_complex():
        raise DTypeError(
            f"mask_logits must be float mask logits (B,N,h,w) or an integer label map (B,H,W); got dtype {m.dtype}"
        )
    want = f"(B,H,W) with B={B}" if batched else "(H,W)"
    if m.ndim != (3 if batched else 2):
        raise ShapeError(f"integer mask_logits (a label map) must be {want}; got shape {shape_str(m.shape)}")
    lab = m if batched else m.unsqueeze(0)
    if lab.shape[0] != B:
        raise ShapeError(f"label map must be {want}; got {shape_str(m.shape)} (mismatch in the batch axis (0))")
    n_lab = check_labels(lab, "mask_logits (label map)")
    if n_lab > N:
        raise ValueRangeError(
            f"label map values must be < N={N} (the number of class_logits rows); got maximum {n_lab - 1}"
        )
    return _Masks(lab.long(), True, N)


def _check_ids(ids: Any, name: str, K: int) -> torch.Tensor:
    try:
        vals = [int(i) for i in ids]
    except (TypeError, ValueError):
        raise ValueRangeError(f"{name} must be a sequence of class indices in [0,{K}); got {ids!r}") from None
    if any(isinstance(i, bool) or float(i) != int(i) for i in ids):
        raise ValueRangeError(f"{name} must hold integer class indices; got {ids!r}")
    bad = [v for v in vals if not 0 <= v < K]
    if bad:
        raise ValueRangeError(
            f"{name} must be class indices in [0,K)=[0,{K}) (K known classes, 'no object' excluded); got {bad}"
        )
    return torch.tensor(sorted(set(vals)), dtype=torch.long)


def _is_default_ids(ids: Any) -> bool:
    try:
        return tuple(int(i) for i in ids) == CITYSCAPES_SUPPRESS_IDS
    except (TypeError, ValueError):
        return False


def _check_prob(x: Any, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.floating)) or not 0.0 <= float(x) <= 1.0:
        raise ValueRangeError(f"{name} must be a number in [0,1]; got {x!r}")
    return float(x)


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1,k,h,w) logits -> (1,k,H,W), bilinear, align_corners=False (Mask2Former's sem_seg_postprocess)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _weighted_max(
    masks: _Masks, b: int, idx: torch.Tensor, weights: torch.Tensor, size: tuple[int, int], chunk: int
) -> torch.Tensor:
    """max over n in ``idx`` of weights[n] * sigmoid(mask_n) at ``size`` for image b -> (H,W); 0 if idx empty."""
    H, W = size
    dev = masks.t.device
    if masks.is_labels:
        w_full = torch.zeros(masks.n + 1, dtype=torch.float32, device=dev)  # last slot: label -1 -> 0
        w_full[idx] = weights.to(dev)
        return w_full[masks.t[b]]  # one gather: index -1 reads the last slot
    best = torch.zeros((H, W), dtype=torch.float32, device=dev)
    for i0 in range(0, int(idx.numel()), chunk):
        sel = idx[i0 : i0 + chunk]
        up = _up(masks.t[b : b + 1, sel.to(dev)], (H, W))[0]
        val = (weights[i0 : i0 + chunk].to(dev).view(-1, 1, 1) * torch.sigmoid(up)).amax(dim=0)
        best = torch.maximum(best, val)
    return best


def _output_size(masks: _Masks, size: Any) -> tuple[int, int]:
    if masks.is_labels:
        hw = masks.hw()
        if size is not None and check_size(size, hw) != hw:
            raise ShapeError(f"a label map gives masks at its own size {shape_str(hw)}; got size={tuple(size)}")
        return hw
    return check_size(size, masks.hw())


# ----------------------------------------------------------------------------- refinement


def _refinement_mask_4d(
    masks: _Masks,
    cls: torch.Tensor,
    suppress_ids: Sequence[int],
    score_threshold: float,
    mask_threshold: float,
    min_masks: int,
    size: tuple[int, int],
    chunk: int,
) -> torch.Tensor:
    B, _, K1 = cls.shape
    K = K1 - 1
    if _is_default_ids(suppress_ids) and K < 11:
        # the Cityscapes default on a model with fewer classes: keep the ids that exist
        logger.warning(
            "refinement_mask: default suppress_ids (Cityscapes trainIds 2..10) on a model with K=%d classes; "
            "using %s - pass suppress_ids for this model's classes", K, list(range(2, K)),
        )
        suppress_ids = tuple(range(2, K))
    ids = _check_ids(suppress_ids, "suppress_ids", K).to(cls.device)
    probs = torch.softmax(cls, dim=-1)
    scores, labels = probs.max(dim=-1)  # over K+1, as the official code does
    keep = (labels != K) & (scores > score_threshold) & torch.isin(labels, ids)
    H, W = size
    out = torch.zeros((B, 1, H, W), dtype=torch.float32, device=cls.device)
    for b in range(B):  # batch loop; regions are handled in chunks inside
        idx = keep[b].nonzero().flatten()
        if idx.numel() < min_masks:
            continue
        if masks.is_labels:  # threshold the per-region weights, then one gather into the output
            lut = torch.zeros(masks.n + 1, dtype=torch.float32, device=cls.device)  # last slot: label -1 -> 0
            lut[idx] = (scores[b, idx] >= mask_threshold).float()
            out[b, 0] = lut[masks.t[b]]  # index -1 reads the last slot
            continue
        m = _weighted_max(masks, b, idx, scores[b, idx], size, chunk)
        out[b, 0] = (m >= mask_threshold).float()
    return out


def _check_common(score_threshold, mask_threshold, min_masks, chunk_regions):
    st = _check_prob(score_threshold, "score_threshold")
    mt = _check_prob(mask_threshold, "mask_threshold")
    if isinstance(min_masks, bool) or not isinstance(min_masks, (int, np.integer)) or min_masks < 0:
        raise ValueRangeError(f"min_masks must be a non-negative int; got {min_masks!r}")
    if isinstance(chunk_regions, bool) or not isinstance(chunk_regions, int) or chunk_regions < 1:
        raise ValueRangeError(f"chunk_regions must be a positive int; got {chunk_regions!r}")
    return st, mt


@torch.no_grad()
def refinement_mask(
    mask_logits: Any,
    class_logits: ArrayT,
    suppress_ids: Sequence[int] = CITYSCAPES_SUPPRESS_IDS,
    score_threshold: float = 0.95,
    mask_threshold: float = 0.5,
    min_masks: int = 2,
    *,
    size: Any = None,
    chunk_regions: int = 16,
) -> ArrayT:
    """Mask2Anomaly refinement mask R (official-code reading, see the module docstring).

    A mask n is kept when its top class over the K+1 softmax is not "no object", lies in
    ``suppress_ids`` and has probability > ``score_threshold``. If at least ``min_masks``
    masks are kept, ``R(p) = [max_kept score_n * sigmoid(mask_logit_n(p)) >= mask_threshold]``;
    otherwise R = 0. Defaults = the official code: Cityscapes trainIds 2..10, 0.95, 0.5, 2.

    Args:
        mask_logits: (B,N,h,w) float mask logits, any range (upsampled bilinearly to
            ``size``), or an integer (B,H,W) label map whose regions are hard masks; for
            unbatched class logits (N,h,w) / (H,W).
        class_logits: (B,N,K+1) (or (N,K+1)) float class logits, any range, last entry = no object.
        suppress_ids: class indices in [0,K) whose masks suppress the anomaly. The default
            (Cityscapes trainIds 2..10) is cut to 2..K-1, with a warning, for models with
            fewer than 11 classes; explicit ids outside [0,K) are an error.
        score_threshold: class-probability threshold (strict ``>``).
        mask_threshold: threshold on ``score * sigmoid(mask logit)`` (``>=``).
        min_masks: minimum number of kept masks for R to be non-zero (official: 2).
        size: output (H,W); default the masks' resolution.
        chunk_regions: masks upsampled at once (bounds memory).

    Returns:
        (B,1,H,W) (or (1,H,W)) float32 mask with values in {0,1}; same kind/device as
        ``class_logits``.

    Three hard masks (a label map) on a 1x4 image, K=3 classes plus "no object": masks 0
    and 1 are confidently class 2 (suppressed), mask 2 is class 0 (not suppressed):

    >>> import torch
    >>> cls = torch.tensor([[0.0, 0.0, 10.0, 0.0], [0.0, 0.0, 10.0, 0.0], [10.0, 0.0, 0.0, 0.0]])
    >>> refinement_mask(torch.tensor([[0, 1, 2, -1]]), cls, suppress_ids=[2]).tolist()
    [[[1.0, 1.0, 0.0, 0.0]]]
    """
    cls, was_numpy, batched = _class_logits(class_logits)
    masks = _masks(mask_logits, cls, batched)
    st, mt = _check_common(score_threshold, mask_threshold, min_masks, chunk_regions)
    hw = _output_size(masks, size)
    out = _refinement_mask_4d(masks, cls, suppress_ids, st, mt, int(min_masks), hw, chunk_regions)
    return restore(out if batched else out[0], was_numpy)


@overload
def refine(
    anomaly: ArrayT, mask_logits: Any, class_logits: Any, suppress_ids: Sequence[int] = ...,
    score_threshold: float = ..., mask_threshold: float = ..., min_masks: int = ..., *,
    chunk_regions: int = ..., return_mask: Literal[False] = ...,
) -> ArrayT: ...
@overload
def refine(
    anomaly: ArrayT, mask_logits: Any, class_logits: Any, suppress_ids: Sequence[int] = ...,
    score_threshold: float = ..., mask_threshold: float = ..., min_masks: int = ..., *,
    chunk_regions: int = ..., return_mask: Literal[True],
) -> tuple[ArrayT, ArrayT]: ...
@torch.no_grad()
def refine(
    anomaly: Array,
    mask_logits: Any,
    class_logits: Any,
    suppress_ids: Sequence[int] = CITYSCAPES_SUPPRESS_IDS,
    score_threshold: float = 0.95,
    mask_threshold: float = 0.5,
    min_masks: int = 2,
    *,
    chunk_regions: int = 16,
    return_mask: bool = False,
) -> Any:
    """Mask2Anomaly refinement: ``anomaly * (1 - R)`` with R from :func:`refinement_mask`.

    Args:
        anomaly: (B,1,H,W), (B,H,W) or — with unbatched class logits — (H,W) float anomaly
            scores, finite (typically probabilities in [0,1], higher = more anomalous).
        mask_logits: (B,N,h,w) float mask logits (any resolution; upsampled bilinearly to
            (H,W)) or an integer (B,H,W) label map at the anomaly's resolution.
        class_logits: (B,N,K+1) float class logits (or (N,K+1) for (H,W) anomaly).
        suppress_ids, score_threshold, mask_threshold, min_masks, chunk_regions: see
            :func:`refinement_mask`.
        return_mask: also return R, the refinement mask of :func:`refinement_mask`
            ((B,1,H,W) float32 in {0,1}; (1,H,W) for unbatched input), as
            :class:`posthoc.Pipeline` records it.

    Returns:
        Refined anomaly, float32 with the shape of ``anomaly``; numpy in -> numpy out. With
        ``return_mask``, the pair ``(refined, R)``.

    The masks of :func:`refinement_mask`'s example suppress the anomaly on pixels 0 and 1:

    >>> import torch
    >>> cls = torch.tensor([[0.0, 0.0, 10.0, 0.0], [0.0, 0.0, 10.0, 0.0], [10.0, 0.0, 0.0, 0.0]])
    >>> a = torch.tensor([[0.5, 0.25, 0.75, 1.0]])
    >>> refine(a, torch.tensor([[0, 1, 2, -1]]), cls, suppress_ids=[2]).tolist()
    [[0.0, 0.0, 0.75, 1.0]]
    """
    a, was_numpy = as_torch(anomaly, "anomaly")
    check_float(a, "anomaly")
    cls, _, batched = _class_logits(class_logits)
    cls = to_device(cls, isinstance(class_logits, np.ndarray), a, "class_logits", "anomaly")
    shape = tuple(a.shape)
    B = cls.shape[0]
    if batched:
        if a.ndim == 4 and a.shape[1] == 1:
            a4 = a
        elif a.ndim == 3:
            a4 = a.unsqueeze(1)
        else:
            raise ShapeError(f"anomaly must be (B,1,H,W) or (B,H,W) with B={B}; got shape {shape_str(shape)}")
    else:
        if a.ndim != 2:
            raise ShapeError(
                f"anomaly must be (H,W) when class_logits is unbatched (N,K+1); got shape {shape_str(shape)}"
            )
        a4 = a.reshape(1, 1, *shape)
    if a4.shape[0] != B:
        raise ShapeError(
            f"anomaly must have batch size B={B} matching class_logits {shape_str(cls.shape)}; "
            f"got {shape_str(shape)} (mismatch in the batch axis (0))"
        )
    a4 = as_float32(a4)
    check_finite(a4, "anomaly")
    masks = _masks(mask_logits, cls, batched)
    hw = (int(a4.shape[-2]), int(a4.shape[-1]))
    if masks.is_labels and masks.hw() != hw:
        raise ShapeError(
            f"label map must be (B,H,W) matching anomaly {shape_str(shape)}; got {shape_str(masks.t.shape)} "
            f"(mismatch in the spatial axes (H,W))"
        )
    st, mt = _check_common(score_threshold, mask_threshold, min_masks, chunk_regions)
    r = _refinement_mask_4d(masks, cls, suppress_ids, st, mt, int(min_masks), hw, chunk_regions)
    out = a4 * (1.0 - r)
    refined = restore(out.reshape(shape), was_numpy)
    if return_mask:
        return refined, restore(r if batched else r[0], was_numpy)
    return refined


# ----------------------------------------------------------------------------- unknown instances


def _entropy_terms(probs: torch.Tensor, ids: torch.Tensor, mode: str) -> torch.Tensor:
    """(..., K+1) probabilities -> (...) entropy restricted to class set ``ids``."""
    p = probs[..., ids]
    if mode == "renormalized":
        p = p / p.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1)


@torch.no_grad()
def mine_unknown_instances(
    mask_logits: Any,
    class_logits: ArrayT,
    stuff_ids: Sequence[int],
    thing_ids: Sequence[int],
    threshold: float = 0.5,
    *,
    mask_threshold: float = 0.5,
    known: str = "not_void",
    overlap_with: str = "all",
    iou_threshold: float = 0.0,
    entropy_mode: str = "partial",
    weighting: str = "uniform",
    min_area: int = 0,
    connectivity: int = 8,
    size: Any = None,
    chunk_regions: int = 16,
) -> ArrayT:
    """Unknown-instance mining (Mask2Anomaly TPAMI §6.3; no public code — readings below).

    1. ``B(p) = 1 - max_{n known} s_n * sigmoid(M_n(p))`` where ``s_n`` is the top
       known-class probability of mask n: ``max_{k<K} softmax(C_n)_k`` (softmax over the
       K+1 entries, "no object" left out of the max). *Reading* (``known``): "known masks"
       are the masks whose argmax over K+1 is not "no object" (``"not_void"``, default) or
       all masks (``"all"``). No known mask gives B = 1.
    2. Connected components (``connectivity``) of ``B > threshold``; components below
       ``min_area`` pixels are dropped.
    3. IoU of every component with every binary mask ``sigmoid(M_n) > mask_threshold``.
       *Reading* (``overlap_with``): all masks (default) or only the known ones.
    4. For the masks overlapping the component (IoU > ``iou_threshold``, default 0 = any
       overlap), the entropies of softmax(C_n) over the stuff classes and over the thing
       classes are averaged. *Readings*: ``entropy_mode="partial"`` (default)
       ``E_S = -sum_{k in S} p_k log p_k`` on the K+1 softmax, or ``"renormalized"``
       (p restricted to S and renormalized); ``weighting="uniform"`` (default) or
       ``"iou"`` (IoU-weighted mean).
    5. The component is an unknown instance when ``E_stuff > E_thing`` (strict). A component
       that overlaps no mask is not one.

    Args:
        mask_logits: (B,N,h,w) float mask logits (any range) or an integer (B,H,W) label
            map of hard masks; (N,h,w)/(H,W) with unbatched class logits.
        class_logits: (B,N,K+1) (or (N,K+1)) float class logits, last entry = no object.
        stuff_ids, thing_ids: disjoint class indices in [0,K).
        threshold: threshold on B in step 2 (strict ``>``), in [0,1].
        mask_threshold, known, overlap_with, iou_threshold, entropy_mode, weighting,
        min_area, connectivity: see the steps above.
        size: output (H,W) for float masks (upsampled bilinearly); default their resolution.
        chunk_regions: masks processed at once.

    Returns:
        (B,H,W) (or (H,W)) int64 instance ids 0..M-1 per image in raster order of their
        first pixel, -1 elsewhere; same kind/device as ``class_logits``.

    Mask 0 is confidently class 0; mask 1 is unsure (top known probability 0.47, so B is
    0.53 there) and uncovered pixels have B = 1. The uncertain component (pixels 2-5)
    overlaps mask 1, whose stuff entropy (class 0) exceeds its thing entropy (class 1):

    >>> import torch
    >>> cls = torch.tensor([[8.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # (N,K+1), K=3
    >>> lab = torch.tensor([[0, 0, 1, 1, -1, -1]])
    >>> mine_unknown_instances(lab, cls, stuff_ids=[0], thing_ids=[1]).tolist()
    [[-1, -1, 0, 0, 0, 0]]
    >>> mine_unknown_instances(lab, cls, stuff_ids=[1], thing_ids=[0]).tolist()
    [[-1, -1, -1, -1, -1, -1]]
    """
    cls, was_numpy, batched = _class_logits(class_logits)
    masks = _masks(mask_logits, cls, batched)
    B, N, K1 = cls.shape
    K = K1 - 1
    s_ids = _check_ids(stuff_ids, "stuff_ids", K).to(cls.device)
    t_ids = _check_ids(thing_ids, "thing_ids", K).to(cls.device)
    both = set(s_ids.tolist()) & set(t_ids.tolist())
    if both:
        raise ValueRangeError(f"stuff_ids and thing_ids must be disjoint; got {sorted(both)} in both")
    thr = _check_prob(threshold, "threshold")
    mt = _check_prob(mask_threshold, "mask_threshold")
    choices = {
        "known": (known, ("not_void", "all")),
        "overlap_with": (overlap_with, ("all", "known")),
        "entropy_mode": (entropy_mode, ("partial", "renormalized")),
        "weighting": (weighting, ("uniform", "iou")),
    }
    for name, (val, allowed) in choices.items():
        if val not in allowed:
            raise ValueRangeError(f"{name} must be one of {allowed}; got {val!r}")
    iou_thr = _check_prob(iou_threshold, "iou_threshold")
    if isinstance(min_area, bool) or not isinstance(min_area, (int, np.integer)) or min_area < 0:
        raise ValueRangeError(f"min_area must be a non-negative int; got {min_area!r}")
    if connectivity not in (4, 8) or isinstance(connectivity, bool):
        raise ValueRangeError(f"connectivity must be 4 or 8; got {connectivity!r}")
    if isinstance(chunk_regions, bool) or not isinstance(chunk_regions, int) or chunk_regions < 1:
        raise ValueRangeError(f"chunk_regions must be a positive int; got {chunk_regions!r}")
    H, W = _output_size(masks, size)
    dev = cls.device

    probs = torch.softmax(cls, dim=-1)  # (B,N,K+1)
    s_known = probs[..., :K].amax(dim=-1)  # step 1: top known-class probability
    is_known = probs.argmax(dim=-1) != K if known == "not_void" else torch.ones_like(s_known, dtype=torch.bool)
    e_stuff = _entropy_terms(probs, s_ids, entropy_mode)  # (B,N)
    e_thing = _entropy_terms(probs, t_ids, entropy_mode)

    out = torch.full((B, H, W), -1, dtype=torch.int64, device=dev)
    for b in range(B):  # batch loop; masks are chunked inside
        kidx = is_known[b].nonzero().flatten()
        conf = _weighted_max(masks, b, kidx, s_known[b, kidx], (H, W), chunk_regions)
        unc = 1.0 - conf  # step 1
        cand = torch.where(unc > thr, 0, -1).to(torch.int64).cpu().numpy()[None]
        comp_np, counts = connected_components(cand, connectivity, int(min_area))  # step 2
        M = int(counts[0])
        if M == 0:
            continue
        comp = torch.from_numpy(comp_np[0]).to(dev)
        # step 3: intersections (M,N) and areas
        cflat = comp.reshape(-1)
        cvalid = cflat >= 0
        c_area = torch.bincount(cflat[cvalid], minlength=M).double()
        inter = torch.zeros((M, N), dtype=torch.float64, device=dev)
        m_area = torch.zeros(N, dtype=torch.float64, device=dev)
        if masks.is_labels:
            lab = masks.t[b].reshape(-1)
            m_area = torch.bincount(lab[lab >= 0], minlength=N).double()
            both_ok = cvalid & (lab >= 0)
            joint = cflat[both_ok] * N + lab[both_ok]
            inter = torch.bincount(joint, minlength=M * N).double().reshape(M, N)
        else:
            cidx = torch.where(cvalid, cflat, torch.full_like(cflat, M))
            for n0 in range(0, N, chunk_regions):
                n1 = min(N, n0 + chunk_regions)
                up = _up(masks.t[b : b + 1, n0:n1], (H, W))[0]
                binm = (torch.sigmoid(up) > mt).reshape(n1 - n0, -1).double()  # (n,HW)
                m_area[n0:n1] = binm.sum(dim=1)
                acc = torch.zeros((n1 - n0, M + 1), dtype=torch.float64, device=dev)
                acc.scatter_add_(1, cidx.unsqueeze(0).expand(n1 - n0, -1), binm)
                inter[:, n0:n1] = acc[:, :M].T
        union = c_area[:, None] + m_area[None, :] - inter
        iou = torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))
        overlap = iou > iou_thr
        if overlap_with == "known":
            overlap = overlap & is_known[b][None, :]
        # step 4: average entropies over overlapping masks
        wts = overlap.double() * (iou if weighting == "iou" else torch.ones_like(iou))
        wsum = wts.sum(dim=1)
        es = (wts * e_stuff[b].double()[None, :]).sum(dim=1) / wsum.clamp_min(1e-12)
        et = (wts * e_thing[b].double()[None, :]).sum(dim=1) / wsum.clamp_min(1e-12)
        unknown = (wsum > 0) & (es > et)  # step 5
        remap = torch.full((M + 1,), -1, dtype=torch.int64, device=dev)
        remap[:M][unknown] = torch.arange(int(unknown.sum()), dtype=torch.int64, device=dev)
        out[b] = remap[torch.where(comp >= 0, comp, torch.full_like(comp, M))]
    return restore(out if batched else out[0], was_numpy)
