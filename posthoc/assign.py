"""Assignment of soft region proposals to a label map.

* :func:`soft_assign` — CSL scheme 2, Eq. 2: ``label(p) = argmax_n R_n(p) * V_n`` (every
  pixel gets a region; ties go to the lowest n).
* :func:`hard_assign` — the Mask2Former / EntitySeg inference baseline: binarize each mask
  at ``mask_threshold``, keep regions with validity above ``validity_threshold`` and paint
  them in ascending validity (the most valid region ends on top); unpainted pixels are -1.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from . import kernels
from ._checks import (
    ShapeError,
    ValueRangeError,
    check_float,
    check_ndim,
    shape_str,
)
from ._tensor import as_float32, as_torch, restore
from .fusion import _check_range, _to_device

__all__ = ["hard_assign", "soft_assign"]

logger = logging.getLogger(__name__)


def _check_inputs(region_scores: Any, validity: Any):
    """Validate R (B,N,h,w)/(N,h,w) in [0,1] and V (B,N)/(N,) in [0,1]; return 4-D/2-D float32."""
    r, was_numpy = as_torch(region_scores, "region_scores")
    check_float(r, "region_scores")
    check_ndim(r, "region_scores", (3, 4), "(B,N,h,w) or (N,h,w)")
    batched = r.ndim == 4
    v, v_np = as_torch(validity, "validity")
    v = _to_device(v, v_np, r, "validity", "region_scores")
    check_float(v, "validity")
    want_v = "(B,N)" if batched else "(N,)"
    if v.ndim != (2 if batched else 1):
        raise ShapeError(
            f"validity must be {want_v} matching region_scores {shape_str(r.shape)}; got shape {shape_str(v.shape)}"
        )
    r4 = r if batched else r.unsqueeze(0)
    v2 = v if batched else v.unsqueeze(0)
    if v2.shape[0] != r4.shape[0]:
        raise ShapeError(
            f"validity must be {want_v} matching region_scores {shape_str(r.shape)}; "
            f"got {shape_str(v.shape)} (mismatch in the batch axis (0))"
        )
    if v2.shape[1] != r4.shape[1]:
        raise ShapeError(
            f"validity must be {want_v} matching region_scores {shape_str(r.shape)}; "
            f"got {shape_str(v.shape)} (mismatch in the region axis N)"
        )
    r4, v2 = as_float32(r4), as_float32(v2)
    _check_range(r4, "region_scores", 0.0, 1.0)
    _check_range(v2, "validity", 0.0, 1.0)
    return r4, v2, was_numpy, batched


def _check_size(size: Any, hw: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        return hw
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueRangeError(f"size must be a pair (H,W) of positive ints or None; got {size!r}") from None
    if h <= 0 or w <= 0 or any(isinstance(s, bool) for s in size) or any(float(s) != int(s) for s in size):
        raise ValueRangeError(f"size must be a pair (H,W) of positive ints or None; got {size!r}")
    return h, w


def _check_chunk(chunk_regions: Any) -> int:
    if isinstance(chunk_regions, bool) or not isinstance(chunk_regions, int) or chunk_regions < 1:
        raise ValueRangeError(f"chunk_regions must be a positive int; got {chunk_regions!r}")
    return chunk_regions


def _upsample(r: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of region scores (align_corners=False, as Mask2Former does for masks)."""
    if tuple(r.shape[-2:]) == tuple(size):
        return r
    if r.shape[-2] == 0 or r.shape[-1] == 0:
        raise ShapeError(f"region_scores must have a non-empty spatial size to be resized; got {shape_str(r.shape)}")
    return F.interpolate(r, size=size, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


@torch.inference_mode()
def soft_assign(
    region_scores: Any,
    validity: Any,
    *,
    size: Any = None,
    backend: str = "auto",
    chunk_regions: int = 16,
) -> Any:
    """Soft assignment of region proposals (CSL scheme 2, Eq. 2).

    ``label(p) = argmax_n R_n(p) * V_n``; ties go to the lowest n, so every pixel gets a
    region (the point of soft assignment; only N=0 leaves -1 everywhere). Zhang et al.
    (CSL, AAAI 2024), Eq. 2.

    When ``size`` differs from R's resolution, R (not R·V) is upsampled bilinearly
    (``align_corners=False``) first — processed ``chunk_regions`` regions at a time, with
    a running maximum, so memory stays at about B·chunk_regions·H·W floats.

    Args:
        region_scores: R, (B,N,h,w) or (N,h,w) float, probabilities in [0,1].
        validity: V, (B,N) or (N,) float, probabilities in [0,1].
        size: optional output (H,W); default R's (h,w).
        backend: kernel backend for :func:`posthoc.kernels.weighted_argmax`.
        chunk_regions: regions upsampled at once when ``size`` is given.

    Returns:
        (B,H,W) int64 labels in [0,N) ((H,W) for unbatched input); numpy in -> numpy out.

    Raises:
        DTypeError, ShapeError, NonFiniteError, ValueRangeError: bad input (see message).
    """
    r, v, was_numpy, batched = _check_inputs(region_scores, validity)
    B, N, h, w = r.shape
    H, W = _check_size(size, (h, w))
    chunk = _check_chunk(chunk_regions)
    if N == 0 or (H, W) == (h, w):
        lab = kernels.weighted_argmax(r.contiguous(), v.contiguous(), backend=backend)
        if lab.shape[-2:] != (H, W):  # N == 0 with a size: -1 everywhere at the output size
            lab = torch.full((B, H, W), -1, dtype=torch.int64, device=r.device)
    else:
        best_val = None
        lab = None
        for n0 in range(0, N, chunk):
            n1 = min(N, n0 + chunk)
            up = _upsample(r[:, n0:n1], (H, W)).contiguous()
            vc = v[:, n0:n1].contiguous()
            idx = kernels.weighted_argmax(up, vc, backend=backend)  # (B,H,W) local index
            val = torch.gather(up, 1, idx.unsqueeze(1)).squeeze(1) * torch.gather(vc, 1, idx.reshape(B, -1)).reshape(
                B, H, W
            )
            if best_val is None:
                best_val, lab = val, idx + n0
            else:
                better = val > best_val  # strict: earlier (lower n) chunks win ties
                best_val = torch.where(better, val, best_val)
                lab = torch.where(better, idx + n0, lab)
    lab = lab.long()
    if not batched:
        lab = lab[0]
    return restore(lab, was_numpy)


@torch.inference_mode()
def hard_assign(
    region_scores: Any,
    validity: Any,
    mask_threshold: float = 0.5,
    validity_threshold: float = 0.8,
    *,
    size: Any = None,
    chunk_regions: int = 16,
) -> Any:
    """Hard assignment: the Mask2Former / EntitySeg inference baseline.

    Each region's mask is ``R_n > mask_threshold``; only regions with
    ``V_n > validity_threshold`` are kept; kept masks are painted in ascending validity so
    the most valid region covering a pixel wins (equal validity: the lowest n wins, as in
    :func:`soft_assign`). Pixels no kept mask covers stay -1 — unlike soft assignment.

    Args:
        region_scores: R, (B,N,h,w) or (N,h,w) float, probabilities in [0,1].
        validity: V, (B,N) or (N,) float, probabilities in [0,1].
        mask_threshold: binarization threshold for R (strict ``>``), in [0,1].
        validity_threshold: keep threshold for V (strict ``>``), in [0,1].
        size: optional output (H,W); R is upsampled bilinearly before thresholding.
        chunk_regions: regions processed at once (bounds memory).

    Returns:
        (B,H,W) int64 labels in {-1, 0, ..., N-1} ((H,W) for unbatched input).
    """
    r, v, was_numpy, batched = _check_inputs(region_scores, validity)
    for name, t in (("mask_threshold", mask_threshold), ("validity_threshold", validity_threshold)):
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0.0 <= float(t) <= 1.0):
            raise ValueRangeError(f"{name} must be a number in [0,1]; got {t!r}")
    B, N, h, w = r.shape
    H, W = _check_size(size, (h, w))
    chunk = _check_chunk(chunk_regions)
    lab = torch.full((B, H, W), -1, dtype=torch.int64, device=r.device)
    best = torch.full((B, H, W), -1.0, dtype=torch.float32, device=r.device)
    keep = v > float(validity_threshold)  # (B,N)
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        if not bool(keep[:, n0:n1].any()):
            continue
        up = _upsample(r[:, n0:n1], (H, W))
        on = (up > float(mask_threshold)) & keep[:, n0:n1, None, None]
        key = torch.where(on, v[:, n0:n1, None, None].expand_as(up), torch.full_like(up, -1.0))
        val, idx = torch.max(key, dim=1)  # first maximal index -> lowest n among equal validity
        better = val > best
        best = torch.where(better, val, best)
        lab = torch.where(better, idx + n0, lab)
    if not batched:
        lab = lab[0]
    return restore(lab, was_numpy)
