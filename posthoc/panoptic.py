"""Post-hoc panoptic inference: instances and panoptic maps from a semantic teacher.

Three ops, numpy in and out, deterministic (the clustering for a fixed ``seed``):

* :func:`thing_instances`: the thing instances of a class map as the connected components
  of each thing class (the baseline instance step).
* :func:`panoptic_fusion`: Mask2Former's panoptic inference (Cheng et al., CVPR 2022,
  ``MaskFormer.panoptic_inference`` in ``mask2former/maskformer_model.py``) on candidate
  segments given as soft masks with a score and a class:

  1. candidates whose score is not above ``object_threshold`` are dropped (Mask2Former:
     0.8 on its query class probability; the post-hoc segments here are built from the
     teacher's maps, so the default keeps every candidate, 0.0);
  2. **overlap order**: every pixel goes to the candidate with the largest
     ``score * mask(p)`` (ties: the lower index), so things, stuff and unknowns compete
     per pixel with no fixed priority;
  3. a candidate keeps the pixels it won where its own mask is ``>= mask_threshold`` (0.5);
     it is dropped when it keeps no pixel, its own mask has no pixel ``>= mask_threshold``,
     or it keeps less than ``overlap_threshold`` (0.8) of those pixels;
  4. stuff candidates of one class are merged into one segment (Mask2Former's
     ``stuff_memory_list``); every thing candidate is its own segment;
  5. **minimum segment area**: Mask2Former keeps any segment with at least one pixel
     (``min_area=0``); ``min_area`` drops smaller kept segments (their pixels become void),
     as detectron2's panoptic combination does for stuff.

* :func:`semantic_guided_clustering`: Algorithm 2 of the self-trained panoptic
  segmentation thesis (Verma): inside each thing-class mask the pixel embeddings are
  clustered with :func:`posthoc.meanshift_sphere`; clusters whose mean embeddings (unit
  vectors) are closer than ``delta_d`` (Euclidean) are merged, transitively; instances with
  fewer than ``min_size`` pixels are dropped. *Readings*: the embeddings are the teacher's
  feature map upsampled bilinearly to the class map and L2-normalised; the mean of a cluster
  is the normalised mean of its unit embeddings; a dropped instance's pixels get no
  instance (-1); clusters are not split into connected components.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .components import connected_components
from .errors import DTypeError, NonFiniteError, ShapeError, ValueRangeError

__all__ = ["panoptic_fusion", "semantic_guided_clustering", "thing_instances"]


def _int_map(x: Any, name: str) -> tuple[np.ndarray, bool]:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.dtype.kind not in "iu":
        raise DTypeError(f"{name} must be an integer class map; got dtype {a.dtype}")
    if a.ndim == 2:
        return a[None].astype(np.int64), False
    if a.ndim != 3:
        raise ShapeError(f"{name} must be (H,W) or (B,H,W); got shape {tuple(a.shape)}")
    return a.astype(np.int64), True


def _ids(ids: Sequence[int], name: str) -> np.ndarray:
    a = np.unique(np.asarray(list(ids), dtype=np.int64))
    if a.size and a.min() < 0:
        raise ValueRangeError(f"{name} must be non-negative class ids; got {a.tolist()}")
    return a


def _nonneg_int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueRangeError(f"{name} must be a non-negative int; got {v!r}")
    return int(v)


def thing_instances(semantic: Any, thing_ids: Sequence[int], *, connectivity: int = 8, min_area: int = 0) -> np.ndarray:
    """Thing instances as connected components of each thing class.

    Args:
        semantic: (H,W) or (B,H,W) integer class map (any values; pixels of classes not in
            ``thing_ids`` get no instance).
        thing_ids: the classes whose components are instances.
        connectivity: 8 (default) or 4.
        min_area: components with fewer pixels get no instance.

    Returns:
        int64 map of the same shape: instance ids 0..M-1 per image (raster order of their
        first pixel), -1 elsewhere.

    >>> thing_instances(np.array([[1, 1, 0, 1], [0, 0, 0, 1]]), [1]).tolist()
    [[0, 0, -1, 1], [-1, -1, -1, 1]]
    """
    sem, batched = _int_map(semantic, "semantic")
    ids = _ids(thing_ids, "thing_ids")
    if connectivity not in (4, 8) or isinstance(connectivity, bool):
        raise ValueRangeError(f"connectivity must be 4 or 8; got {connectivity!r}")
    min_area = _nonneg_int(min_area, "min_area")
    lab = np.where(np.isin(sem, ids), sem, -1)
    comp, _ = connected_components(lab, connectivity, min_area)
    return comp if batched else comp[0]


def panoptic_fusion(masks: Any, scores: Any, classes: Any, thing_ids: Sequence[int], *,
                    overlap_threshold: float = 0.8, object_threshold: float = 0.0, mask_threshold: float = 0.5,
                    min_area: int = 0, ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Mask2Former's panoptic fusion of one frame's candidate segments (rules in the module docstring).

    Args:
        masks: (N,H,W) float soft masks in [0,1] (N may be 0).
        scores: (N,) float segment scores.
        classes: (N,) int class ids >= 0 (``ignore_index`` not allowed).
        thing_ids: classes whose candidates stay separate instances (the others are stuff).
        overlap_threshold, object_threshold, mask_threshold, min_area: see the module docstring.
        ignore_index: class written where no segment is kept.

    Returns:
        ``(semantic (H,W) int64, segment_id (H,W) int64, segments)``: class per pixel
        (``ignore_index`` = none), the segment id 1..S per pixel (0 = none), and one dict per
        kept segment ``{"id", "category_id", "isthing", "area", "score"}`` in id order
        (a merged stuff segment has its first candidate's score).
    """
    m = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if m.ndim != 3:
        raise ShapeError(f"masks must be (N,H,W); got shape {tuple(m.shape)}")
    if m.dtype.kind != "f":
        raise DTypeError(f"masks must be floating point in [0,1]; got dtype {m.dtype}")
    if not np.isfinite(m).all():
        raise NonFiniteError("masks must be finite; got NaN or Inf")
    if m.size and (m.min() < 0 or m.max() > 1):
        raise ValueRangeError(f"masks must lie in [0,1]; got range [{m.min():.4g},{m.max():.4g}]")
    s = np.asarray(scores, np.float64).reshape(-1)
    c = np.asarray(classes)
    if c.dtype.kind not in "iu":
        raise DTypeError(f"classes must be integers; got dtype {c.dtype}")
    c = c.astype(np.int64).reshape(-1)
    n, h, w = m.shape
    if s.shape[0] != n or c.shape[0] != n:
        raise ShapeError(f"scores and classes must be ({n},) like masks' N; got {s.shape[0]} and {c.shape[0]}")
    if not np.isfinite(s).all():
        raise NonFiniteError("scores must be finite; got NaN or Inf")
    if c.size and (c.min() < 0 or (c == ignore_index).any()):
        raise ValueRangeError(f"classes must be ids >= 0 other than ignore_index {ignore_index}; got {c.tolist()}")
    for v, name in ((overlap_threshold, "overlap_threshold"), (mask_threshold, "mask_threshold")):
        if not 0.0 <= float(v) <= 1.0:
            raise ValueRangeError(f"{name} must lie in [0,1]; got {v!r}")
    min_area = _nonneg_int(min_area, "min_area")
    things = set(_ids(thing_ids, "thing_ids").tolist())
    semantic = np.full((h, w), ignore_index, np.int64)
    seg = np.zeros((h, w), np.int64)
    segments: list[dict] = []
    keep = np.nonzero(s > float(object_threshold))[0]
    if keep.size == 0 or h * w == 0:
        return semantic, seg, segments
    mk = m[keep].astype(np.float64)
    owner = np.argmax(s[keep, None, None] * mk, axis=0)  # first index wins ties
    stuff_seg: dict[int, int] = {}
    for j, k in enumerate(keep):
        own = mk[j] >= mask_threshold
        original = int(own.sum())
        won = owner == j
        mask = won & own
        area = int(mask.sum())
        if int(won.sum()) == 0 or original == 0 or area == 0:
            continue
        if won.sum() / original < overlap_threshold:
            continue
        cls = int(c[k])
        is_thing = cls in things
        if not is_thing and cls in stuff_seg:
            sid = stuff_seg[cls]
            seg[mask] = sid
            segments[sid - 1]["area"] += area
            continue
        sid = len(segments) + 1
        if not is_thing:
            stuff_seg[cls] = sid
        seg[mask] = sid
        semantic[mask] = cls
        segments.append({"id": sid, "category_id": cls, "isthing": is_thing, "area": area, "score": float(s[k])})
    if min_area:
        small = [d["id"] for d in segments if d["area"] < min_area]
        if small:
            drop = np.isin(seg, small)
            seg[drop] = 0
            semantic[drop] = ignore_index
            kept = [d for d in segments if d["area"] >= min_area]
            remap = np.zeros(len(segments) + 1, np.int64)
            for new, d in enumerate(kept, 1):
                remap[d["id"]] = new
                d["id"] = new
            seg = remap[seg]
            segments = kept
    semantic[seg > 0] = np.asarray([0] + [d["category_id"] for d in segments], np.int64)[seg[seg > 0]]
    return semantic, seg, segments


def _union_find_merge(means: np.ndarray, delta_d: float) -> np.ndarray:
    """Root index per cluster after merging every pair closer than ``delta_d`` (transitively)."""
    n = means.shape[0]
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n > 1:
        d = np.linalg.norm(means[:, None, :] - means[None, :, :], axis=-1)
        ii, jj = np.nonzero(np.triu(d < delta_d, 1))
        for i, j in zip(ii.tolist(), jj.tolist(), strict=True):
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)], np.int64)


def semantic_guided_clustering(features: Any, semantic: Any, class_ids: Sequence[int], *, delta_d: float = 0.5,
                               min_size: int = 16, angle_deg: float = 45.0, n_seeds: int = 64,
                               n_samples: int = 4000, seed: int = 0) -> np.ndarray:
    """Instances inside each class mask by mean-shift on the embeddings (thesis Algorithm 2).

    Args:
        features: (B,F,h,w) float pixel embeddings (any resolution; upsampled bilinearly to
            the class map's (H,W)), finite.
        semantic: (B,H,W) (or (H,W) with B = 1) integer class map.
        class_ids: the classes to split into instances (known things, and the unknown id).
        delta_d: merge clusters whose unit mean embeddings are closer than this (>= 0).
        min_size: instances with fewer pixels get no instance id.
        angle_deg, n_seeds, n_samples, seed: passed to :func:`posthoc.meanshift_sphere`
            (``projective=False``: an embedding and its negative are different).

    Returns:
        int64 instance ids of ``semantic``'s shape, 0..M-1 per image (by class id, then by the
        raster order of each instance's first pixel), -1 elsewhere.
    """
    from .meanshift import meanshift_sphere

    sem, batched = _int_map(semantic, "semantic")
    f = features if isinstance(features, torch.Tensor) else torch.as_tensor(np.asarray(features))
    if f.ndim != 4:
        raise ShapeError(f"features must be (B,F,h,w); got shape {tuple(f.shape)}")
    if not f.is_floating_point():
        raise DTypeError(f"features must be floating point; got {f.dtype}")
    if not torch.isfinite(f).all():
        raise NonFiniteError("features must be finite; got NaN or Inf")
    B, H, W = sem.shape
    if f.shape[0] != B:
        raise ShapeError(f"features must have B={B} like semantic; got shape {tuple(f.shape)}")
    if not float(delta_d) >= 0:
        raise ValueRangeError(f"delta_d must be >= 0; got {delta_d!r}")
    min_size = _nonneg_int(min_size, "min_size")
    ids = _ids(class_ids, "class_ids")
    f = f.detach().float().cpu()
    if tuple(f.shape[-2:]) != (H, W):
        f = torch.nn.functional.interpolate(f, size=(H, W), mode="bilinear", align_corners=False)
    f = torch.nn.functional.normalize(f, dim=1)
    out = np.full((B, H, W), -1, np.int64)
    for b in range(B):
        nxt = 0
        for c in ids.tolist():
            where = np.nonzero((sem[b] == c).ravel())[0]
            if where.size < max(min_size, 1):
                continue
            x = f[b].reshape(f.shape[1], -1)[:, torch.from_numpy(where)]  # (F,n)
            lab = meanshift_sphere(x[None, :, :, None], angle_deg=angle_deg, projective=False, n_seeds=n_seeds,
                                   n_samples=n_samples, seed=seed)[0, :, 0].numpy()
            k = int(lab.max()) + 1
            sums = np.zeros((k, x.shape[0]))
            np.add.at(sums, lab, x.T.numpy().astype(np.float64))
            means = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
            lab = _union_find_merge(means, float(delta_d))[lab]
            counts = np.bincount(lab, minlength=k)
            lab = np.where(counts[lab] >= min_size, lab, -1)
            # renumber by first pixel in raster order
            order: dict[int, int] = {}
            for r in lab.tolist():
                if r >= 0 and r not in order:
                    order[r] = nxt + len(order)
            ids_out = np.array([order.get(r, -1) for r in range(k)] + [-1], np.int64)
            out[b].reshape(-1)[where] = ids_out[lab]
            nxt += len(order)
    return out if batched else out[0]
