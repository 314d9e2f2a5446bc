"""GPU kernels written in Triton: region sums, CSL Eq. 3 fusion and the CSL Eq. 2 weighted argmax.

Semantics are those of :mod:`posthoc.kernels._torch` (the reference).

Reduction (``region_sums``, pass 1 of ``region_fuse``). A naive GPU segment sum issues one
global atomic per pixel and channel, and because labels are spatially coherent thousands of
those atomics hit the same address and serialize. Here every program loads a block of
``BLOCK`` consecutive pixels (rows concatenated) and its labels once, marks where a run of
equal labels starts, and computes a *segmented inclusive scan* of each channel in registers
(``tl.associative_scan`` with a segmented-sum combine). At the last pixel of every run the
scan holds the run's sum, and only that value goes to global memory with one ``atomic_add``.
The per-region partial sums are thus privatized on chip -- in registers/shared memory
instead of an explicit shared-memory histogram, which would need one slot per region and
cap N -- and global atomics drop from one per pixel to one per run (a 1024-pixel block of a
road scene crosses a handful of regions). Counts are the same scan over ones.

Gather (pass 2). ``out = table[b, c, label + 1] * probs`` with a (B,C,N+1) float32 table of
region means whose slot 0 is 1.0 for label -1, so unassigned pixels keep their score
exactly. The table is small and stays in L1/L2; the pass reads the scores and labels once
and writes the output once.

Weighted argmax. Each program keeps the running maximum and its index for a block of
pixels in registers and streams the N region rows once (strict ``>`` keeps the lowest n).

Label range: every program folds the minimum and maximum of its labels into a 2-element
buffer with ``atomic_min``/``atomic_max``; out-of-range labels are masked out of the
atomics (no out-of-bounds write) and reported as a ValueRangeError after the pass.

Setting ``TRITON_INTERPRET=1`` before triton is imported runs these kernels on CPU tensors
with Triton's interpreter, which the tests use to check them on machines without a GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..validation import label_range_error
from ._torch import mean_table, region_sums_torch

#: pixels per program
BLOCK = 1024
_I32_MAX = 2**31 - 1


@triton.jit
def _seg_add(v1, f1, v2, f2):
    # segmented sum: a segment starts where f == 1; (a,fa) + (b,fb) = (fb ? b : a + b, fa | fb)
    return tl.where(f2 != 0, v2, v1 + v2), f1 | f2


@triton.jit
def _sums_kernel(d_ptr, lab_ptr, acc_ptr, cnt_ptr, mm_ptr, P, C, N, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    ar = tl.arange(0, BLOCK)
    offs = pid * BLOCK + ar
    inb = offs < P
    lbase = lab_ptr + b * P
    lab = tl.load(lbase + offs, mask=inb, other=-1).to(tl.int32)
    prev = tl.load(lbase + offs - 1, mask=inb & (ar > 0), other=-2).to(tl.int32)
    nxt = tl.load(lbase + offs + 1, mask=(offs + 1 < P) & (ar < BLOCK - 1), other=-2).to(tl.int32)
    start = (lab != prev).to(tl.int32)
    end = inb & (lab != nxt)
    # label range, for the error check after the pass
    tl.atomic_min(mm_ptr, tl.min(tl.where(inb, lab, 2147483647), axis=0))
    tl.atomic_max(mm_ptr + 1, tl.max(tl.where(inb, lab, -2147483647), axis=0))
    ok = end & (lab >= 0) & (lab < N)
    slot = b * N + lab
    run_len, _f = tl.associative_scan((inb.to(tl.int32), start), 0, _seg_add)
    tl.atomic_add(cnt_ptr + slot, run_len, mask=ok)
    for c in range(C):
        d = tl.load(d_ptr + (b * C + c) * P + offs, mask=inb, other=0.0)
        run_sum, _g = tl.associative_scan((d, start), 0, _seg_add)
        tl.atomic_add(acc_ptr + slot * C + c, run_sum, mask=ok)


@triton.jit
def _gather_kernel(d_ptr, lab_ptr, tab_ptr, out_ptr, P, C, N, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    inb = offs < P
    lab = tl.load(lab_ptr + b * P + offs, mask=inb, other=-1).to(tl.int32)
    slot = lab + 1  # 0 = label -1 -> factor 1.0
    for c in range(C):
        m = tl.load(tab_ptr + (b * C + c) * (N + 1) + slot, mask=inb, other=1.0)
        base = (b * C + c) * P
        d = tl.load(d_ptr + base + offs, mask=inb, other=0.0)
        tl.store(out_ptr + base + offs, m * d, mask=inb)


@triton.jit
def _wargmax_kernel(r_ptr, v_ptr, out_ptr, P, N, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    inb = offs < P
    v0 = tl.load(v_ptr + b * N)
    best = tl.load(r_ptr + b * N * P + offs, mask=inb, other=0.0) * v0
    idx = tl.zeros([BLOCK], dtype=tl.int32)
    for n in range(1, N):
        vn = tl.load(v_ptr + b * N + n)
        w = tl.load(r_ptr + (b * N + n) * P + offs, mask=inb, other=0.0) * vn
        gt = w > best
        best = tl.where(gt, w, best)
        idx = tl.where(gt, n, idx)
    tl.store(out_ptr + b * P + offs, idx.to(tl.int64), mask=inb)


def _grid(P: int, B: int):
    return (triton.cdiv(P, BLOCK), B)


def _sums_pass(x: torch.Tensor, lab: torch.Tensor, n: int):
    """x (B,C,H,W) float32 contiguous, lab (B,H,W) int32/int64 contiguous -> sums (B,N,C), counts int32."""
    B, C, H, W = x.shape
    P = H * W
    acc = torch.zeros(B, n, C, dtype=torch.float32, device=x.device)
    cnt = torch.zeros(B, n, dtype=torch.int32, device=x.device)
    mm = torch.tensor([_I32_MAX, -_I32_MAX], dtype=torch.int32, device=x.device)
    _sums_kernel[_grid(P, B)](x, lab, acc, cnt, mm, P, C, n, BLOCK=BLOCK)
    lo, hi = (int(t) for t in mm.tolist())
    if lo < -1 or hi >= n:
        raise label_range_error("labels", n, lo, hi)
    return acc, cnt


def _empty_ok(lab: torch.Tensor, n: int) -> None:
    if n == 0 and lab.numel() and bool((lab != -1).any()):
        lo, hi = torch.aminmax(lab)
        raise label_range_error("labels", 0, int(lo), int(hi))


def region_sums_triton(x: torch.Tensor, lab: torch.Tensor, n: int):
    """(B,C,H,W) float32, (B,H,W) int -> sums (B,N,C) float32, counts (B,N) int64."""
    B, _, H, W = x.shape
    if B == 0 or n == 0 or H * W == 0:
        return region_sums_torch(x, lab, n)  # nothing to launch; the reference handles the edge cases
    acc, cnt = _sums_pass(x, lab, n)
    return acc, cnt.to(torch.int64)


def region_fuse_triton(x: torch.Tensor, lab: torch.Tensor, n: int, out: torch.Tensor) -> torch.Tensor:
    """CSL Eq. 3 into ``out`` (B,C,H,W) float32 contiguous (may alias x)."""
    B, C, H, W = x.shape
    if x.numel() == 0:
        _empty_ok(lab, n)
        return out
    if n == 0:
        _empty_ok(lab, n)
        out.copy_(x)
        return out
    acc, cnt = _sums_pass(x, lab, n)
    table = mean_table(acc, cnt).contiguous()
    _gather_kernel[_grid(H * W, B)](x, lab, table, out, H * W, C, n, BLOCK=BLOCK)
    return out


def weighted_argmax_triton(r: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """r (B,N,h,w) float32 contiguous with N >= 1, v (B,N) float32 -> (B,h,w) int64."""
    B, N, h, w = r.shape
    out = torch.empty(B, h, w, dtype=torch.int64, device=r.device)
    if B == 0 or h * w == 0:
        return out
    _wargmax_kernel[_grid(h * w, B)](r, v, out, h * w, N, BLOCK=BLOCK)
    return out
