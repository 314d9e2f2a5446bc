"""Per-pixel anomaly scores from semantic logits, and SML's post-processing.

Sign convention: every score function here returns an *anomaly* score, higher = more
anomalous. Value domains:

=============================  ==================================  ============
function                       definition                          range
=============================  ==================================  ============
:func:`msp`                    1 - max_k softmax(l)_k              [0, 1-1/K]
:func:`max_logit`              -max_k l_k                          any
:func:`entropy`                -sum_k p_k log p_k (/log K)         [0, log K] ([0,1] normalized)
:func:`energy`                 -T logsumexp(l/T)                   any
:func:`standardized_max_logit` -(max_k l_k - mu_c)/sigma_c         any
=============================  ==================================  ============

Unbounded scores must be calibrated globally (fitted once on data) before fusion; that
is the teacher adapters' job (docs/architecture.md "Scores").

SML follows the official code of Jung et al., "Standardized Max Logits" (ICCV 2021),
github.com/shjung13/Standardized-max-logits: class statistics of the max logit over
pixels predicted as the class (``calculate_statistics.py``: mean and unbiased variance),
boundary suppression (width 4, 4 iterations, expansion radii 3,2,1,0; a boundary pixel
takes the mean of its non-boundary 3x3 neighbours) and dilated smoothing (7x7 Gaussian,
sigma 1, dilation 6, replicate padding 18) (``network/deepv3.py``).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DTypeError, ShapeError, ValueRangeError
from .validation import (
    as_float32,
    as_torch,
    check_finite,
    check_float,
    check_int,
    check_ndim,
    restore,
    shape_str,
    to_device,
)

__all__ = [
    "SMLStats",
    "boundary_suppression",
    "dilated_smoothing",
    "energy",
    "entropy",
    "fit_sml_stats",
    "max_logit",
    "msp",
    "standardized_max_logit",
]

logger = logging.getLogger(__name__)


def _logits(x: Any, name: str = "logits") -> tuple[torch.Tensor, bool, bool]:
    """(B,K,H,W) or (K,H,W) float finite logits -> float32 (B,K,H,W), was_numpy, batched."""
    t, was_numpy = as_torch(x, name)
    check_float(t, name)
    check_ndim(t, name, (3, 4), "(B,K,H,W) or (K,H,W)")
    batched = t.ndim == 4
    t = as_float32(t)
    check_finite(t, name)
    if t.shape[-3] == 0:
        raise ShapeError(f"{name} must have at least one class (K >= 1); got shape {shape_str(t.shape)}")
    return (t if batched else t.unsqueeze(0)), was_numpy, batched


def _out(y: torch.Tensor, was_numpy: bool, batched: bool) -> Any:
    return restore(y if batched else y[0], was_numpy)


@torch.no_grad()
def msp(logits: Any) -> Any:
    """Maximum-softmax-probability anomaly score, ``1 - max_k softmax(l)_k``.

    Hendrycks & Gimpel (ICLR 2017), as used by SML's ``score_mode=msp``.

    Args:
        logits: (B,K,H,W) or (K,H,W) float semantic logits, any range, finite.

    Returns:
        (B,1,H,W) (or (1,H,W)) float32 in [0, 1-1/K], higher = more anomalous.

    >>> msp(torch.zeros(4, 1, 2)).tolist()  # (K,H,W): equal logits give the maximum, 1 - 1/K
    [[[0.75, 0.75]]]
    """
    t, was_numpy, batched = _logits(logits)
    return _out(1.0 - torch.softmax(t, dim=1).amax(dim=1, keepdim=True), was_numpy, batched)


@torch.no_grad()
def max_logit(logits: Any) -> Any:
    """Negated maximum logit, ``-max_k l_k`` (Hendrycks et al., "Scaling OOD detection", 2022).

    Args:
        logits: (B,K,H,W) or (K,H,W) float semantic logits, any range, finite.

    Returns:
        (B,1,H,W) (or (1,H,W)) float32, any range, higher = more anomalous.
    """
    t, was_numpy, batched = _logits(logits)
    return _out(-t.amax(dim=1, keepdim=True), was_numpy, batched)


@torch.no_grad()
def entropy(logits: Any, *, normalized: bool = False) -> Any:
    """Entropy of the softmax, ``-sum_k p_k log p_k``.

    Args:
        logits: (B,K,H,W) or (K,H,W) float semantic logits, any range, finite.
        normalized: divide by log K so the score lies in [0,1] (K=1 gives 0).

    Returns:
        (B,1,H,W) (or (1,H,W)) float32 in [0, log K] (or [0,1] when ``normalized``),
        higher = more anomalous.
    """
    t, was_numpy, batched = _logits(logits)
    logp = torch.log_softmax(t, dim=1)
    h = (-(logp.exp() * logp).sum(dim=1, keepdim=True)).clamp_min(0.0)
    if normalized:
        k = t.shape[1]
        h = h / math.log(k) if k > 1 else torch.zeros_like(h)
        h = h.clamp(0.0, 1.0)
    return _out(h, was_numpy, batched)


@torch.no_grad()
def energy(logits: Any, *, temperature: float = 1.0) -> Any:
    """Free energy, ``E = -T logsumexp(l / T)`` (Liu et al., "Energy-based OOD detection", NeurIPS 2020).

    Higher energy = more anomalous (the paper's sign: in-distribution pixels have low energy).

    Args:
        logits: (B,K,H,W) or (K,H,W) float semantic logits, any range, finite.
        temperature: T > 0.

    Returns:
        (B,1,H,W) (or (1,H,W)) float32, any range, higher = more anomalous.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueRangeError(f"temperature must be a positive number; got {temperature!r}")
    t, was_numpy, batched = _logits(logits)
    T = float(temperature)
    return _out(-T * torch.logsumexp(t / T, dim=1, keepdim=True), was_numpy, batched)


class SMLStats(NamedTuple):
    """Per-class statistics of the max logit (SML ``calculate_statistics.py``).

    Attributes:
        mean: (K,) float64, mean max logit over pixels predicted as class k.
        std: (K,) float64, its standard deviation (square root of the unbiased variance).
        count: (K,) int64, number of pixels predicted as class k.
    """

    mean: Any
    std: Any
    count: Any


@torch.no_grad()
def fit_sml_stats(logits: Any, *, num_classes: int | None = None, min_std: float = 1e-6) -> SMLStats:
    """Fit SML class statistics: mean and std of the max logit over pixels predicted as each class.

    Follows the official ``calculate_statistics.py`` (prediction = argmax logit; var with
    Bessel's correction, like ``torch.var``). Statistics are merged across batches exactly
    (Chan et al. parallel mean/M2 update), so any iterable of batches gives the same
    result as one big batch up to rounding. A class never predicted (or predicted only
    once) has no statistics: it gets the pooled mean/std over all pixels and a warning is
    logged. ``std`` is clamped below at ``min_std``.

    Args:
        logits: (B,K,H,W) or (K,H,W) float logits, or an iterable of such batches
            (numpy or torch, e.g. a generator over a data set).
        num_classes: K; default the channel count of the first batch.
        min_std: lower bound on the returned std (> 0).

    Returns:
        :class:`SMLStats` of numpy arrays if the (first) batch was numpy, else CPU tensors.
    """
    if isinstance(logits, (np.ndarray, torch.Tensor)):
        batches: Iterable = [logits]
    elif isinstance(logits, Iterable):
        batches = logits
    else:
        raise DTypeError(
            f"logits must be a (B,K,H,W) array/tensor or an iterable of them; got {type(logits).__name__}"
        )
    if not min_std > 0:
        raise ValueRangeError(f"min_std must be > 0; got {min_std!r}")
    K = num_classes
    cnt: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None
    g_cnt, g_mean, g_m2 = 0, 0.0, 0.0
    first_numpy = None
    for i, batch in enumerate(batches):
        t, was_numpy, _ = _logits(batch, f"logits[{i}]")
        if first_numpy is None:
            first_numpy = was_numpy
        if K is None:
            K = t.shape[1]
        if t.shape[1] != K:
            raise ShapeError(f"logits[{i}] must have K={K} classes; got shape {shape_str(t.shape)}")
        if cnt is None:
            cnt = torch.zeros(K, dtype=torch.float64)
            mean = torch.zeros(K, dtype=torch.float64)
            m2 = torch.zeros(K, dtype=torch.float64)
        assert cnt is not None and mean is not None and m2 is not None  # set together on the first batch
        mx, pred = t.max(dim=1)
        mx = mx.reshape(-1).double().cpu()
        pred = pred.reshape(-1).cpu()
        if mx.numel() == 0:
            continue
        n_b = torch.bincount(pred, minlength=K).double()
        s_b = torch.bincount(pred, weights=mx, minlength=K)
        mean_b = s_b / n_b.clamp_min(1)
        m2_b = torch.bincount(pred, weights=(mx - mean_b[pred]) ** 2, minlength=K)
        tot = cnt + n_b
        delta = mean_b - mean
        safe = tot.clamp_min(1)
        mean = mean + delta * n_b / safe
        m2 = m2 + m2_b + delta**2 * cnt * n_b / safe
        cnt = tot
        # pooled statistics (fallback for classes without data)
        nb, mb = mx.numel(), float(mx.mean())
        m2b = float(((mx - mb) ** 2).sum())
        d = mb - g_mean
        g_tot = g_cnt + nb
        g_mean += d * nb / g_tot
        g_m2 += m2b + d * d * g_cnt * nb / g_tot
        g_cnt = g_tot
    if cnt is None or mean is None or m2 is None:
        raise ValueRangeError("logits must hold at least one batch; got an empty iterable")
    if g_cnt < 2:
        raise ValueRangeError(f"logits must hold at least 2 pixels to fit statistics; got {g_cnt}")
    var = m2 / (cnt - 1).clamp_min(1)
    std = var.sqrt()
    missing = cnt < 2
    if bool(missing.any()):
        g_std = math.sqrt(g_m2 / (g_cnt - 1))
        logger.warning(
            "fit_sml_stats: classes %s were predicted on fewer than 2 pixels; using pooled mean %.4g / std %.4g",
            missing.nonzero().flatten().tolist(), g_mean, g_std,
        )
        mean = torch.where(missing, torch.full_like(mean, g_mean), mean)
        std = torch.where(missing, torch.full_like(std, g_std), std)
    std = std.clamp_min(float(min_std))
    count = cnt.long()
    if first_numpy:
        return SMLStats(mean.numpy(), std.numpy(), count.numpy())
    return SMLStats(mean, std, count)


@torch.no_grad()
def standardized_max_logit(logits: Any, mean: Any, std: Any, *, anomaly: bool = True) -> Any:
    """Standardized max logit (SML, Jung et al. ICCV 2021, Eq. 1 / official ``deepv3.py``).

    ``SML(p) = (max_k l_k(p) - mu_c) / sigma_c`` with ``c = argmax_k l_k(p)``.

    Args:
        logits: (B,K,H,W) or (K,H,W) float logits, any range, finite.
        mean: (K,) class means of the max logit (from :func:`fit_sml_stats`).
        std: (K,) class standard deviations, > 0.
        anomaly: return the anomaly score ``-SML`` (default; higher = more anomalous, the
            sign the official evaluation uses); ``False`` returns SML itself.

    Returns:
        (B,1,H,W) (or (1,H,W)) float32, any range.
    """
    t, was_numpy, batched = _logits(logits)
    K = t.shape[1]
    mu, mu_np = as_torch(mean, "mean")
    sd, sd_np = as_torch(std, "std")
    mu = to_device(mu, mu_np, t, "mean", "logits")
    sd = to_device(sd, sd_np, t, "std", "logits")
    for name, s in (("mean", mu), ("std", sd)):
        check_float(s, name)
        if s.ndim != 1 or s.shape[0] != K:
            raise ShapeError(
                f"{name} must be (K,)=({K},) matching logits {shape_str(t.shape)}; got {shape_str(s.shape)}"
            )
        check_finite(s, name)
    if sd.numel() and float(sd.min()) <= 0:
        raise ValueRangeError(f"std must be > 0; got minimum {float(sd.min()):g}")
    mx, pred = t.max(dim=1)
    sml = (mx - mu.float()[pred]) / sd.float()[pred]
    y = (-sml if anomaly else sml).unsqueeze(1)
    return _out(y, was_numpy, batched)


# ----------------------------------------------------------------------------- SML post-processing


def _shift_reduce(x: torch.Tensor, dim: int, op) -> torch.Tensor:
    """op(x, left neighbour, right neighbour) along ``dim``; outside the image is ignored
    (kornia's 'geodesic' border). Pure slicing, no padding or pooling."""
    out = x.clone()
    n = x.shape[dim]
    if n > 1:
        hi = out.narrow(dim, 1, n - 1)
        hi.copy_(op(hi, x.narrow(dim, 0, n - 1)))
        lo = out.narrow(dim, 0, n - 1)
        lo.copy_(op(lo, x.narrow(dim, 1, n - 1)))
    return out


def _dilate_cross(x: torch.Tensor) -> torch.Tensor:
    """Grey dilation with the 3x3 cross (kornia 'geodesic' border). x (B,1,H,W), any real dtype."""
    return torch.maximum(_shift_reduce(x, -2, torch.maximum), _shift_reduce(x, -1, torch.maximum))


def _erode_square(x: torch.Tensor) -> torch.Tensor:
    """Grey erosion with the 3x3 square (border ignored): separable 1x3 then 3x1 minimum."""
    return _shift_reduce(_shift_reduce(x, -1, torch.minimum), -2, torch.minimum)


def _box3_replicate(x: torch.Tensor) -> torch.Tensor:
    """3x3 sum with replicate padding of (B,1,H,W) x, as separable slice additions."""
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    r = xp[..., :, :-2] + xp[..., :, 1:-1] + xp[..., :, 2:]
    return r[..., :-2, :] + r[..., 1:-1, :] + r[..., 2:, :]


def _image_4d(x: Any, name: str) -> tuple[torch.Tensor, bool, tuple]:
    t, was_numpy = as_torch(x, name)
    check_float(t, name)
    shape = tuple(t.shape)
    if t.ndim == 4:
        if t.shape[1] != 1:
            raise ShapeError(f"{name} must be (B,1,H,W), (B,H,W) or (H,W); got shape {shape_str(shape)}")
        t4 = t
    elif t.ndim == 3:
        t4 = t.unsqueeze(1)
    elif t.ndim == 2:
        t4 = t.reshape(1, 1, *shape)
    else:
        raise ShapeError(f"{name} must be (B,1,H,W), (B,H,W) or (H,W); got {t.ndim} axes with shape {shape_str(shape)}")
    t4 = as_float32(t4)
    check_finite(t4, name)
    return t4, was_numpy, shape


@torch.no_grad()
def boundary_suppression(
    sml: Any, predictions: Any, width: int = 4, iterations: int = 4, *, smoothing: bool = False
) -> Any:
    """SML boundary suppression (official ``BoundarySuppressionWithSmoothing``, first stage).

    Class boundaries of ``predictions`` are the pixels where the cross-dilation and the
    3x3-square erosion of the prediction map differ. In iteration i (of ``iterations``) the
    boundaries are expanded by a diamond of radius ``width - (width//iterations)*i - 1``
    (radius 0 in the last iteration): 3, 2, 1, 0 for the defaults. Every pixel inside the
    expanded boundary takes the mean of the current values of its non-boundary 3x3
    neighbours (replicate padding; unchanged if it has none); other pixels keep their value.

    Args:
        sml: (B,1,H,W), (B,H,W) or (H,W) float scores (SML or its negation; the operation is
            linear and sign-symmetric), finite.
        predictions: (B,H,W) (or (H,W)) integer class map (argmax of the logits).
        width: boundary width (>= 0); must be divisible by ``iterations``.
        iterations: number of iterations (>= 1 unless width is 0).
        smoothing: also apply :func:`dilated_smoothing` afterwards (the official default).

    Returns:
        Float32 with the shape of ``sml``; same kind/device.
    """
    x, was_numpy, shape = _image_4d(sml, "sml")
    pred, p_np = as_torch(predictions, "predictions")
    pred = to_device(pred, p_np, x, "predictions", "sml")
    check_int(pred, "predictions")
    want = shape_str((x.shape[0], x.shape[2], x.shape[3]))
    p3 = pred if pred.ndim == 3 else (pred.unsqueeze(0) if pred.ndim == 2 else None)
    if p3 is None or p3.shape != (x.shape[0], x.shape[2], x.shape[3]):
        raise ShapeError(
            f"predictions must be (B,H,W)={want} matching sml {shape_str(shape)}; got {shape_str(pred.shape)}"
        )
    for name, v in (("width", width), ("iterations", iterations)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueRangeError(f"{name} must be a non-negative int; got {v!r}")
    if iterations == 0 and width != 0:
        raise ValueRangeError(f"iterations must be >= 1 when width > 0; got iterations=0, width={width}")
    if iterations and width % iterations:
        raise ValueRangeError(f"width must be divisible by iterations; got width={width}, iterations={iterations}")
    out = x
    if x.numel():
        lab = p3.unsqueeze(1)
        boundaries = _dilate_cross(lab) != _erode_square(lab)  # bool (B,1,H,W)
        step = width // iterations if iterations else 0
        for it in range(iterations):
            radius = 0 if (width == 0 or it == iterations - 1) else width - step * it - 1
            expanded = boundaries.to(torch.uint8)
            for _ in range(radius):  # diamond of radius r = r cross dilations
                expanded = _dilate_cross(expanded)
            non_boundary = (expanded == 0).to(torch.float32)
            prev = out
            y = _box3_replicate(prev * non_boundary)
            num = _box3_replicate(non_boundary)  # small integers, exact in float32
            avg = torch.where(num == 0, prev, y / num.clamp_min(1))
            out = torch.where(non_boundary == 0, avg, prev)
    if smoothing:
        out = _dilated_smoothing_4d(out, 7, 1.0, 6)
    return restore(out.reshape(shape), was_numpy)


def _gaussian_1d(size: int, sigma: float, device) -> torch.Tensor:
    """Normalized 1-D Gaussian; the official normalized 2-D kernel is its outer product."""
    c = (size - 1) / 2.0
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - c) ** 2) / (2.0 * sigma**2))
    return (g / g.sum()).float().to(device)


def _dilated_smoothing_4d(x: torch.Tensor, kernel_size: int, sigma: float, dilation: int) -> torch.Tensor:
    """Replicate padding dilation*(k//2), then the separable dilated Gaussian as two 1-D
    passes of shifted-slice multiply-adds (14 taps instead of 49; equal up to float rounding)."""
    if x.numel() == 0:
        return x
    pad = dilation * (kernel_size // 2)
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate") if pad else x
    g = _gaussian_1d(kernel_size, sigma, x.device).tolist()
    H, W = x.shape[-2:]
    acc = g[0] * xp[..., :, 0:W]
    for i in range(1, kernel_size):  # along W, dilated taps as shifted slices
        acc = acc + g[i] * xp[..., :, i * dilation : i * dilation + W]
    out = g[0] * acc[..., 0:H, :]
    for i in range(1, kernel_size):  # along H
        out = out + g[i] * acc[..., i * dilation : i * dilation + H, :]
    return out


@torch.no_grad()
def dilated_smoothing(x: Any, kernel_size: int = 7, sigma: float = 1.0, dilation: int = 6) -> Any:
    """SML dilated smoothing: a normalized Gaussian convolved with dilation after replicate padding.

    Official ``BoundarySuppressionWithSmoothing`` second stage: 7x7 Gaussian, sigma 1,
    dilation 6, replicate padding ``dilation * (kernel_size // 2)`` = 18; output size equals
    input size.

    Args:
        x: (B,1,H,W), (B,H,W) or (H,W) float scores, finite.
        kernel_size: odd Gaussian size (>= 1).
        sigma: Gaussian standard deviation (> 0).
        dilation: dilation rate (>= 1).

    Returns:
        Float32 with the shape of ``x``; same kind/device.
    """
    t, was_numpy, shape = _image_4d(x, "x")
    if (isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1
            or kernel_size % 2 == 0):
        raise ValueRangeError(f"kernel_size must be a positive odd int; got {kernel_size!r}")
    if isinstance(dilation, bool) or not isinstance(dilation, (int, np.integer)) or dilation < 1:
        raise ValueRangeError(f"dilation must be a positive int; got {dilation!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueRangeError(f"sigma must be a positive number; got {sigma!r}")
    out = _dilated_smoothing_4d(t, int(kernel_size), float(sigma), int(dilation))
    return restore(out.reshape(shape), was_numpy)
