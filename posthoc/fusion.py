"""Structure-constrained fusion (CSL scheme 2, Eq. 3) and per-region statistics.

``fuse`` multiplies every pixel's normalized score by the mean of that score over
the pixel's region:

    H_c(p) = ( 1/|R(p)| * sum_{q in R(p)} D_c(q) ) * D_c(p)          (CSL Eq. 3)

where D is the teacher's normalized per-pixel score, R(p) the region (proposal)
holding pixel p, and pixels outside every region (label -1) keep D_c(p).

Reference: Zhang et al., "Structure-constrained learning ..." (CSL), AAAI 2024,
scheme 2, Eq. 3. The heavy lifting happens in :func:`posthoc.kernels.region_fuse`
(batched: one reduction pass, one gather pass).
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from . import kernels
from .errors import DeviceError, DTypeError, NonFiniteError, OverlapError, ShapeError, ValueRangeError
from .types import Proposals
from .validation import (
    as_float32,
    as_torch,
    check_finite,
    check_float,
    check_int,
    check_tensor_type,
    restore,
    shape_str,
)

__all__ = ["NO_OBJECT_LOGIT", "fuse", "region_class_logits", "region_means"]

logger = logging.getLogger(__name__)

#: logit given to the "no object" column by :func:`region_class_logits`
NO_OBJECT_LOGIT = -1e4

_NORMALIZE = ("auto", "softmax", "sigmoid", "none")


# ----------------------------------------------------------------------------- helpers
# (shared by the other CORE modules; private, not part of the public API)


def _to_device(x: torch.Tensor, was_numpy: bool, ref: torch.Tensor, name: str, ref_name: str) -> torch.Tensor:
    """Move numpy-born tensors to ``ref``'s device; refuse torch tensors on another device."""
    if x.device == ref.device:
        return x
    if was_numpy:
        return x.to(ref.device)
    raise DeviceError(f"{name} must be on the device of {ref_name} ({ref.device}); got {x.device}")


def _finite_range(x: torch.Tensor, name: str) -> tuple[float, float] | None:
    """(min, max) of a float tensor in one pass, raising NonFiniteError on NaN/Inf.

    ``torch.aminmax`` propagates NaN and exposes Inf, and is ~50x faster on CPU than
    ``torch.isfinite(x).all()``; the slow counting check only runs to word the error.
    Returns None for non-float or empty tensors.
    """
    if not x.is_floating_point() or x.numel() == 0:
        return None
    mn_t, mx_t = torch.aminmax(x)
    mn, mx = float(mn_t), float(mx_t)
    if not (math.isfinite(mn) and math.isfinite(mx)):
        check_finite(x, name)  # raises with NaN / Inf counts
        raise NonFiniteError(f"{name} must be finite; got values in [{mn:g},{mx:g}]")  # pragma: no cover
    return mn, mx


def _check_finite(x: torch.Tensor, name: str) -> None:
    """Fast :func:`posthoc.validation.check_finite` (same error type and message)."""
    _finite_range(x, name)


def _check_range(x: torch.Tensor, name: str, lo: float, hi: float) -> None:
    """Fast :func:`posthoc.validation.check_range` (same error types and message)."""
    r = _finite_range(x, name)
    if r is not None and (r[0] < lo or r[1] > hi):
        raise ValueRangeError(f"{name} must lie in [{lo:g},{hi:g}]; got values in [{r[0]:g},{r[1]:g}]")


def _int_labels(lab: torch.Tensor) -> torch.Tensor:
    """int32/int64 pass through; other integer dtypes (uint8, int16, ...) become int64 (a copy)."""
    if lab.dtype in (torch.int32, torch.int64):
        return lab
    return lab.long()


def _scores_4d(x: Any, name: str, check: bool = True) -> tuple[torch.Tensor, bool, tuple]:
    """Convert (B,C,H,W)/(C,H,W)/(H,W) float scores to a finite float32 (B,C,H,W) view or copy.

    Returns ``(scores4d, was_numpy, original_shape)``.
    """
    t, was_numpy = as_torch(x, name)
    check_float(t, name)
    if t.ndim not in (2, 3, 4):
        raise ShapeError(f"{name} must be (B,C,H,W), (C,H,W) or (H,W); got {t.ndim} axes with shape {shape_str(t.shape)}")
    shape = tuple(t.shape)
    t = as_float32(t)
    if check:
        _check_finite(t, name)
    if t.ndim == 2:
        t = t.reshape(1, 1, *shape)
    elif t.ndim == 3:
        t = t.unsqueeze(0)
    return t, was_numpy, shape


def _labels_for(
    proposals: Any,
    scores: torch.Tensor,
    batched: bool,
    scores_name: str = "model_logits",
    return_n: bool = False,
    arg_name: str = "proposals",
) -> Any:
    """Turn a label map, non-overlapping boolean masks or a Proposals into (B,H,W) int labels.

    ``scores`` is the (B,C,H,W) tensor the labels must match; ``batched`` says whether the
    caller gave a batch axis (then labels must be (B,H,W) / masks (B,N,H,W)); ``arg_name`` is
    the caller's name of the argument, used in error messages.
    """
    if isinstance(proposals, Proposals):
        name = f"{arg_name}.labels"
        lab, was_np = as_torch(proposals.labels, name)
    else:
        check_tensor_type(proposals, arg_name)
        lab, was_np = as_torch(proposals, arg_name)
        name = arg_name
    lab = _to_device(lab, was_np, scores, name, scores_name)
    B, _, H, W = scores.shape
    want_lab = f"(B,H,W)=({B},{H},{W})" if batched else f"(H,W)=({H},{W})"
    if lab.dtype == torch.bool:
        want = f"(B,N,H,W) with B={B}, H={H}, W={W}" if batched else f"(N,H,W) with H={H}, W={W}"
        if (batched and lab.ndim != 4) or (not batched and lab.ndim != 3):
            raise ShapeError(f"boolean {name} masks must be {want}; got shape {shape_str(lab.shape)}")
        masks = lab if batched else lab.unsqueeze(0)
        if masks.shape[0] != B or masks.shape[-2:] != (H, W):
            axis = "batch axis (0)" if masks.shape[0] != B else "spatial axes (H,W)"
            raise ShapeError(
                f"boolean {name} masks must be {want} matching {scores_name}; got {shape_str(lab.shape)} "
                f"(mismatch in the {axis})"
            )
        lab = masks_to_labels(masks, name)
        return (lab, masks.shape[1]) if return_n else lab
    check_int(lab, name)
    if batched:
        if lab.ndim != 3:
            raise ShapeError(f"{name} must be an integer label map {want_lab}; got shape {shape_str(lab.shape)}")
    else:
        if lab.ndim == 3 and lab.shape[0] == 1:
            pass
        elif lab.ndim == 2:
            lab = lab.unsqueeze(0)
        else:
            raise ShapeError(f"{name} must be an integer label map {want_lab}; got shape {shape_str(lab.shape)}")
    if lab.shape[0] != B or lab.shape[-2:] != (H, W):
        axis = "batch axis (0)" if lab.shape[0] != B else "spatial axes (H,W)"
        raise ShapeError(
            f"{name} must be {want_lab} matching {scores_name} {shape_str(scores.shape)}; "
            f"got {shape_str(lab.shape)} (mismatch in the {axis})"
        )
    n = _check_labels_fast(lab, name)
    lab = _int_labels(lab)
    return (lab, n) if return_n else lab


def _check_labels_fast(lab: torch.Tensor, name: str) -> int:
    """:func:`posthoc.validation.check_labels` in one ``aminmax`` pass; returns max label + 1."""
    if lab.numel() == 0:
        return 0
    mn_t, mx_t = torch.aminmax(lab)
    mn, mx = int(mn_t), int(mx_t)
    if mn < -1:
        raise ValueRangeError(f"{name} must be >= -1 (-1 = unassigned); got minimum {mn}")
    return mx + 1


def masks_to_labels(masks: torch.Tensor, name: str = "masks") -> torch.Tensor:
    """(B,N,H,W) bool non-overlapping masks -> (B,H,W) int64 labels, -1 where no mask is set.

    Raises:
        OverlapError: a pixel is covered by two or more masks.
    """
    B, N, H, W = masks.shape
    if N == 0:
        return torch.full((B, H, W), -1, dtype=torch.int64, device=masks.device)
    cover = masks.sum(dim=1, dtype=torch.int32)
    n_over = int((cover > 1).sum())
    if n_over:
        raise OverlapError(
            f"boolean {name} masks must not overlap (a partition of the image, -1 where uncovered); "
            f"got {n_over} pixels covered by 2 or more masks. For overlapping soft proposals use "
            f"posthoc.soft_assign(region_scores, validity) (CSL Eq. 2) to obtain a label map"
        )
    idx = masks.to(torch.uint8).argmax(dim=1)
    return torch.where(cover > 0, idx, torch.full_like(idx, -1)).long()


def _normalize(x: torch.Tensor, normalize: str, name: str) -> torch.Tensor:
    """Apply the normalization choice to (B,C,H,W) float32 scores (never in place)."""
    if normalize not in _NORMALIZE:
        raise ValueRangeError(f"normalize must be one of {_NORMALIZE}; got {normalize!r}")
    C = x.shape[1]
    mode = normalize
    if mode == "auto":
        mode = "softmax" if C > 1 else "none"
    if mode != "none":
        _check_finite(x, name)
    if mode == "softmax":
        return torch.softmax(x, dim=1)
    if mode == "sigmoid":
        return torch.sigmoid(x)
    # "none": the input must already be a probability (CSL Eq. 3 is defined on scores in [0,1])
    r = _finite_range(x, name)
    if r is not None:
        mn, mx = r
        if mn < 0.0 or mx > 1.0:
            hint = "normalize='sigmoid' for logits" if C == 1 else "normalize='softmax' for logits"
            raise ValueRangeError(
                f"{name} used as is (normalize={normalize!r}, C={C}) must be probabilities in [0,1]; "
                f"got values in [{mn:g},{mx:g}] (use {hint})"
            )
    return x


# ----------------------------------------------------------------------------- public ops


@torch.inference_mode()
def fuse(
    model_logits: Any, proposals: Any, *, normalize: str = "auto", backend: str = "auto", out: Any = None
) -> Any:
    """Structure-constrained fusion of per-pixel scores with region proposals (CSL Eq. 3).

    ``H_c(p) = mean_{q in R(p)} D_c(q) * D_c(p)`` where D is the normalized input and R(p)
    the region of pixel p; pixels with label -1 keep ``D_c(p)``. With no regions the output
    is D. Follows Zhang et al. (CSL, AAAI 2024), scheme 2, Eq. 3.

    Args:
        model_logits: per-pixel scores, (B,C,H,W), (C,H,W) or (H,W), float (float16/bfloat16
            accepted, computed in float32), finite. Logits (any range) when C>1; an anomaly
            probability in [0,1] when C==1 (with ``normalize="auto"``).
        proposals: one of
            * an integer label map (B,H,W) — or (H,W) for unbatched input — with values
              in {-1, 0, ..., N-1}, -1 = unassigned;
            * boolean masks (B,N,H,W) — or (N,H,W) for unbatched input — that must not overlap;
            * a :class:`posthoc.Proposals` (its ``labels`` are used).
        normalize: ``"auto"`` (softmax over C when C>1, as is when C==1), ``"softmax"``,
            ``"sigmoid"`` or ``"none"`` (input already probabilities in [0,1]).
        backend: kernel backend passed to :func:`posthoc.kernels.region_fuse`.
        out: optional preallocated float32 result of the input's shape, kind (numpy/torch)
            and device, C-contiguous; it may be ``model_logits`` itself (in place). In a loop
            over frames it saves the page faults a fresh large output pays on every call.

    Returns:
        Fused scores with the input's shape, float32, values in [0,1]; numpy if
        ``model_logits`` was numpy, else a tensor on its device (``out`` when given).

    Raises:
        DTypeError: non-float scores, float labels, unsupported input types.
        ShapeError: wrong number of axes or mismatched batch/spatial axes (named).
        NonFiniteError: NaN/Inf in the scores.
        ValueRangeError: labels below -1, scores outside [0,1] with ``normalize="none"``
            (or ``"auto"`` with C==1), unknown ``normalize``.
        OverlapError: overlapping boolean masks (use :func:`posthoc.soft_assign`).
    """
    scores, was_numpy, shape = _scores_4d(model_logits, "model_logits", check=False)  # _normalize checks
    labels, n = _labels_for(proposals, scores, batched=len(shape) == 4, return_n=True)
    out4 = None if out is None else _out_view(out, was_numpy, shape, scores)
    if normalize == "none" or (normalize == "auto" and scores.shape[1] == 1):
        # used as is: the [0,1] check is fused into the kernel's first pass (no extra read of D)
        try:
            res = kernels.region_fuse(
                scores.contiguous(), labels.contiguous(), n, backend=backend,
                value_range=(0.0, 1.0), name="model_logits", out=out4,
            )
        except NonFiniteError:
            raise
        except ValueRangeError as e:
            C = scores.shape[1]
            hint = "normalize='sigmoid' for logits" if C == 1 else "normalize='softmax' for logits"
            detail = str(e).split("; ", 1)[-1]
            raise ValueRangeError(
                f"model_logits used as is (normalize={normalize!r}, C={C}) must be probabilities in [0,1]; "
                f"{detail} (use {hint})"
            ) from None
    else:
        probs = _normalize(scores, normalize, "model_logits")
        res = kernels.region_fuse(probs.contiguous(), labels.contiguous(), n, backend=backend, out=out4)
    if out is not None:
        return out
    return restore(res.reshape(shape), was_numpy)


def _out_view(out: Any, was_numpy: bool, shape: tuple, scores: torch.Tensor) -> torch.Tensor:
    """Check a caller's ``out=`` and return a (B,C,H,W) float32 tensor sharing its memory."""
    kind = "a numpy array" if was_numpy else "a torch tensor"
    if was_numpy != isinstance(out, np.ndarray) or not isinstance(out, (np.ndarray, torch.Tensor)):
        raise DTypeError(f"out must be {kind} like model_logits; got {type(out).__name__}")
    t = torch.from_numpy(out) if was_numpy else out
    if t.dtype != torch.float32:
        raise DTypeError(f"out must be float32; got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ShapeError(f"out must have the shape of model_logits {shape_str(shape)}; got {shape_str(t.shape)}")
    if not t.is_contiguous():
        raise ShapeError("out must be C-contiguous (it is written in place)")
    if t.device != scores.device:
        raise DeviceError(f"out must be on the device of model_logits ({scores.device}); got {t.device}")
    return t.view(scores.shape)


def _values_and_labels(values: Any, labels: Any, vname: str):
    vals, was_numpy, shape = _scores_4d(values, vname)
    lab = _labels_for(labels, vals, batched=len(shape) == 4, scores_name=vname, arg_name="labels")
    return vals, lab, was_numpy, len(shape) == 4


@torch.inference_mode()
def region_means(
    values: Any,
    labels: Any,
    *,
    num_regions: int | None = None,
    return_counts: bool = False,
    backend: str = "auto",
) -> Any:
    """Mean of ``values`` over each region of ``labels`` (the region term of CSL Eq. 3).

    Args:
        values: (B,C,H,W), (C,H,W) or (H,W) float, finite, any range.
        labels: (B,H,W) int label map (or (H,W) for unbatched values), -1 = unassigned
            (ignored), or boolean non-overlapping masks, or a :class:`posthoc.Proposals`.
        num_regions: N; default max label + 1 over the batch. Must be > max label.
        return_counts: also return the (B,N) int64 pixel counts.
        backend: kernel backend for :func:`posthoc.kernels.region_sums`.

    Returns:
        means (B,N,C) float32 — (N,C) for unbatched input — with 0 for regions that hold no
        pixel; plus counts (B,N) int64 (or (N,)) when ``return_counts``.
    """
    vals, lab, was_numpy, batched = _values_and_labels(values, labels, "values")
    n = _num_regions(lab, num_regions)
    sums, counts = kernels.region_sums(vals.contiguous(), lab.contiguous(), n, backend=backend)
    means = sums / counts.clamp_min(1).unsqueeze(-1).to(sums.dtype)
    if not batched:
        means, counts = means[0], counts[0]
    if return_counts:
        return restore(means, was_numpy), restore(counts, was_numpy)
    return restore(means, was_numpy)


def _num_regions(lab: torch.Tensor, num_regions: int | None) -> int:
    n_lab = int(lab.max()) + 1 if lab.numel() else 0
    if num_regions is None:
        return max(n_lab, 0)
    if not isinstance(num_regions, (int,)) or isinstance(num_regions, bool) or num_regions < 0:
        raise ValueRangeError(f"num_regions must be a non-negative int; got {num_regions!r}")
    if num_regions < n_lab:
        raise ValueRangeError(f"num_regions must exceed the largest label ({n_lab - 1}); got {num_regions}")
    return int(num_regions)


@torch.inference_mode()
def region_class_logits(
    semantic_logits: Any, labels: Any, num_regions: int | None = None, *, backend: str = "auto"
) -> Any:
    """Per-region class logits with a "no object" column, for post-hoc refinement.

    Gives proposals that carry no class logits (superpixels, SAM, mean-shift) the
    (B,N,K+1) class logits that Mask2Anomaly refinement (:func:`posthoc.refine`) expects:
    entry k < K is the mean of the teacher's semantic logit k over the region, and the
    last entry ("no object") is ``NO_OBJECT_LOGIT`` (-1e4), so softmax over the K+1 entries
    is the softmax of the region's mean logits. A region with no pixels gets -1e4 for
    every class and 0 for "no object" (it is classified as no object and never kept).

    Args:
        semantic_logits: (B,K,H,W) (or (K,H,W)) float semantic logits, any range, finite.
        labels: (B,H,W) (or (H,W)) int label map, -1 = unassigned, or a Proposals.
        num_regions: N; default max label + 1.
        backend: kernel backend for :func:`posthoc.kernels.region_sums`.

    Returns:
        (B,N,K+1) float32 logits ((N,K+1) for unbatched input), same kind/device as input.
    """
    vals, lab, was_numpy, batched = _values_and_labels(semantic_logits, labels, "semantic_logits")
    n = _num_regions(lab, num_regions)
    sums, counts = kernels.region_sums(vals.contiguous(), lab.contiguous(), n, backend=backend)
    means = sums / counts.clamp_min(1).unsqueeze(-1).to(sums.dtype)
    empty = (counts == 0).unsqueeze(-1)
    means = torch.where(empty, torch.full_like(means, NO_OBJECT_LOGIT), means)
    void = torch.where(empty, torch.zeros_like(means[..., :1]), torch.full_like(means[..., :1], NO_OBJECT_LOGIT))
    out = torch.cat([means, void], dim=-1)
    if not batched:
        out = out[0]
    return restore(out, was_numpy)



