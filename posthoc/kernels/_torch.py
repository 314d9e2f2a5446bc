"""Plain torch implementations: the fallback on any device and the semantics reference for faster paths."""
from __future__ import annotations

import torch


def region_sums_torch(values: torch.Tensor, labels: torch.Tensor, num_regions: int):
    """values (B,C,H,W) float, labels (B,H,W) int with -1 = unassigned.

    Returns sums (B,N,C) float32 and counts (B,N) int64, batched with per-image label offsets.
    """
    B, C = values.shape[:2]
    N = int(num_regions)
    flat_lab = labels.reshape(B, -1).long()
    valid = flat_lab >= 0
    # per-image offsets so the whole batch is reduced in one scatter; -1 goes to a trash slot
    offs = torch.arange(B, device=labels.device).unsqueeze(1) * N
    idx = torch.where(valid, flat_lab + offs, torch.full_like(flat_lab, B * N))
    vals = values.reshape(B, C, -1).float().permute(1, 0, 2).reshape(C, -1)
    sums = torch.zeros(C, B * N + 1, dtype=torch.float32, device=values.device)
    sums.scatter_add_(1, idx.reshape(1, -1).expand(C, -1), vals)
    counts = torch.bincount(idx.reshape(-1), minlength=B * N + 1)
    sums = sums[:, : B * N].reshape(C, B, N).permute(1, 2, 0).contiguous()
    return sums, counts[: B * N].reshape(B, N)


def region_fuse_torch(probs: torch.Tensor, labels: torch.Tensor, num_regions: int, out=None):
    B, C, H, W = probs.shape
    N = int(num_regions)
    if out is None:
        out = torch.empty_like(probs, dtype=torch.float32)
    if N == 0 or probs.numel() == 0:
        out.copy_(probs)
        return out
    sums, counts = region_sums_torch(probs, labels, N)
    means = sums / counts.clamp_min(1).unsqueeze(-1).to(torch.float32)  # (B,N,C)
    flat_lab = labels.reshape(B, -1).long()
    valid = flat_lab >= 0
    gidx = flat_lab.clamp_min(0)  # (B,HW)
    # gather the region mean of each pixel: (B,C,HW)
    m = torch.gather(means.permute(0, 2, 1), 2, gidx.unsqueeze(1).expand(B, C, -1))
    p = probs.reshape(B, C, -1).float()
    res = torch.where(valid.unsqueeze(1), m * p, p)
    out.copy_(res.reshape(B, C, H, W))
    return out


def weighted_argmax_torch(region_scores: torch.Tensor, validity: torch.Tensor):
    """(B,N,h,w) x (B,N) -> (B,h,w) int64; torch.max returns the first maximal index (lowest n)."""
    B, N = region_scores.shape[:2]
    if N == 0:
        return torch.full((B, *region_scores.shape[2:]), -1, dtype=torch.int64, device=region_scores.device)
    w = region_scores.float() * validity.float().reshape(B, N, 1, 1)
    return torch.max(w, dim=1).indices
