"""Mask split at inference (CSL scheme 2): every region becomes its connected components.

A region of a label map may consist of several disconnected blobs (soft assignment and
mask-transformer masks produce such regions freely). CSL splits each into its
connected components before fusion so that the region mean of Eq. 3 is taken over one
spatially coherent segment. ``split_components`` does this for all regions at once with a
single two-pass union-find over the label image in which two neighbouring pixels are
connected only if they carry the *same* label (so regions never merge), compiled with
numba; no per-region loop over the image.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from .errors import ValueRangeError
from .types import ArrayT
from .validation import as_torch, check_int, check_labels, check_ndim, compact_labels, restore

__all__ = ["connected_components", "split_components"]

logger = logging.getLogger(__name__)

try:  # numba is a core dependency; the pure-python fallback below exists only for robustness
    import numba

    _njit = numba.njit(cache=True, nogil=True)
except ImportError:  # pragma: no cover - numba missing
    numba = None  # type: ignore[assignment]  # the fallback below checks for None

    def _njit(f):
        return f


@_njit
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@_njit
def _union(parent, a, b):
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


@_njit
def _cc_equal_labels(lab, conn8, min_size, out):
    """Connected components of equal-valued pixels (value >= 0) of a (B,H,W) int map.

    ``out`` (B,H,W) int64 receives component ids 0..M_b-1 per image, numbered in raster
    order of each component's first pixel; -1 where ``lab`` < 0 or the component has fewer
    than ``min_size`` pixels. Returns (B,) counts M_b. Union-find with union-by-smaller-index
    (a root is its component's first pixel) and the usual scan-order shortcuts: when the
    pixel above matches (8-connectivity), the left/diagonal neighbours are already joined to it.
    """
    B, H, W = lab.shape
    counts = np.zeros(B, np.int64)
    parent = np.empty(H * W, np.int64)
    size = np.empty(H * W, np.int64)
    for b in range(B):
        for y in range(H):
            for x in range(W):
                p = y * W + x
                parent[p] = p
                v = lab[b, y, x]
                if v < 0:
                    continue
                up = y > 0 and lab[b, y - 1, x] == v
                left = x > 0 and lab[b, y, x - 1] == v
                if up:
                    parent[p] = _find(parent, p - W)
                    if left and not conn8:  # 4-connectivity: left and up are not neighbours
                        _union(parent, p, p - 1)
                    continue
                if left:
                    parent[p] = _find(parent, p - 1)
                    if conn8 and y > 0 and x + 1 < W and lab[b, y - 1, x + 1] == v:
                        _union(parent, p, p - W + 1)
                    continue
                if conn8 and y > 0:
                    if x > 0 and lab[b, y - 1, x - 1] == v:
                        parent[p] = _find(parent, p - W - 1)
                    if x + 1 < W and lab[b, y - 1, x + 1] == v:
                        _union(parent, p, p - W + 1)
        # roots and component sizes
        for p in range(H * W):
            size[p] = 0
        for y in range(H):
            for x in range(W):
                p = y * W + x
                if lab[b, y, x] >= 0:
                    r = _find(parent, p)
                    parent[p] = r
                    size[r] += 1
        m = 0
        for y in range(H):
            for x in range(W):
                p = y * W + x
                if lab[b, y, x] < 0:
                    out[b, y, x] = -1
                    continue
                r = parent[p]
                if r == p:
                    if size[p] >= min_size:
                        out[b, y, x] = m
                        m += 1
                    else:
                        out[b, y, x] = -1
                else:
                    out[b, y, x] = out[b, r // W, r % W]
        counts[b] = m
    return counts


def connected_components(
    labels: np.ndarray, connectivity: int = 8, min_size: int = 0, *, method: str = "runs"
) -> tuple[np.ndarray, np.ndarray]:
    """Components of equal labels of a validated (B,H,W) int numpy map (no input checks).

    Args:
        labels: (B,H,W) integer labels, -1 (or any negative value) = unassigned.
        connectivity: 8 or 4.
        min_size: components with fewer pixels become -1.
        method: ``"runs"`` (default: the run-based labelling of
            :mod:`posthoc.kernels._numba_cc`, one read of the labels and one write of the
            output) or ``"pixels"`` (the pixel union-find it replaced; the cross-check).
            Both give identical results.

    Returns ``(components (B,H,W) int64, counts (B,) int64)``, -1 where ``labels`` < 0 or a
    component is smaller than ``min_size``.
    """
    lab = np.ascontiguousarray(labels)
    if lab.dtype not in (np.int32, np.int64):
        lab = lab.astype(np.int64)
    if lab.size == 0:
        return np.empty(lab.shape, np.int64), np.zeros(lab.shape[0], np.int64)
    if method == "runs" and numba is not None:
        from .kernels import _empty_cpu, _numba_threads
        from .kernels._numba_cc import label_runs_np

        out = _empty_cpu(tuple(lab.shape), torch.int64).numpy()  # huge pages for a large fresh output

        _numba_threads()
        return out, label_runs_np(lab, connectivity == 8, int(min_size), out)
    out = np.empty(lab.shape, np.int64)
    counts = _cc_equal_labels(lab, connectivity == 8, int(min_size), out)
    return out, np.asarray(counts)


@torch.no_grad()
def split_components(labels: ArrayT, connectivity: int = 8, min_size: int = 0) -> ArrayT:
    """Split every region of a label map into its connected components (CSL mask split).

    Two neighbouring pixels belong to the same component only if they carry the same label;
    different regions never merge even when they touch. Components are renumbered
    0..M-1 per image in raster order (row-major) of their first pixel, so the result is
    deterministic and does not depend on the input's label values (permuting labels gives
    the same output). With ``min_size > 0`` components with fewer pixels become -1 and the
    rest are renumbered in the same order; with ``min_size=0`` every assigned pixel keeps a
    component. Follows Zhang et al. (CSL, AAAI 2024), scheme 2, "mask split".

    Args:
        labels: (B,H,W) or (H,W) integer label map, values >= -1, -1 = unassigned.
        connectivity: 8 (default, as in CSL) or 4.
        min_size: minimum component size in pixels (>= 0).

    Returns:
        (B,H,W) (or (H,W)) int64 component ids, -1 where the input is -1 or a component
        was dropped; numpy in -> numpy out, torch stays on its device (computed on CPU).

    >>> import torch
    >>> split_components(torch.tensor([[0, 1, 0]])).tolist()  # region 0 is two blobs
    [[0, 1, 2]]
    >>> lab = torch.tensor([[0, 1], [1, 0]])  # diagonal neighbours
    >>> split_components(lab).tolist(), split_components(lab, connectivity=4).tolist()
    ([[0, 1], [1, 0]], [[0, 1], [2, 3]])
    >>> split_components(torch.tensor([[0, 0, 1, 0]]), min_size=2).tolist()
    [[0, 0, -1, -1]]
    """
    lab, was_numpy = as_torch(labels, "labels")
    check_int(lab, "labels")
    check_ndim(lab, "labels", (2, 3), "(B,H,W) or (H,W)")
    if connectivity not in (4, 8) or isinstance(connectivity, bool):
        raise ValueRangeError(f"connectivity must be 4 or 8; got {connectivity!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueRangeError(f"min_size must be a non-negative int; got {min_size!r}")
    # sparse or huge ids (2**40, RGB-encoded panoptic ids) are renumbered: memory stays bounded by the frame
    lab, _ = compact_labels(lab, check_labels(lab, "labels"))
    batched = lab.ndim == 3
    lab3 = lab if batched else lab.unsqueeze(0)
    arr = lab3.detach().cpu().numpy()
    comp, _ = connected_components(arr, connectivity, int(min_size))
    out = torch.from_numpy(comp)
    if not was_numpy and lab.device.type != "cpu":
        out = out.to(lab.device)
    if not batched:
        out = out[0]
    return restore(out, was_numpy)
