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
from typing import Any, Literal, overload

import numpy as np
import torch

from . import kernels
from .errors import DTypeError, NonFiniteError, ShapeError, ValueRangeError
from .types import Array, ArrayT
from .validation import (
    as_label_map,
    as_scores_4d,
    check_device,
    check_finite,
    finite_range,
    masks_to_labels,  # noqa: F401 - re-exported: it used to live here
    restore,
    shape_str,
)

__all__ = ["NO_OBJECT_LOGIT", "fuse", "region_class_logits", "region_means"]

logger = logging.getLogger(__name__)

#: logit given to the "no object" column by :func:`region_class_logits`
NO_OBJECT_LOGIT = -1e4

_NORMALIZE = ("auto", "softmax", "sigmoid", "none")
#: value_range that checks finiteness only (NaN and +-Inf fail it)
_FINITE = (float("-inf"), float("inf"))


# ----------------------------------------------------------------------------- helpers


def _used_as_is_error(normalize: str, C: int, detail: str) -> ValueRangeError:
    """The error for scores used as is (no normalization) that are not probabilities."""
    hint = "normalize='sigmoid' for logits" if C == 1 else "normalize='softmax' for logits"
    return ValueRangeError(
        f"model_logits used as is (normalize={normalize!r}, C={C}) must be probabilities in [0,1]; "
        f"{detail} (use {hint})"
    )


def _normalize(x: torch.Tensor, normalize: str, name: str) -> torch.Tensor:
    """Apply the normalization choice to (B,C,H,W) float32 scores (never in place)."""
    if normalize not in _NORMALIZE:
        raise ValueRangeError(f"normalize must be one of {_NORMALIZE}; got {normalize!r}")
    C = x.shape[1]
    mode = normalize
    if mode == "auto":
        mode = "softmax" if C > 1 else "none"
    if mode == "none":
        # the input must already be a probability (CSL Eq. 3 is defined on scores in [0,1])
        r = finite_range(x, name)
        if r is not None and (r[0] < 0.0 or r[1] > 1.0):
            raise _used_as_is_error(normalize, C, f"got values in [{r[0]:g},{r[1]:g}]")
        return x
    check_finite(x, name)
    if mode == "softmax":
        return torch.softmax(x, dim=1)
    return torch.sigmoid(x)


# ----------------------------------------------------------------------------- public ops


@torch.no_grad()
def fuse(
    model_logits: ArrayT, proposals: Any, *, normalize: str = "auto", backend: str = "auto", out: Any = None
) -> ArrayT:
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

    An anomaly probability (C=1) on a 1x4 image: region 0 has mean 0.75, region 1 mean
    0.25, and the unassigned pixel keeps its score:

    >>> import torch
    >>> D = torch.tensor([[[0.5, 1.0, 0.25, 0.75]]])  # (C,H,W)
    >>> fuse(D, torch.tensor([[0, 0, 1, -1]])).tolist()
    [[[0.375, 0.75, 0.0625, 0.75]]]
    """
    scores, was_numpy, shape = as_scores_4d(model_logits, "model_logits", check=False)  # checked below
    labels, n = as_label_map(
        proposals, scores, len(shape) == 4, scores_name="model_logits", return_n=True, arg_name="proposals"
    )
    out4 = None if out is None else _out_view(out, was_numpy, shape, scores)
    if normalize == "none" or (normalize == "auto" and scores.shape[1] == 1):
        # used as is: the [0,1] check is fused into the kernel's first pass (no extra read of D)
        try:
            res = kernels.region_fuse(
                scores.contiguous(), labels.contiguous(), n, backend=backend,
                value_range=(0.0, 1.0), name="model_logits", out=out4, labels_checked=True,
            )
        except NonFiniteError:
            raise
        except ValueRangeError as e:
            raise _used_as_is_error(normalize, scores.shape[1], str(e).split("; ", 1)[-1]) from None
    else:
        probs = _normalize(scores, normalize, "model_logits")
        res = kernels.region_fuse(
            probs.contiguous(), labels.contiguous(), n, backend=backend, out=out4, labels_checked=True
        )
    if out is not None:
        return out
    return restore(res.reshape(shape), was_numpy)


def _out_view(out: Any, was_numpy: bool, shape: tuple, scores: torch.Tensor) -> torch.Tensor:
    """Check a caller's ``out=`` and return a (B,C,H,W) float32 tensor sharing its memory."""
    kind = "a numpy array" if was_numpy else "a torch tensor"
    if was_numpy != isinstance(out, np.ndarray) or not isinstance(out, (np.ndarray, torch.Tensor)):
        raise DTypeError(f"out must be {kind} like model_logits; got {type(out).__name__}")
    t: torch.Tensor = torch.from_numpy(out) if isinstance(out, np.ndarray) else out
    if t.dtype != torch.float32:
        raise DTypeError(f"out must be float32; got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ShapeError(f"out must have the shape of model_logits {shape_str(shape)}; got {shape_str(t.shape)}")
    if not t.is_contiguous():
        raise ShapeError("out must be C-contiguous (it is written in place)")
    check_device(t, "out", scores, "model_logits")
    return t.view(scores.shape)


def _region_sums(values: Any, labels: Any, vname: str, num_regions: int | None, backend: str):
    """Checked inputs -> (sums (B,N,C), counts (B,N), was_numpy, batched); the labels are read once to check them."""
    vals, was_numpy, shape = as_scores_4d(values, vname, check=False)  # finiteness: fused into the reduction
    batched = len(shape) == 4
    lab, n_lab = as_label_map(labels, vals, batched, scores_name=vname, return_n=True)
    n = _num_regions(n_lab, num_regions)
    sums, counts = kernels.region_sums(vals.contiguous(), lab.contiguous(), n, backend=backend, labels_checked=True,
                                       value_range=_FINITE, name=vname)
    return sums, counts, was_numpy, batched


@torch.no_grad()
@overload
def region_means(
    values: ArrayT, labels: Any, *, num_regions: int | None = ..., return_counts: Literal[False] = ...,
    backend: str = ...,
) -> ArrayT: ...
@overload
def region_means(
    values: ArrayT, labels: Any, *, num_regions: int | None = ..., return_counts: Literal[True], backend: str = ...
) -> tuple[ArrayT, ArrayT]: ...
def region_means(
    values: Array,
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

    >>> import torch
    >>> means, counts = region_means(torch.tensor([[1.0, 2.0, 4.0, 8.0]]), torch.tensor([[0, 0, 1, -1]]),
    ...                              num_regions=3, return_counts=True)
    >>> means.tolist(), counts.tolist()
    ([[1.5], [4.0], [0.0]], [2, 1, 0])
    """
    sums, counts, was_numpy, batched = _region_sums(values, labels, "values", num_regions, backend)
    means = sums / counts.clamp_min(1).unsqueeze(-1).to(sums.dtype)
    if not batched:
        means, counts = means[0], counts[0]
    if return_counts:
        return restore(means, was_numpy), restore(counts, was_numpy)
    return restore(means, was_numpy)


def _num_regions(n_lab: int, num_regions: int | None) -> int:
    """N: ``num_regions`` checked against the labels' max + 1 (``n_lab``), or ``n_lab``."""
    if num_regions is None:
        return max(n_lab, 0)
    if not isinstance(num_regions, (int,)) or isinstance(num_regions, bool) or num_regions < 0:
        raise ValueRangeError(f"num_regions must be a non-negative int; got {num_regions!r}")
    if num_regions < n_lab:
        raise ValueRangeError(f"num_regions must exceed the largest label ({n_lab - 1}); got {num_regions}")
    return int(num_regions)


@torch.no_grad()
def region_class_logits(
    semantic_logits: ArrayT, labels: Any, num_regions: int | None = None, *, backend: str = "auto"
) -> ArrayT:
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

    Two classes on a 1x3 image; region 2 holds no pixel and is "no object":

    >>> import torch
    >>> L = torch.tensor([[[2.0, 0.0, 4.0]], [[0.0, 2.0, -4.0]]])  # (K,H,W)
    >>> region_class_logits(L, torch.tensor([[0, 0, 1]]), num_regions=3).tolist()
    [[1.0, 1.0, -10000.0], [4.0, -4.0, -10000.0], [-10000.0, -10000.0, 0.0]]
    """
    sums, counts, was_numpy, batched = _region_sums(semantic_logits, labels, "semantic_logits", num_regions, backend)
    means = sums / counts.clamp_min(1).unsqueeze(-1).to(sums.dtype)
    empty = (counts == 0).unsqueeze(-1)
    means = torch.where(empty, torch.full_like(means, NO_OBJECT_LOGIT), means)
    void = torch.where(empty, torch.zeros_like(means[..., :1]), torch.full_like(means[..., :1], NO_OBJECT_LOGIT))
    out = torch.cat([means, void], dim=-1)
    if not batched:
        out = out[0]
    return restore(out, was_numpy)



