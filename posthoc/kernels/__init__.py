"""Kernels behind ``posthoc.fuse`` and ``posthoc.soft_assign``.

Three entry points, each with a ``backend=`` keyword ("auto" picks by device,
size and availability):

* ``region_sums(values, labels, num_regions)`` -> (sums (B,N,C) float32, counts (B,N) int64)
* ``region_fuse(probs, labels, num_regions)`` -> CSL Eq. 3 on normalized scores
* ``weighted_argmax(region_scores, validity)`` -> CSL Eq. 2 labels

The inputs here are already validated and normalized by the public functions;
kernels do no user-facing checks.
"""
from __future__ import annotations

from ._torch import region_fuse_torch, region_sums_torch, weighted_argmax_torch

__all__ = ["region_sums", "region_fuse", "weighted_argmax", "available_backends"]


def available_backends() -> list[str]:
    return ["torch"]


def region_sums(values, labels, num_regions: int, *, backend: str = "auto"):
    """Per-region sums and pixel counts. values (B,C,H,W) float32, labels (B,H,W) int, -1 skipped."""
    return region_sums_torch(values, labels, num_regions)


def region_fuse(probs, labels, num_regions: int, *, backend: str = "auto", out=None):
    """H[b,c,p] = mean_{q in region(p)} probs[b,c,q] * probs[b,c,p]; probs where label == -1."""
    return region_fuse_torch(probs, labels, num_regions, out=out)


def weighted_argmax(region_scores, validity, *, backend: str = "auto"):
    """argmax_n region_scores[b,n,p] * validity[b,n], ties to the lowest n -> (B,h,w) int64."""
    return weighted_argmax_torch(region_scores, validity)
