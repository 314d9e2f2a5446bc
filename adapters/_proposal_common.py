"""Helpers the proposal sources share: optional imports, image layout, soft-proposal checks and
:func:`proposals_from_soft` (soft region scores -> finished :class:`posthoc.Proposals`)."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from posthoc.errors import MissingExtraError, ShapeError, ValueRangeError
from posthoc.types import Proposals
from posthoc.validation import check_finite, shape_str

from ._image import to_float_batch

log = logging.getLogger(__name__)

__all__ = ["proposals_from_soft"]

# ----------------------------------------------------------------------------- shared helpers


def _require(module: str, extra: str, what: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise MissingExtraError(
            f"{what} needs the optional package {module!r}, which is not installed; "
            f"run `pip install 'posthoc[{extra}]'`. Import error: {e}"
        ) from e


def _images(images: Any, device: Any = None) -> torch.Tensor:
    return to_float_batch(images, "images", device=device)


def _to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    """(B,3,H,W) float in [0,1] -> (B,H,W,3) uint8 numpy (exact inverse for uint8 input)."""
    return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _check_soft(region_scores: torch.Tensor, validity: torch.Tensor, src: str) -> None:
    if region_scores.ndim != 4:
        raise ShapeError(f"{src} region scores must be (B,N,h,w); got shape {shape_str(region_scores.shape)}")
    if validity.ndim != 2 or tuple(validity.shape) != tuple(region_scores.shape[:2]):
        raise ShapeError(
            f"{src} validity must be (B,N) = {shape_str(region_scores.shape[:2])} matching the region scores "
            f"{shape_str(region_scores.shape)}; got {shape_str(validity.shape)}"
        )
    for t, n in ((region_scores, "region scores"), (validity, "validity")):
        check_finite(t, f"{src} {n}")
        if t.numel() and (float(t.min()) < -1e-6 or float(t.max()) > 1.0 + 1e-6):  # float round-off is clamped
            raise ValueRangeError(
                f"{src} {n} must be probabilities in [0,1]; got values in [{float(t.min()):g},{float(t.max()):g}] "
                "(does the model output logits? set the activation to 'sigmoid')"
            )


def proposals_from_soft(
    region_scores: torch.Tensor,
    validity: torch.Tensor,
    size: Sequence[int],
    *,
    min_size: int = 0,
    meta: dict | None = None,
    class_logits: torch.Tensor | None = None,
    mask_logits: torch.Tensor | None = None,
) -> Proposals:
    """Build Proposals from soft region scores (CSL scheme 2).

    ``labels = posthoc.assign_labels(R, V, size=size, connectivity=8, min_size=min_size)``
    (soft assignment, then the mask split; ``Proposals.labels_final`` is True):
    every pixel goes to ``argmax_n R_n(p) * V_n`` (CSL Eq. 2, R upsampled bilinearly to
    ``size``), then each region is split into its 8-connected components (CSL mask split).

    Args:
        region_scores: (B,N,h,w) float32 probabilities in [0,1].
        validity: (B,N) float32 probabilities in [0,1].
        size: (H, W) of the labels (the image size).
        min_size: components smaller than this become -1 (0 keeps all, the CSL default).
        meta: source description stored in ``Proposals.meta``.
        class_logits: optional (B,N,K+1) logits (mask-transformer sources).
        mask_logits: optional (B,N,h,w) logits.

    Returns:
        :class:`posthoc.Proposals` with labels (B,H,W) int64.
    """
    from posthoc.assign import assign_labels

    _check_soft(region_scores, validity, (meta or {}).get("source", "proposal"))
    region_scores = region_scores.clamp(0.0, 1.0)  # new tensors: the caller's are never modified
    validity = validity.clamp(0.0, 1.0)
    H, W = int(size[0]), int(size[1])
    B, N = region_scores.shape[:2]
    if N == 0:
        labels = torch.full((B, H, W), -1, dtype=torch.int64, device=region_scores.device)
    else:
        labels = assign_labels(region_scores, validity, size=(H, W), connectivity=8, min_size=int(min_size))
    return Proposals(labels=labels, region_scores=region_scores, validity=validity, class_logits=class_logits,
                     mask_logits=mask_logits, meta=dict(meta or {}), labels_final=True)


def _pad_stack(items: Sequence[torch.Tensor], tail: tuple, fill: float = 0.0) -> torch.Tensor:
    """Stack per-image (N_b, *tail) tensors into (B, max N_b, *tail), padding with ``fill``."""
    n = max((t.shape[0] for t in items), default=0)
    out = torch.full((len(items), n, *tail), fill, dtype=torch.float32)
    for b, t in enumerate(items):
        out[b, : t.shape[0]] = t.float().cpu()
    return out


def _weights_entry(weights: Any, role: str, name: str) -> tuple[Any, dict]:
    """Normalize ``weights`` (path, or dict role->path with optional "meta") to (path, meta)."""
    if weights is None:
        return None, {}
    if isinstance(weights, Mapping):
        meta = dict(weights.get("meta") or {})
        if role not in weights:
            raise ValueRangeError(f"{name} weights dict must have a {role!r} entry; got keys {sorted(weights)}")
        return weights[role], meta
    return weights, {}
