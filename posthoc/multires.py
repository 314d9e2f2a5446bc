"""Multi-resolution refinement of the bottom-up paper: segment merging across network resolutions.

Dille et al., "A Bottom-Up Approach to Class-Agnostic Image Segmentation" (2024), §4.1: the
network is run at several input resolutions and mean-shift clusters each one; the final map is
built from the smallest resolution up. At each finer resolution, a new segment with a very high
overlap with an existing segment *replaces* it (the same segment with a sharper boundary), and a
segment contained inside an existing segment *subdivides* it (a smaller object is revealed).

The paper's supplement, which holds the exact rule, is not available; this is our reading
(every threshold is an argument):

1. Every level's labels are brought to the finest resolution (H,W) by nearest neighbour,
   ``src = floor(dst * h / H)``; all overlaps are pixel counts at (H,W).
2. Start from the coarsest level's segments. For each finer level, with the map ``C`` built so
   far and the level's segments ``n`` (each compared with the map *before* this level):

   * **replace**: if ``IoU(n, c) >= iou_threshold`` (default 0.8, "very high overlap") for an
     existing segment c, n's pixels take c's id. c's pixels outside n keep c's id unless another
     accepted segment of this level paints them, so the boundary moves where the finer level
     has a segment to move it to (when the finer level is a full partition whose segments are all
     accepted, the result is exactly that partition);
   * **subdivide**: else, if ``|n ∩ c| / |n| >= contain_threshold`` (default 0.9, "contained") for
     some c, n's pixels get a new id and c keeps the rest;
   * otherwise n straddles existing segments without matching any and is ignored: the coarser
     segmentation stands there. Segments smaller than ``min_size`` pixels (at (H,W)) are ignored.

   Both thresholds must be > 0.5, so at most one c can match a given n; the segments of one
   level are disjoint, so the order in which they are painted does not matter.
3. The final ids are made consecutive, 0..K-1, in the order of their first id (coarse ids first).

A mean-shift segment is a cluster and may be several blobs (two cars with one direction). With
``connectivity=8`` (or 4) every level's segments are first split into their connected components
(:func:`posthoc.split_components`, at the level's own resolution; nearest upsampling keeps
components apart and connected), so each blob is matched on its own; the default ``None`` merges
the clusters as they are.

:func:`merge_levels` is step 2 on label maps (any clustering); :func:`meanshift_multires` runs
:func:`posthoc.meanshift.meanshift_sphere` on every level first. tests/reference/meanshift.py has a
loop-over-segments version of the merge that the tests compare with.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np
import torch

from .errors import DTypeError, ShapeError, ValueRangeError
from .meanshift import SPHERE_ANGLE_DEG, meanshift_sphere
from .types import Array, ArrayT
from .validation import as_torch, restore, shape_str

log = logging.getLogger(__name__)

__all__ = ["merge_levels", "meanshift_multires"]


def _check_merge_settings(iou_threshold: float, contain_threshold: float, min_size: int,
                          connectivity: int | None = None) -> None:
    for name, v in (("iou_threshold", iou_threshold), ("contain_threshold", contain_threshold)):
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0.5 < v <= 1.0):
            raise ValueRangeError(
                f"{name} must be a number in (0.5,1] (above 1/2 a segment can match at most one other); got {v!r}")
    if not isinstance(min_size, (int, np.integer)) or isinstance(min_size, bool) or min_size < 0:
        raise ValueRangeError(f"min_size must be an integer >= 0 (pixels at the finest resolution); got {min_size!r}")
    if connectivity is not None and (isinstance(connectivity, bool) or connectivity not in (4, 8)):
        raise ValueRangeError(f"connectivity must be None, 4 or 8; got {connectivity!r}")


def _check_levels(maps: Any, name: str, ndim: int, layout: str) -> tuple[list[torch.Tensor], bool]:
    if isinstance(maps, (torch.Tensor, np.ndarray)) or not isinstance(maps, Sequence) or len(maps) == 0:
        raise ShapeError(
            f"{name} must be a non-empty list of {layout} maps, coarse to fine; got {type(maps).__name__}"
            + (f" of shape {shape_str(maps.shape)}" if hasattr(maps, "shape") else ""))
    out, was_np = [], False
    for i, m in enumerate(maps):
        t, was_np = as_torch(m, f"{name}[{i}]")
        if t.ndim != ndim:
            raise ShapeError(f"{name}[{i}] must be {layout}; got {t.ndim} axes with shape {shape_str(t.shape)}")
        out.append(t)
    B = out[0].shape[0]
    for i, t in enumerate(out):
        if t.shape[0] != B:
            raise ShapeError(f"{name}[{i}] must have batch size B={B} like {name}[0]; got {shape_str(t.shape)}")
        if i and (t.shape[-2] < out[i - 1].shape[-2] or t.shape[-1] < out[i - 1].shape[-1]):
            raise ShapeError(
                f"{name} must go from coarse to fine (non-decreasing h and w); {name}[{i}] is "
                f"{shape_str(t.shape[-2:])} after {shape_str(out[i - 1].shape[-2:])}")
    return out, was_np


def _upsample_nearest(lab: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(h,w) -> (H,W) by nearest neighbour, src = floor(dst * h / H) (exact integer arithmetic)."""
    h, w = lab.shape
    if (h, w) == (H, W):
        return lab
    rows = torch.arange(H, device=lab.device) * h // H
    cols = torch.arange(W, device=lab.device) * w // W
    return lab[rows][:, cols]


def _compact(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids of v (N,) int64 >= -1 -> (kept ids (K,) ascending, v mapped to 0..K-1 with -1 kept).

    A lookup table from one bincount when the ids are small (cluster ids are), else torch.unique.
    """
    top = int(v.max()) if v.numel() else -1
    if top < max(4 * v.numel(), 1 << 20):
        present = torch.bincount(v + 1, minlength=top + 2)[1:] > 0
        lut = torch.cumsum(present, 0) - 1
        lut = torch.cat([torch.full((1,), -1, dtype=torch.int64, device=v.device), lut])
        return present.nonzero().squeeze(1), lut[v + 1]
    valid = v >= 0
    ids, inv = torch.unique(v[valid], return_inverse=True)
    out = torch.full_like(v, -1)
    out[valid] = inv
    return ids, out


def _merge_image(levels: list[torch.Tensor], iou_threshold: float, contain_threshold: float,
                 min_size: int) -> torch.Tensor:
    """One image: labels (h_i,w_i) int64 per level, coarse to fine -> (H,W) int64, -1 kept.

    One contingency table per level: bincount of (c+1)*(Kn+1) + (n+1) over the pixels, with row and
    column 0 holding the unassigned (-1) pixels, so the areas are its row and column sums.
    """
    H, W = levels[-1].shape
    cur = _upsample_nearest(levels[0], H, W).reshape(-1)
    next_id = int(cur.max()) + 1 if cur.numel() else 0
    for lvl in levels[1:]:
        new = _upsample_nearest(lvl, H, W).reshape(-1)
        ci, ni = cur, new
        Kc, Kn = int(cur.max()) + 1, int(new.max()) + 1
        if Kn == 0:
            continue
        if (Kc + 1) * (Kn + 1) > 4 * cur.numel() + (1 << 20):  # sparse large ids: make the table small
            cu, ci = _compact(cur)
            nu, ni = _compact(new)
            Kc, Kn = cu.numel(), nu.numel()
        else:  # small ids (cluster ids) are their own index; ids with no pixel have area 0 and never match
            cu = torch.arange(Kc, device=cur.device)
        table = torch.bincount((ci + 1) * (Kn + 1) + (ni + 1), minlength=(Kc + 1) * (Kn + 1)).reshape(Kc + 1, Kn + 1)
        inter = table[1:, 1:]
        area_c = table[1:].sum(1)
        area_n = table[:, 1:].sum(0)
        target = torch.full((Kn + 1,), -1, dtype=torch.int64, device=cur.device)  # slot 0: unassigned pixels
        if Kc:
            union = area_c[:, None] + area_n[None, :] - inter
            iou = inter.double() / union.clamp_min(1).double()
            best_iou, best_c = iou.max(0)
            best_in = inter.max(0).values  # the container: at most one c holds more than half of n
            big = area_n >= max(min_size, 1)
            replace = big & (best_iou >= iou_threshold)
            inside = big & ~replace & (best_in.double() >= contain_threshold * area_n.double())
            k = int(inside.sum())
            tn = target[1:]
            tn[replace] = cu[best_c[replace]]
            tn[inside] = torch.arange(next_id, next_id + k, device=cur.device)
            next_id += k
            log.debug("merge_levels: %d replaced, %d subdivided, %d ignored of %d segments",
                      int(replace.sum()), k, Kn - int(replace.sum()) - k, Kn)
        paint = target[ni + 1]
        cur = torch.where(paint >= 0, paint, cur)
    return _compact(cur)[1].reshape(H, W)


@torch.no_grad()
def merge_levels(
    labels_by_level: Sequence[Any],
    *,
    iou_threshold: float = 0.8,
    contain_threshold: float = 0.9,
    min_size: int = 0,
    connectivity: int | None = None,
) -> Any:
    """Merge per-resolution segmentations from coarse to fine (Dille et al. §4.1, our reading; see the module).

    Args:
        labels_by_level: list of (B,h_i,w_i) integer label maps, coarsest first, h_i and w_i
            non-decreasing; values >= 0 are segment ids (any, not necessarily consecutive),
            -1 = no segment. numpy or torch, on any device.
        iou_threshold: a finer segment whose IoU with an existing one is at least this
            replaces it (keeps its id, takes its own sharper boundary); in (0.5,1], default 0.8.
        contain_threshold: a finer segment with at least this fraction of its pixels inside one
            existing segment (and no replacement) subdivides it (new id); in (0.5,1], default 0.9.
        min_size: finer segments with fewer pixels (at the finest resolution) are ignored.
        connectivity: None (default) compares the segments as given; 8 or 4 splits every
            level's segments into connected components first.

    Returns:
        (B,H,W) int64 at the finest level's resolution, ids 0..K_b-1 per image (-1 only where
        no level has a segment), same kind (numpy/torch) and device as the last level.

    Raises:
        ShapeError: not a non-empty list of (B,h,w) maps with one B, coarse to fine.
        DTypeError: a map is not integer. ValueRangeError: bad thresholds or ids below -1.

    >>> import torch
    >>> coarse = torch.tensor([[[0, 1]]])                  # (1,1,2): two segments
    >>> fine = torch.tensor([[[5, 5, 7, 8]]])              # (1,1,4): the right one holds two
    >>> merge_levels([coarse, fine], contain_threshold=0.9, iou_threshold=0.8).tolist()
    [[[0, 0, 1, 2]]]
    """
    maps, was_np = _check_levels(labels_by_level, "labels_by_level", 3, "(B,h,w)")
    _check_merge_settings(iou_threshold, contain_threshold, min_size, connectivity)
    dev = maps[-1].device
    for i, m in enumerate(maps):
        if m.dtype.is_floating_point or m.dtype.is_complex or m.dtype == torch.bool:
            raise DTypeError(f"labels_by_level[{i}] must be an integer label map; got dtype {m.dtype}")
        if m.numel() and int(m.min()) < -1:
            raise ValueRangeError(f"labels_by_level[{i}] ids must be >= -1 (-1 = no segment); got min {int(m.min())}")
    maps = [m.to(dev, torch.int64) for m in maps]
    if connectivity is not None:
        from .components import split_components

        maps = [split_components(m, connectivity=int(connectivity)) for m in maps]
    B, H, W = maps[-1].shape
    out = torch.empty((B, H, W), dtype=torch.int64, device=dev)
    if H * W:
        for b in range(B):
            out[b] = _merge_image([m[b] for m in maps], iou_threshold, contain_threshold, min_size)
    return restore(out, was_np)


@overload
def meanshift_multires(
    features_by_level: Sequence[ArrayT], bandwidth: float | None = ..., *,
    angle_deg: float = ..., projective: bool = ..., iou_threshold: float = ..., contain_threshold: float = ...,
    min_size: int = ..., connectivity: int | None = ..., n_seeds: int = ..., n_samples: int = ...,
    max_iter: int = ...,
    tol: float = ..., chunk_size: int = ..., seed: int = ...,
    return_levels: Literal[False] = ...,
) -> ArrayT: ...
@overload
def meanshift_multires(
    features_by_level: Sequence[ArrayT], bandwidth: float | None = ..., *,
    angle_deg: float = ..., projective: bool = ..., iou_threshold: float = ..., contain_threshold: float = ...,
    min_size: int = ..., connectivity: int | None = ..., n_seeds: int = ..., n_samples: int = ...,
    max_iter: int = ...,
    tol: float = ..., chunk_size: int = ..., seed: int = ...,
    return_levels: Literal[True],
) -> tuple[ArrayT, list[ArrayT]]: ...
@torch.no_grad()
def meanshift_multires(
    features_by_level: Sequence[Array],
    bandwidth: float | None = None,
    *,
    angle_deg: float = SPHERE_ANGLE_DEG,
    projective: bool = True,
    iou_threshold: float = 0.8,
    contain_threshold: float = 0.9,
    min_size: int = 0,
    connectivity: int | None = None,
    n_seeds: int = 256,
    n_samples: int = 20000,
    max_iter: int = 300,
    tol: float = 1e-3,
    chunk_size: int = 2048,
    seed: int = 0,
    return_levels: bool = False,
) -> Any:
    """Mean-shift every resolution of a network's embeddings and merge the segments coarse to fine (§4.1).

    Each level is clustered by :func:`posthoc.meanshift.meanshift_sphere` (same settings, the paper's
    projective sphere and 45 degree neighbourhood by default), then :func:`merge_levels` builds the
    final map from the smallest resolution up: replacement by a very-high-overlap segment
    (sharper boundary), subdivision by a contained segment (smaller object). See the module
    docstring for the reading of §4.1 and the meaning of the thresholds.

    Args:
        features_by_level: list of (B,F_i,h_i,w_i) float embeddings, coarsest first (e.g. the
            network run on the image at scales 0.5 and 1.0), one B, h_i and w_i non-decreasing;
            any finite range (L2-normalized over F_i). numpy or torch, on any device.
        bandwidth, angle_deg, projective, n_seeds, n_samples, max_iter, tol, chunk_size, seed:
            see :func:`posthoc.meanshift.meanshift_sphere`.
        iou_threshold, contain_threshold, min_size, connectivity: see :func:`merge_levels`.
        return_levels: also return the per-level cluster maps (list of (B,h_i,w_i) int64).

    Returns:
        (B,H,W) int64 labels at the finest level's resolution, ids 0..K_b-1 per image (every pixel
        is assigned), same kind/device as the last level; with ``return_levels`` a tuple
        ``(labels, [labels_i, ...])``.

    Raises:
        ShapeError, DTypeError, NonFiniteError, ValueRangeError: on bad input or settings.
    """
    feats, _ = _check_levels(features_by_level, "features_by_level", 4, "(B,F,h,w)")
    _check_merge_settings(iou_threshold, contain_threshold, min_size, connectivity)
    _, was_np = as_torch(features_by_level[-1], "features_by_level[-1]")
    per_level = [
        meanshift_sphere(f, bandwidth, angle_deg=angle_deg, projective=projective, n_seeds=n_seeds,
                         n_samples=n_samples, max_iter=max_iter, tol=tol, chunk_size=chunk_size, seed=seed)
        for f in feats
    ]
    dev = feats[-1].device
    labels = merge_levels([p.to(dev) for p in per_level], iou_threshold=iou_threshold,
                          contain_threshold=contain_threshold, min_size=min_size, connectivity=connectivity)
    out = restore(labels, was_np)
    if return_levels:
        return out, [restore(p, was_np) for p in per_level]
    return out
