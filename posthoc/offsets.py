"""Offset-vector resampling (OVeNet Eq. 2-4) and a post-hoc offset field from proposals.

OVeNet (Alexandropoulos et al., "OVeNet: Offset Vector Network for Semantic
Segmentation") predicts, besides the segmentation S_i, an offset field o and a confidence
F; the final map is

    S_s(p) = S_i(p + o(p))                       (Eq. 2-3, bilinear sampling, border padding)
    S_f(p) = (1 - F(p)) * S_i(p) + F(p) * S_s(p)  (Eq. 4)

posthoc computes Eq. 4 as ``S_i + F * (S_s - S_i)`` (algebraically equal) and samples in
pixel coordinates with clamping to the border, so a zero offset is an *exact* identity
(bit for bit) — OVeNet's own ``grid_sample`` call is not, because its grid and
``align_corners`` disagree.

Post hoc there is no trained offset head. :func:`offsets_from_proposals` builds an
OVeNet-*style* field from region proposals (it is not OVeNet): boundary pixels point
toward the interior of their own region, so the resampled score of a pixel near a region
boundary is read from a pixel that is safely inside the region.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.ndimage as ndi
import torch

from . import kernels
from .errors import NonFiniteError, ShapeError, ValueRangeError
from .types import ArrayT
from .validation import (
    as_float32,
    as_scores_4d,
    as_torch,
    check_finite,
    check_float,
    check_int,
    check_labels,
    check_ndim,
    check_range,
    compact_labels,
    restore,
    shape_str,
    to_device,
)

__all__ = ["offset_resample", "offsets_from_proposals"]

logger = logging.getLogger(__name__)


def _bilinear_border(x: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Sample (B,C,H,W) ``x`` at pixel coordinates px, py (B,H,W), bilinear, border clamp.

    Integer coordinates reproduce the input exactly: weights are (1,0) and 0*v adds 0.
    """
    B, C, H, W = x.shape
    px = px.clamp(0.0, float(W - 1))
    py = py.clamp(0.0, float(H - 1))
    x0 = px.floor()
    y0 = py.floor()
    wx = (px - x0).unsqueeze(1)
    wy = (py - y0).unsqueeze(1)
    x0i = x0.long()
    y0i = y0.long()
    x1i = (x0i + 1).clamp_max(W - 1)
    y1i = (y0i + 1).clamp_max(H - 1)
    flat = x.reshape(B, C, H * W)

    def g(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        idx = (yi * W + xi).reshape(B, 1, H * W).expand(B, C, H * W)
        return torch.gather(flat, 2, idx).reshape(B, C, H, W)

    v00, v01, v10, v11 = g(y0i, x0i), g(y0i, x1i), g(y1i, x0i), g(y1i, x1i)
    top = v00 * (1.0 - wx) + v01 * wx
    bot = v10 * (1.0 - wx) + v11 * wx
    val = top * (1.0 - wy) + bot * wy
    # bilinear interpolation is convex; clamp away the rounding that could leave the corner range
    lo = torch.minimum(torch.minimum(v00, v01), torch.minimum(v10, v11))
    hi = torch.maximum(torch.maximum(v00, v01), torch.maximum(v10, v11))
    return torch.minimum(torch.maximum(val, lo), hi)


def _check_offset_inputs(scores: Any, offsets: Any, confidence: Any, check_values: bool):
    """Validate shapes/dtypes (and, with ``check_values``, values) -> (s4, o4, f4, was_numpy, shape)."""
    s, was_numpy, shape = as_scores_4d(scores, "scores", check=check_values)
    batched = len(shape) == 4
    B, _, H, W = s.shape
    o, o_np = as_torch(offsets, "offsets")
    o = to_device(o, o_np, s, "offsets", "scores")
    check_float(o, "offsets")
    o4 = o if o.ndim == 4 else (o.unsqueeze(0) if (o.ndim == 3 and not batched) else None)
    want_o = f"(B,2,H,W)=({B},2,{H},{W})" if batched else f"(2,H,W)=(2,{H},{W})"
    if o4 is None or o4.shape[1] != 2:
        raise ShapeError(f"offsets must be {want_o} (channel 0 = x, 1 = y); got shape {shape_str(o.shape)}")
    if o4.shape[0] != B or o4.shape[-2:] != (H, W):
        axis = "batch axis (0)" if o4.shape[0] != B else "spatial axes (H,W)"
        raise ShapeError(f"offsets must be {want_o} matching scores; got {shape_str(o.shape)} (mismatch in the {axis})")
    o4 = as_float32(o4)
    if check_values:
        check_finite(o4, "offsets")
    f, f_np = as_torch(confidence, "confidence")
    f = to_device(f, f_np, s, "confidence", "scores")
    check_float(f, "confidence")
    want_f = f"(B,1,H,W)=({B},1,{H},{W})" if batched else f"(1,H,W) or (H,W)=({H},{W})"
    if batched:
        f4 = f if f.ndim == 4 else None
    else:
        f4 = (f.reshape(1, 1, H, W)
              if (f.ndim == 2 or (f.ndim == 3 and f.shape[0] == 1)) and f.shape[-2:] == (H, W) else None)
    if f4 is None or f4.shape[1] != 1:
        raise ShapeError(f"confidence must be {want_f}; got shape {shape_str(f.shape)}")
    if f4.shape[0] != B or f4.shape[-2:] != (H, W):
        axis = "batch axis (0)" if f4.shape[0] != B else "spatial axes (H,W)"
        raise ShapeError(
            f"confidence must be {want_f} matching scores; got {shape_str(f.shape)} (mismatch in the {axis})"
        )
    f4 = as_float32(f4)
    if check_values:
        check_range(f4, "confidence", 0.0, 1.0)
    return s, o4, f4, was_numpy, shape


def _resample_torch(s: torch.Tensor, o4: torch.Tensor, f4: torch.Tensor, units: str) -> torch.Tensor:
    """Eq. 2-4 with torch ops on the inputs' device (the fallback, and the semantics reference)."""
    B, _, H, W = s.shape
    ox, oy = o4[:, 0], o4[:, 1]
    if units == "normalized":
        ox = ox * ((W - 1) / 2.0)
        oy = oy * ((H - 1) / 2.0)
    ys = torch.arange(H, dtype=torch.float32, device=s.device).view(1, H, 1)
    xs = torch.arange(W, dtype=torch.float32, device=s.device).view(1, 1, W)
    sampled = _bilinear_border(s, xs + ox, ys + oy)
    out = s + f4 * (sampled - s)
    # Eq. 4 is a convex blend: keep it within [min(S, S_s), max(S, S_s)] despite rounding, so
    # probabilities stay in [0,1] (and a zero offset stays an exact identity)
    return torch.minimum(torch.maximum(out, torch.minimum(s, sampled)), torch.maximum(s, sampled))


def _contig32(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


@torch.no_grad()
def offset_resample(scores: ArrayT, offsets: Any, confidence: Any, units: str = "pixels", *,
                    backend: str = "auto") -> ArrayT:
    """Resample scores along an offset field and blend by confidence (OVeNet Eq. 2-4).

    ``S_s(p) = S(p + o(p))`` sampled bilinearly with border padding, then
    ``S_f = (1 - F) * S + F * S_s`` (computed as ``S + F * (S_s - S)``). A zero offset, or
    zero confidence, returns the input bit for bit (as float32).

    Args:
        scores: (B,C,H,W), (C,H,W) or (H,W) float scores, any range, finite.
        offsets: (B,2,H,W) (or (2,H,W) for unbatched scores) float, finite; channel 0 = x
            (along W), channel 1 = y (along H).
        confidence: (B,1,H,W) (or (1,H,W)/(H,W) for unbatched scores) float in [0,1].
        units: ``"pixels"`` or ``"normalized"`` (the ``grid_sample(align_corners=True)``
            convention: an offset of 2 spans the image, i.e. ``pixels = o * (size-1) / 2``).
        backend: ``"auto"`` (numba on CPU inputs of at least ``posthoc.kernels.SMALL``
            elements, else torch on the input's device), ``"numba"`` (CPU: one fused pass
            with the value checks folded in, see ``posthoc.kernels._numba_offsets``) or
            ``"torch"`` (gathers on any device). ``"triton"`` runs the on-device torch path
            (there is no Triton kernel for this op). All give the same floats.

    Returns:
        Float32 with the shape of ``scores``; numpy in -> numpy out, torch on its device.

    On a 1x4 image, pixel 0 reads one pixel to the right, pixel 1 half a pixel, and pixel
    3 has zero confidence:

    >>> import torch
    >>> S = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    >>> o = torch.zeros(2, 1, 4)
    >>> o[0] = torch.tensor([1.0, 0.5, 0.0, 0.0])  # x offsets
    >>> offset_resample(S, o, torch.tensor([[1.0, 1.0, 1.0, 0.0]])).tolist()
    [[1.0, 1.5, 2.0, 3.0]]
    >>> torch.equal(offset_resample(S, torch.zeros(2, 1, 4), torch.ones(1, 4)), S)  # exact identity
    True
    """
    if units not in ("pixels", "normalized"):
        raise ValueRangeError(f"units must be 'pixels' or 'normalized'; got {units!r}")
    s_dev = scores.device if isinstance(scores, torch.Tensor) else torch.device("cpu")
    numel = int(np.prod(getattr(scores, "shape", ()) or (0,)))
    which = kernels.resolve_backend(backend, s_dev, numel)
    fused = which == "numba"
    s, o4, f4, was_numpy, shape = _check_offset_inputs(scores, offsets, confidence, check_values=not fused)
    if s.numel() == 0:
        return restore(s.clone().reshape(shape), was_numpy)
    if not fused:
        return restore(_resample_torch(s, o4, f4, units).reshape(shape), was_numpy)
    B, C, H, W = s.shape
    nb = kernels._numba_offsets_mod()
    kernels._numba_threads()
    out = kernels._empty_cpu(tuple(s.shape), torch.float32)
    sx, sy = ((W - 1) / 2.0, (H - 1) / 2.0) if units == "normalized" else (1.0, 1.0)
    nbad = nb.resample_np(_contig32(s), _contig32(o4), _contig32(f4), sx, sy, out.numpy())
    if nbad:  # raise the error the unfused checks word (scores, then offsets, then confidence)
        _check_offset_inputs(scores, offsets, confidence, check_values=True)
        raise NonFiniteError("offset_resample inputs hold NaN/Inf or a confidence outside [0,1]")  # pragma: no cover
    return restore(out.reshape(shape), was_numpy)


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian (radius ceil(3 sigma), replicate border) as fixed-order multiply-adds.

    Written out instead of ``cv2.GaussianBlur`` because OpenCV's SIMD path rounds
    differently depending on buffer alignment, which made results differ by an ulp
    between identical calls.
    """
    r = max(1, int(np.ceil(3.0 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1, dtype=np.float64) / sigma) ** 2)
    k /= k.sum()
    out = x.astype(np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        xp = np.pad(out, pad, mode="edge")
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            sl = [slice(None), slice(None)]
            sl[axis] = slice(i, i + n)
            acc += w * xp[tuple(sl)]
        out = acc
    return out


def _boundary_map(lab: np.ndarray) -> np.ndarray:
    """(H,W) int labels -> bool map of pixels with a 4-neighbour of another label (-1 included)."""
    b = np.zeros(lab.shape, bool)
    d = lab[1:, :] != lab[:-1, :]
    b[1:, :] |= d
    b[:-1, :] |= d
    d = lab[:, 1:] != lab[:, :-1]
    b[:, 1:] |= d
    b[:, :-1] |= d
    return b


def _field_numpy(lb: np.ndarray, max_offset: float, boundary_width: float, smooth: float,
                 dev: np.ndarray | None, teacher_weight: float, offs: np.ndarray, conf: np.ndarray) -> None:
    """The offset field of one (H,W) image into ``offs`` (2,H,W) and ``conf`` (1,H,W) with numpy/scipy.

    The reference of the numba path (:func:`_field_numba`), used by ``backend="torch"``.
    """
    H, W = lb.shape
    assigned = lb >= 0
    bd = _boundary_map(lb)
    if not bd.any():  # one region or none: no boundary, nothing moves, zero confidence
        return
    # exact EDT (scipy); OpenCV's multithreaded distanceTransform is not bit-reproducible
    d = ndi.distance_transform_edt(~bd).astype(np.float32)
    ds = _gaussian_blur(d, float(smooth)) if smooth > 0 else d
    gy = np.gradient(ds, axis=0) if H > 1 else np.zeros_like(ds)
    gx = np.gradient(ds, axis=1) if W > 1 else np.zeros_like(ds)
    norm = np.sqrt(gx * gx + gy * gy)
    length = np.clip(max_offset - d, 0.0, max_offset)
    with np.errstate(invalid="ignore", divide="ignore"):
        ux = np.where(norm > 1e-6, gx / norm, 0.0)
        uy = np.where(norm > 1e-6, gy / norm, 0.0)
    ox = (ux * length).astype(np.float32)
    oy = (uy * length).astype(np.float32)
    ox[~assigned] = 0.0
    oy[~assigned] = 0.0
    # keep targets inside the pixel's own region
    yy, xx = np.mgrid[0:H, 0:W]
    for it in range(5):
        tx = np.clip(np.rint(xx + ox), 0, W - 1).astype(np.int64)
        ty = np.clip(np.rint(yy + oy), 0, H - 1).astype(np.int64)
        bad = (lb[ty, tx] != lb) & assigned
        if not bad.any():
            break
        scale = 0.0 if it == 4 else 0.5
        ox[bad] *= scale
        oy[bad] *= scale
    f = np.exp(-d / float(boundary_width)).astype(np.float32)
    f[~assigned] = 0.0
    if dev is not None:
        f = f * ((1.0 - teacher_weight) + teacher_weight * dev).astype(np.float32)
    offs[0], offs[1] = ox, oy
    conf[0] = np.clip(f, 0.0, 1.0)


def _gauss_taps(sigma: float) -> np.ndarray:
    """The float64 taps of :func:`_gaussian_blur` (radius ceil(3 sigma), normalised)."""
    r = max(1, int(np.ceil(3.0 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1, dtype=np.float64) / sigma) ** 2)
    k /= k.sum()
    return k


def _field_numba(nb: Any, lb: np.ndarray, max_offset: float, boundary_width: float, smooth: float,
                 teacher: np.ndarray | None, teacher_weight: float, offs: np.ndarray, conf: np.ndarray) -> None:
    """:func:`_field_numpy` with the compiled kernels: boundary + exact squared EDT (Meijster),
    the separable blur on the band where offsets can be non-zero, then
    gradient/length/halving/confidence fused in one pass. Same floats, except that a zero
    offset is always +0.0 (numpy's path can give -0.0) and the confidence may differ by an
    ulp where ``exp`` is evaluated per pixel (squared distances beyond its table). ``teacher``
    (C,H,W) float32: its deviation from the region means is computed inside the field pass
    (no deviation map)."""
    n2 = nb.boundary_edt_np(lb)
    if n2 is None:  # one region or none: no boundary, nothing moves, zero confidence
        offs.fill(0.0)
        conf.fill(0.0)
        return
    taps = _gauss_taps(float(smooth)) if smooth > 0 else None
    means = None if teacher is None else nb.teacher_means_np(lb, teacher)
    nb.offset_field_np(lb, n2, taps, max_offset, boundary_width, teacher, means, teacher_weight,
                       offs[0], offs[1], conf[0])


@torch.no_grad()
def offsets_from_proposals(
    labels: ArrayT,
    *,
    max_offset: float = 4.0,
    boundary_width: float = 3.0,
    teacher: Any = None,
    teacher_weight: float = 0.5,
    smooth: float = 1.0,
    backend: str = "auto",
) -> tuple[ArrayT, ArrayT]:
    """An OVeNet-style offset field and confidence derived from proposals (not OVeNet).

    For every assigned pixel p let ``d(p)`` be the Euclidean distance to the nearest region
    boundary pixel (a pixel with a 4-neighbour of a different label; image borders are not
    boundaries; exact Euclidean distance transform, ``scipy.ndimage``). The offset points along the
    (Gaussian-smoothed, ``smooth`` = sigma in pixels) gradient of d, i.e. away from the
    boundary into the region, with length ``max(0, max_offset - d(p))``: a boundary pixel
    reads from about ``max_offset`` pixels inside its region, interior pixels do not move.
    An offset whose target (rounded) lies in another region is halved until it does not
    (up to 4 times), else set to 0. Unassigned pixels (-1), and images with no boundary
    at all, get zero offset and confidence.

    Confidence ``F = exp(-d / boundary_width)`` is 1 on boundaries and decays inside. With
    a ``teacher`` map D (B,C,H,W) in [0,1], F is scaled by
    ``(1 - teacher_weight) + teacher_weight * dev`` where ``dev`` in [0,1] is the L1
    deviation of D(p) from its region mean (halved for C>1): pixels whose teacher score
    disagrees with their region are resampled more.

    Args:
        labels: (B,H,W) or (H,W) integer label map, -1 = unassigned.
        max_offset: maximum offset length in pixels (>= 0).
        boundary_width: confidence decay length in pixels (> 0).
        teacher: optional (B,C,H,W) (or (C,H,W)/(H,W) for unbatched labels) float scores in [0,1].
        teacher_weight: in [0,1], how much the teacher deviation modulates F.
        smooth: sigma (pixels) of the Gaussian applied to d before taking its gradient (>= 0).
        backend: ``"auto"`` (numba for images of at least ``posthoc.kernels.SMALL`` pixels),
            ``"numba"`` (boundary, exact EDT, blur and the per-pixel field as compiled
            passes, no per-region work) or ``"torch"`` (the numpy/scipy reference path);
            both compute on the CPU and give the same floats.

    Returns:
        ``(offsets, confidence)``: (B,2,H,W) float32 offsets in pixels (channel 0 = x,
        1 = y) and (B,1,H,W) float32 confidence in [0,1] ((2,H,W)/(1,H,W) unbatched);
        numpy in -> numpy out, torch on the labels' device (computed on CPU).

    Two regions side by side on a 1x12 image: the pixels at the boundary (5 and 6) point
    ``max_offset`` pixels into their own region, with confidence 1:

    >>> import torch
    >>> lab = torch.tensor([[0] * 6 + [1] * 6])
    >>> off, conf = offsets_from_proposals(lab, max_offset=2.0, smooth=0.0)
    >>> off[0, 0, 3:9].tolist(), conf[0, 0, 5:7].tolist()
    ([-0.0, -1.0, -2.0, 2.0, 1.0, 0.0], [1.0, 1.0])
    """
    lab, was_numpy = as_torch(labels, "labels")
    check_int(lab, "labels")
    check_ndim(lab, "labels", (2, 3), "(B,H,W) or (H,W)")
    # sparse or huge ids (2**40, RGB-encoded panoptic ids) are renumbered: memory stays bounded by the frame
    lab, _ = compact_labels(lab, check_labels(lab, "labels"))
    for name, v, lo in (("max_offset", max_offset, 0.0), ("smooth", smooth, 0.0)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < lo:
            raise ValueRangeError(f"{name} must be a finite number >= {lo:g}; got {v!r}")
    if isinstance(boundary_width, bool) or not isinstance(boundary_width, (int, float)) or not boundary_width > 0:
        raise ValueRangeError(f"boundary_width must be a positive number; got {boundary_width!r}")
    if isinstance(teacher_weight, bool) or not isinstance(teacher_weight, (int, float)) or not 0 <= teacher_weight <= 1:
        raise ValueRangeError(f"teacher_weight must be a number in [0,1]; got {teacher_weight!r}")
    batched = lab.ndim == 3
    lab3 = lab if batched else lab.unsqueeze(0)
    B, H, W = lab3.shape
    lab_np = lab3.detach().cpu().numpy()
    if lab_np.dtype not in (np.int32, np.int64):
        lab_np = lab_np.astype(np.int64)
    lab_np = np.ascontiguousarray(lab_np)

    which = kernels.resolve_backend(backend, torch.device("cpu"), B * H * W)
    nb = kernels._numba_offsets_mod() if which == "numba" else None
    if nb is not None and backend == "auto" and not nb.edt_fits(H, W):
        nb = None  # beyond the compiled EDT's int32 range: the numpy path (explicit "numba" raises)
    dev_map = None
    t32: np.ndarray | None = None  # the teacher for the numba field pass
    if teacher is not None:
        t, _, tshape = as_scores_4d(teacher, "teacher")
        if (len(tshape) == 4) != batched or t.shape[0] != B or t.shape[-2:] != (H, W):
            raise ShapeError(
                f"teacher must be {'(B,C,H,W)' if batched else '(C,H,W) or (H,W)'} matching labels "
                f"{shape_str(lab.shape)}; got {shape_str(tshape)}"
            )
        check_range(t, "teacher", 0.0, 1.0)
        # region means in float64 with bincount: exact enough and bit-reproducible (the result
        # feeds only this CPU-side confidence; the fast kernels may reorder float32 sums)
        if nb is not None:  # the numba field pass computes the deviation per pixel (no map)
            t32 = np.ascontiguousarray(t.detach().cpu().numpy())
        else:
            t_np = t.detach().cpu().numpy().astype(np.float64)
            C = t_np.shape[1]
            dev_map = np.zeros((B, H, W), np.float64)
            for b in range(B):
                lb = lab_np[b].reshape(-1)
                ok = lb >= 0
                if not ok.any():
                    continue
                n = int(lb.max()) + 1
                cnt = np.maximum(np.bincount(lb[ok], minlength=n), 1)
                acc = np.zeros(H * W)
                for c in range(C):
                    tc = t_np[b, c].reshape(-1)
                    mean_c = np.bincount(lb[ok], weights=tc[ok], minlength=n) / cnt
                    acc[ok] += np.abs(tc[ok] - mean_c[lb[ok]])
                dev_map[b] = np.clip(acc / (2.0 if C > 1 else 1.0), 0.0, 1.0).reshape(H, W)

    # the numba path writes every pixel; the numpy path only those of images with a boundary
    if nb is not None:  # fresh outputs on huge pages (fewer page faults; see kernels._empty_cpu)
        o_t, c_t = kernels._empty_cpu((B, 2, H, W), torch.float32), kernels._empty_cpu((B, 1, H, W), torch.float32)
        offs, conf = o_t.numpy(), c_t.numpy()
    else:
        offs, conf = np.zeros((B, 2, H, W), np.float32), np.zeros((B, 1, H, W), np.float32)
    if nb is not None:
        kernels._numba_threads()
    for b in range(B):  # per image (distance transforms run on the CPU)
        if H == 0 or W == 0:
            break
        if nb is not None:
            _field_numba(nb, lab_np[b], max_offset, boundary_width, smooth,
                         None if t32 is None else t32[b], teacher_weight, offs[b], conf[b])
        else:
            _field_numpy(lab_np[b], max_offset, boundary_width, smooth,
                         None if dev_map is None else dev_map[b], teacher_weight, offs[b], conf[b])
    o_t, c_t = torch.from_numpy(offs), torch.from_numpy(conf)
    if not was_numpy and lab.device.type != "cpu":
        o_t, c_t = o_t.to(lab.device), c_t.to(lab.device)
    if not batched:
        o_t, c_t = o_t[0], c_t[0]
    return restore(o_t, was_numpy), restore(c_t, was_numpy)

