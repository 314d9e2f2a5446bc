"""Plain torch implementations: the fallback on any device and the semantics reference for faster paths.

Every function here runs on the device of its input. Work is done per chunk of images /
channels / pixels so that the temporaries stay bounded (``chunk_elems`` elements, default
2**24 = 64 MiB of float32) instead of growing with the batch: a batch of 16 Cityscapes
frames with 19 classes or a 4K frame needs far less than twice its input size in extra
memory (docs/architecture.md, "Kernels").

Semantics (CSL, Zhang et al. AAAI 2024, Eq. 2 and Eq. 3):

* ``region_sums``: sums[b,n,c] = sum of values[b,c,p] over pixels p with labels[b,p] == n,
  counts[b,n] = number of such pixels; label -1 is skipped.
* ``region_fuse``: out[b,c,p] = mean_{q: l(q)=l(p)} probs[b,c,q] * probs[b,c,p]; pixels with
  label -1 keep probs (bit for bit).
* ``weighted_argmax``: labels[b,p] = argmax_n region_scores[b,n,p] * validity[b,n], ties going
  to the lowest n; with N == 0 every pixel gets -1.
"""
from __future__ import annotations

import torch

from ..validation import check_label_range

__all__ = ["CHUNK_ELEMS", "check_label_range", "mean_table", "region_fuse_torch", "region_sums_torch",
           "weighted_argmax_torch"]

#: default bound on the number of elements of any temporary (2**24 float32 = 64 MiB)
CHUNK_ELEMS = 1 << 24


def _image_groups(B: int, per_image: int, chunk_elems: int):
    """Consecutive image ranges whose element count stays under chunk_elems (at least one image each)."""
    step = max(1, chunk_elems // max(per_image, 1))
    for b0 in range(0, B, step):
        yield b0, min(B, b0 + step)


def region_sums_torch(values: torch.Tensor, labels: torch.Tensor, num_regions: int, *,
                      chunk_elems: int = CHUNK_ELEMS, check: bool = True):
    """Per-region sums and pixel counts with ``scatter_add_``.

    Args:
        values: (B,C,H,W) float, any range.
        labels: (B,H,W) int32/int64, region index in [-1, num_regions), -1 = skipped.
        num_regions: N >= 0.
        chunk_elems: bound on the elements of one scatter (images are grouped up to it).
        check: verify the label range first (one extra read of the labels).

    Returns:
        sums (B,N,C) float32 and counts (B,N) int64.
    """
    B, C = values.shape[:2]
    N = int(num_regions)
    dev = values.device
    if check:
        check_label_range(labels, N)
    sums = torch.zeros(B, N, C, dtype=torch.float32, device=dev)
    counts = torch.zeros(B, N, dtype=torch.int64, device=dev)
    P = labels[0].numel() if B else 0
    if B == 0 or N == 0 or P == 0:
        return sums, counts
    with torch.no_grad():
        for b0, b1 in _image_groups(B, C * P, chunk_elems):
            nb = b1 - b0
            flat = labels[b0:b1].reshape(nb, P).long()
            # per-image offsets so the group is reduced in one scatter; -1 goes to a trash slot
            offs = torch.arange(nb, device=dev).unsqueeze(1) * N
            idx = torch.where(flat >= 0, flat + offs, torch.full_like(flat, nb * N)).reshape(1, -1)
            vals = values[b0:b1].reshape(nb, C, P).float().permute(1, 0, 2).reshape(C, nb * P)
            acc = torch.zeros(C, nb * N + 1, dtype=torch.float32, device=dev)
            acc.scatter_add_(1, idx.expand(C, -1), vals)
            sums[b0:b1] = acc[:, : nb * N].reshape(C, nb, N).permute(1, 2, 0)
            counts[b0:b1] = torch.bincount(idx.reshape(-1), minlength=nb * N + 1)[: nb * N].reshape(nb, N)
    return sums, counts


def mean_table(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(B,N,C) sums, (B,N) counts -> (B,C,N+1) float32 table; slot 0 = 1.0 (label -1), slot n+1 = mean of n."""
    B, N, C = sums.shape
    table = torch.ones(B, C, N + 1, dtype=torch.float32, device=sums.device)
    table[:, :, 1:] = (sums / counts.clamp_min(1).unsqueeze(-1).to(torch.float32)).permute(0, 2, 1)
    return table


def region_fuse_torch(probs: torch.Tensor, labels: torch.Tensor, num_regions: int, out=None, *,
                      chunk_elems: int = CHUNK_ELEMS, check: bool = True):
    """CSL Eq. 3 with ``scatter_add_`` + ``gather``, chunked.

    Args:
        probs: (B,C,H,W) float32 normalized scores (probabilities in [0,1] for CSL; any finite
            values work).
        labels: (B,H,W) int32/int64 in [-1, num_regions).
        num_regions: N >= 0.
        out: optional (B,C,H,W) float32 tensor to write into (may be ``probs`` itself).
        chunk_elems: bound on the elements of each temporary.
        check: verify the label range first.

    Returns:
        ``out`` (B,C,H,W) float32.
    """
    B, C, H, W = probs.shape
    N = int(num_regions)
    if check:
        check_label_range(labels, N)
    if out is None:
        out = torch.empty(probs.shape, dtype=torch.float32, device=probs.device)
    if probs.numel() == 0:
        return out
    if N == 0:
        out.copy_(probs)
        return out
    with torch.no_grad():
        sums, counts = region_sums_torch(probs, labels, N, chunk_elems=chunk_elems, check=False)
        table = mean_table(sums, counts)  # (B,C,N+1)
        dst = out if out.is_contiguous() else torch.empty_like(out, memory_format=torch.contiguous_format)
        P = H * W
        cc = max(1, min(C, chunk_elems // max(P, 1)))
        for b in range(B):
            idx = (labels[b].reshape(1, P).long() + 1)  # slot 0 = label -1 -> factor 1.0
            for c0 in range(0, C, cc):
                c1 = min(C, c0 + cc)
                g = torch.gather(table[b, c0:c1], 1, idx.expand(c1 - c0, -1))
                torch.mul(g, probs[b, c0:c1].reshape(c1 - c0, P).float(), out=g)
                dst[b, c0:c1].view(c1 - c0, P).copy_(g)
        if dst is not out:
            out.copy_(dst)
    return out


def weighted_argmax_torch(region_scores: torch.Tensor, validity: torch.Tensor, *,
                          chunk_elems: int = CHUNK_ELEMS):
    """CSL Eq. 2: (B,N,h,w) x (B,N) -> (B,h,w) int64.

    ``torch.max`` over dim 1 returns the first maximal index (lowest n) and is about 3x faster
    than ``argmax`` on CPU; pixels are processed in chunks so the product R*V never
    materializes for the whole batch.
    """
    B, N = region_scores.shape[:2]
    hw = region_scores.shape[2:]
    dev = region_scores.device
    if N == 0:
        return torch.full((B, *hw), -1, dtype=torch.int64, device=dev)
    P = 1
    for s in hw:
        P *= int(s)
    out = torch.empty(B, P, dtype=torch.int64, device=dev)
    if B == 0 or P == 0:
        return out.reshape(B, *hw)
    with torch.no_grad():
        r = region_scores.reshape(B, N, P)
        v = validity.float().reshape(B, N, 1)
        step = max(1, chunk_elems // max(B * N, 1))
        for p0 in range(0, P, step):
            p1 = min(P, p0 + step)
            w = r[:, :, p0:p1].float() * v
            out[:, p0:p1] = torch.max(w, dim=1).indices
    return out.reshape(B, *hw)
