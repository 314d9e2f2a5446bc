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
from .errors import ShapeError, ValueRangeError
from .types import ArrayT
from .validation import (
    as_float32,
    as_torch,
    check_float,
    check_ndim,
    check_range,
    check_size,
    restore,
    shape_str,
    to_device,
)

__all__ = ["assign_labels", "hard_assign", "soft_assign"]

logger = logging.getLogger(__name__)


def _check_inputs(region_scores: Any, validity: Any, *, check_scores: bool = True):
    """Validate R (B,N,h,w)/(N,h,w) in [0,1] and V (B,N)/(N,) in [0,1]; return 4-D/2-D float32.

    With ``check_scores=False`` the value range of R is left to the caller (soft_assign fuses
    it into the kernel's single pass over R); shapes and dtypes are always checked here.
    """
    r, was_numpy = as_torch(region_scores, "region_scores")
    check_float(r, "region_scores")
    check_ndim(r, "region_scores", (3, 4), "(B,N,h,w) or (N,h,w)")
    batched = r.ndim == 4
    v, v_np = as_torch(validity, "validity")
    v = to_device(v, v_np, r, "validity", "region_scores")
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
    if check_scores:
        check_range(r4, "region_scores", 0.0, 1.0)
    check_range(v2, "validity", 0.0, 1.0)
    return r4, v2, was_numpy, batched


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


def _axis_weights(out_size: int, in_size: int, device) -> tuple[torch.Tensor, ...]:
    """Bilinear source indices and weights along one axis, ``align_corners=False``.

    The sampling positions of ``F.interpolate(mode="bilinear", align_corners=False)``:
    ``src = max((dst + 0.5) * in/out - 0.5, 0)``, ``i0 = min(floor(src), in-1)``,
    ``i1 = i0 + (i0 < in-1)``, ``l1 = src - i0``, ``l0 = 1 - l1``.
    """
    dst = torch.arange(out_size, dtype=torch.float64)
    src = ((dst + 0.5) * (in_size / out_size) - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(in_size - 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    l1 = (src - i0.double()).clamp(0.0, 1.0)
    l0 = 1.0 - l1
    return i0.to(device), i1.to(device), l0.float().to(device), l1.float().to(device)


class _Grid:
    """Per-axis bilinear indices/weights for resizing (h,w) -> (H,W)."""

    def __init__(self, h: int, w: int, H: int, W: int, device) -> None:
        self.y0, self.y1, self.ly0, self.ly1 = _axis_weights(H, h, device)
        self.x0, self.x1, self.lx0, self.lx1 = _axis_weights(W, w, device)

    def resize(self, r: torch.Tensor) -> torch.Tensor:
        """(B,n,h,w) -> (B,n,H,W): ``(R[y0,x0] lx0 + R[y0,x1] lx1) ly0 + (R[y1,x0] lx0 + R[y1,x1] lx1) ly1``,
        computed separably (rows first) with exactly the float operations of :meth:`at`."""
        t = r.index_select(-1, self.x0) * self.lx0 + r.index_select(-1, self.x1) * self.lx1
        return t.index_select(-2, self.y0) * self.ly0[:, None] + t.index_select(-2, self.y1) * self.ly1[:, None]

    def at(self, r: torch.Tensor, b: torch.Tensor, n: torch.Tensor, Y: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Resized values at output pixels (Y,X) of regions n in images b (broadcast index tensors)."""
        y0, y1, x0, x1 = self.y0[Y], self.y1[Y], self.x0[X], self.x1[X]
        lx0, lx1 = self.lx0[X], self.lx1[X]
        t0 = r[b, n, y0, x0] * lx0 + r[b, n, y0, x1] * lx1
        t1 = r[b, n, y1, x0] * lx0 + r[b, n, y1, x1] * lx1
        return t0 * self.ly0[Y] + t1 * self.ly1[Y]


#: relative margin of the candidate test in the pruned soft assignment: float rounding of
#: a resized, validity-weighted score is a few ulp (~4e-7) of the cell's bound, so a region
#: ruled out by more than this relative gap can never win (nor tie) at any pixel of the cell
_PRUNE_REL = 1e-5


def _soft_assign_dense(r, v, grid, chunk, backend):
    """Resize ``chunk`` regions at a time and keep a running (max, argmax); ties -> lowest n."""
    B, N = r.shape[:2]
    best_val: torch.Tensor | None = None
    lab: torch.Tensor | None = None
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        up = grid.resize(r[:, n0:n1]).contiguous()
        vc = v[:, n0:n1].contiguous()
        idx = kernels.weighted_argmax(up, vc, backend=backend)  # (B,H,W) index within the chunk
        val = torch.gather(up, 1, idx.unsqueeze(1)).squeeze(1) * torch.gather(
            vc, 1, idx.reshape(B, -1)
        ).reshape(idx.shape)
        if best_val is None or lab is None:
            best_val, lab = val, idx + n0
        else:
            better = val > best_val  # strict: earlier (lower n) chunks win ties
            best_val = torch.where(better, val, best_val)
            lab = torch.where(better, idx + n0, lab)
    return lab


def _soft_assign_pruned(r, v, grid, budget):
    """Exact soft assignment at the output size without resizing every region everywhere.

    Each output pixel interpolates the 2x2 low-resolution cell (y0..y1, x0..x1). Since
    bilinear weights are convex, ``U_n = V_n max_cell R_n`` and ``L_n = V_n min_cell R_n``
    bound ``V_n bilinear(R_n)`` on the whole cell. Region n can only win in the cell if
    ``U_n >= max_m L_m - eps``; cells with a single such candidate take it directly (it is
    ``argmax_m L_m``), and only the pixels of cells with several candidates are evaluated,
    for their candidates only, with the same float operations as the dense path — so the
    result equals :func:`_soft_assign_dense` exactly. Returns None (use the dense path) when
    so many candidates survive that evaluating them would cost more than resizing everything.
    """
    B, N, h, w = r.shape
    dev = r.device
    rv = r * v[:, :, None, None]
    rvp = F.pad(rv, (0, 1, 0, 1), mode="replicate")
    # max / min over the 2x2 cell at (y0,x0), separably with slices (max_pool2d is ~20x slower on CPU)
    t = torch.maximum(rvp[..., :, :-1], rvp[..., :, 1:])
    U = torch.maximum(t[..., :-1, :], t[..., 1:, :])  # (B,N,h,w)
    t = torch.minimum(rvp[..., :, :-1], rvp[..., :, 1:])
    L = torch.minimum(t[..., :-1, :], t[..., 1:, :])
    del t
    del rv, rvp
    maxL, argL = L.max(dim=1)  # (B,h,w)
    cand = U * (1.0 + _PRUNE_REL) >= (maxL * (1.0 - _PRUNE_REL)).unsqueeze(1)
    # cells where every region is exactly 0 tie everywhere: the lowest n (argL = 0) wins
    cand &= (U.amax(dim=1) > 0).unsqueeze(1) | (torch.arange(N, device=dev) == 0).view(1, N, 1, 1)
    del U, L
    ncand = cand.sum(dim=1)
    cy, cx = grid.y0[:, None], grid.x0[None, :]
    lab = argL[:, cy, cx]  # (B,H,W): the single candidate where there is one
    multi = ncand > 1
    if not bool(multi.any()):
        return lab
    K = int(ncand.max())
    cy_cnt = torch.bincount(grid.y0, minlength=h).to(ncand.dtype)  # output rows per cell row
    cx_cnt = torch.bincount(grid.x0, minlength=w).to(ncand.dtype)
    work = int((ncand * multi * cy_cnt[None, :, None] * cx_cnt[None, None, :]).sum())
    if work > N * grid.y0.numel() * grid.x0.numel() // 4:  # heavily overlapping scores: dense is cheaper
        return None
    mb, my, mx = multi.nonzero(as_tuple=True)  # M multi-candidate cells
    key = torch.where(cand[mb, :, my, mx], torch.arange(N, device=dev), torch.full((1,), N, device=dev))
    cidx = key.sort(dim=1).values[:, :K]  # (M,K) candidate regions, ascending n, N = padding
    del key, cand
    table = torch.full((B, h, w), -1, dtype=torch.int64, device=dev)
    table[mb, my, mx] = torch.arange(mb.numel(), device=dev)
    pb, pY, pX = multi[:, cy, cx].nonzero(as_tuple=True)  # pixels in multi-candidate cells
    step = max(1, budget // K)
    for i0 in range(0, pb.numel(), step):
        b, Yp, Xp = pb[i0 : i0 + step], pY[i0 : i0 + step], pX[i0 : i0 + step]
        cn = cidx[table[b, grid.y0[Yp], grid.x0[Xp]]]  # (P,K)
        valid = cn < N
        cnc = cn.clamp_max(N - 1)
        val = grid.at(r, b[:, None], cnc, Yp[:, None], Xp[:, None]) * v[b[:, None], cnc]
        val = torch.where(valid, val, torch.full_like(val, -1.0))
        k = val.max(dim=1).indices  # first maximum -> lowest n among the candidates
        lab[b, Yp, Xp] = cn.gather(1, k[:, None]).squeeze(1)
    return lab


def _soft_assign_numba(r: torch.Tensor, v: torch.Tensor, grid: _Grid) -> torch.Tensor:
    """The pruned method as one compiled pass over cell rows (:mod:`posthoc.kernels._numba_assign`)."""
    nb = kernels._numba_assign_mod()
    kernels._numba_threads()
    B = r.shape[0]
    H, W = grid.y0.numel(), grid.x0.numel()
    out = kernels._empty_cpu((B, H, W), torch.int64)
    g = [t.contiguous().numpy() for t in (grid.y0, grid.y1, grid.ly0, grid.ly1, grid.x0, grid.x1, grid.lx0, grid.lx1)]
    if nb.soft_assign_np(r.contiguous().numpy(), v.contiguous().numpy(), *g, out.numpy()):
        check_range(r, "region_scores", 0.0, 1.0)  # raises the usual error
        raise ValueRangeError("region_scores must be probabilities in [0,1]")  # pragma: no cover
    return out


@torch.no_grad()
def soft_assign(
    region_scores: ArrayT,
    validity: Any,
    *,
    size: Any = None,
    backend: str = "auto",
    chunk_regions: int = 16,
    method: str = "auto",
) -> ArrayT:
    """Soft assignment of region proposals (CSL scheme 2, Eq. 2).

    ``label(p) = argmax_n R_n(p) * V_n``; ties go to the lowest n, so every pixel gets a
    region (the point of soft assignment; only N=0 leaves -1 everywhere). Zhang et al.
    (CSL, AAAI 2024), Eq. 2.

    When ``size`` differs from R's resolution, R (not R·V) is resized bilinearly first, with
    the sampling positions of ``F.interpolate(mode="bilinear", align_corners=False)`` (the
    Mask2Former convention; values agree with it to float rounding). Two exact
    implementations give identical labels:

    * ``method="dense"`` resizes ``chunk_regions`` regions at a time and keeps a running
      maximum. Its extra memory is much more than the chunk itself, because the bilinear
      resize and the product with V make full-size temporaries: at 2160x3840 with N=100
      from 540x960, ``scripts/measure_memory.py`` measured 1.1 GB with ``chunk_regions=1``,
      1.4 GB with 4 and 2.7 GB with the default 16 (roughly (32 + 3.4·chunk_regions)·H·W
      float32 values per image);
    * ``method="pruned"`` (``"auto"``) bounds every region on every low-resolution cell
      (bilinear weights are convex) and evaluates only the candidates that can win in
      cells where more than one can — usually a small part of the pixels. On CPU inputs
      (``backend`` "auto" with at least ``posthoc.kernels.SMALL`` elements, or "numba")
      this is one compiled pass over the cell rows (:mod:`posthoc.kernels._numba_assign`);
      elsewhere torch ops, which fall back to the dense method when the scores overlap so
      much that pruning does not pay. The same 4K case took 0.18 GB extra.

    Args:
        region_scores: R, (B,N,h,w) or (N,h,w) float, probabilities in [0,1].
        validity: V, (B,N) or (N,) float, probabilities in [0,1].
        size: optional output (H,W); default R's (h,w).
        backend: kernel backend for :func:`posthoc.kernels.weighted_argmax`.
        chunk_regions: regions resized at once by the dense method (and the memory budget,
            in units of H·W/4 values, of the pruned method's candidate evaluation).
        method: ``"auto"`` / ``"pruned"`` or ``"dense"`` (only matters when resizing).

    Returns:
        (B,H,W) int64 labels in [0,N) ((H,W) for unbatched input); numpy in -> numpy out.

    Raises:
        DTypeError, ShapeError, NonFiniteError, ValueRangeError: bad input (see message).

    Two regions on a 1x3 image; region 1 is twice as valid, so it wins where its score is
    at least half of region 0's:

    >>> import torch
    >>> R = torch.tensor([[[0.9, 0.6, 0.2]], [[0.1, 0.5, 0.8]]])  # (N,h,w)
    >>> soft_assign(R, torch.tensor([0.5, 1.0])).tolist()
    [[0, 1, 1]]
    >>> soft_assign(R, torch.tensor([0.5, 1.0]), size=(2, 6)).tolist()
    [[0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
    """
    r, v, was_numpy, batched = _check_inputs(region_scores, validity, check_scores=False)
    B, N, h, w = r.shape
    H, W = check_size(size, (h, w))
    chunk = _check_chunk(chunk_regions)
    if method not in ("auto", "pruned", "dense"):
        raise ValueRangeError(f"method must be 'auto', 'pruned' or 'dense'; got {method!r}")
    if N == 0 or (H, W) == (h, w):
        # the [0,1] check of R runs inside the kernel's single read of R (no extra pass)
        lab = kernels.weighted_argmax(
            r.contiguous(), v.contiguous(), backend=backend, value_range=(0.0, 1.0), name="region_scores"
        )
        if lab.shape[-2:] != (H, W):  # N == 0 with a size: -1 everywhere at the output size
            lab = torch.full((B, H, W), -1, dtype=torch.int64, device=r.device)
    else:
        if h == 0 or w == 0:
            raise ShapeError(
                f"region_scores must have a non-empty spatial size to be resized; got {shape_str(r.shape)}"
            )
        which = kernels.resolve_backend(backend, r.device, B * N * h * w) if method != "dense" else "dense"
        if which != "numba":  # the numba kernel checks the range while it reads R
            check_range(r, "region_scores", 0.0, 1.0)
        grid = _Grid(h, w, H, W, r.device)
        if which == "numba":
            lab = _soft_assign_numba(r, v, grid)
        elif method == "dense":
            lab = _soft_assign_dense(r, v, grid, chunk, backend)
        else:
            lab = _soft_assign_pruned(r, v, grid, budget=chunk * max(H * W // 4, 1))
            if lab is None:
                lab = _soft_assign_dense(r, v, grid, chunk, backend)
    lab = lab.long()
    if not batched:
        lab = lab[0]
    return restore(lab, was_numpy)


@torch.no_grad()
def hard_assign(
    region_scores: ArrayT,
    validity: Any,
    mask_threshold: float = 0.5,
    validity_threshold: float = 0.8,
    *,
    size: Any = None,
    chunk_regions: int = 16,
) -> ArrayT:
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

    With the default validity threshold (0.8) only region 1 is kept; with 0.4 both are,
    and region 1 (more valid) is painted last where its mask (R > 0.5) is on:

    >>> import torch
    >>> R = torch.tensor([[[0.9, 0.6, 0.2]], [[0.1, 0.5, 0.8]]])  # (N,h,w)
    >>> V = torch.tensor([0.5, 1.0])
    >>> hard_assign(R, V).tolist()
    [[-1, -1, 1]]
    >>> hard_assign(R, V, validity_threshold=0.4).tolist()
    [[0, 0, 1]]
    """
    r, v, was_numpy, batched = _check_inputs(region_scores, validity)
    for name, t in (("mask_threshold", mask_threshold), ("validity_threshold", validity_threshold)):
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0.0 <= float(t) <= 1.0):
            raise ValueRangeError(f"{name} must be a number in [0,1]; got {t!r}")
    B, N, h, w = r.shape
    H, W = check_size(size, (h, w))
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


_MODES = ("soft", "hard")


def assign_labels(
    region_scores: ArrayT,
    validity: Any,
    *,
    size: Any = None,
    mode: str = "soft",
    mask_threshold: float = 0.5,
    validity_threshold: float = 0.8,
    split: bool = True,
    connectivity: int = 8,
    min_size: int = 0,
    backend: str = "auto",
) -> ArrayT:
    """Soft region proposals -> the final label map: assignment, then the mask split.

    This is the one place where proposals become regions (docs/architecture.md, data flow): proposal
    sources call it to finish their :class:`posthoc.Proposals` (``labels_final=True``) and
    :class:`posthoc.Pipeline` calls it for proposals whose labels are not final.

    * ``mode="soft"``: :func:`soft_assign` (CSL scheme 2, Eq. 2): every pixel gets a region.
    * ``mode="hard"``: :func:`hard_assign` (Mask2Former / EntitySeg baseline), -1 where no
      kept mask covers a pixel.
    * ``split``: :func:`posthoc.split_components` (CSL mask split at inference) with
      ``connectivity`` and ``min_size``.

    Args:
        region_scores: (B,N,h,w) float probabilities in [0,1].
        validity: (B,N) float probabilities in [0,1].
        size: (H, W) of the label map (R is upsampled bilinearly); None = (h, w).
        mode: ``"soft"`` or ``"hard"``.
        mask_threshold, validity_threshold: :func:`hard_assign` thresholds.
        split, connectivity, min_size: :func:`posthoc.split_components` settings.
        backend: kernel backend of :func:`soft_assign`.

    Returns:
        (B,H,W) int64 labels, -1 = unassigned; numpy in -> numpy out.

    Region 0 covers two separate pixels of a 1x5 image, so the split makes it two regions:

    >>> import torch
    >>> r0 = torch.tensor([0.9, 0.1, 0.9, 0.1, 0.1])
    >>> R = torch.stack([r0, 1 - r0]).reshape(1, 2, 1, 5)
    >>> assign_labels(R, torch.ones(1, 2), split=False).tolist()
    [[[0, 1, 0, 1, 1]]]
    >>> assign_labels(R, torch.ones(1, 2)).tolist()
    [[[0, 1, 2, 3, 3]]]
    """
    from .components import split_components

    if mode not in _MODES:
        raise ValueRangeError(f"mode must be one of {_MODES}; got {mode!r}")
    if mode == "soft":
        labels = soft_assign(region_scores, validity, size=size, backend=backend)
    else:
        labels = hard_assign(region_scores, validity, mask_threshold, validity_threshold, size=size)
    if split:
        labels = split_components(labels, connectivity, min_size)
    return labels
