"""Training-free peers of CSL2: Objectomaly, UGainS and Maskomaly as pure ops.

Each op refines (or, for Maskomaly, replaces) a teacher's anomaly map with region
information, like :func:`posthoc.fuse` does, so a benchmark can put them beside CSL2 on
the same teacher and the same proposals. The steps follow the papers *and* their official
code; where the two leave a step open, the docstring says which reading is implemented.

* :func:`objectomaly`: Song et al., "Objectomaly: Objectness-Aware Refinement for OoD
  Segmentation with Structural Consistency and Boundary Precision", arXiv 2507.07460
  (code hon121215/Objectomaly, ``anomaly_utils/anomaly_inference.py``).
* :func:`ugains` (+ :func:`farthest_point_sample`, :func:`ugains_prompts`,
  :func:`mask_nms`, :func:`ugains_fuse`): Nekrasov et al., "UGainS: Uncertainty Guided
  Anomaly Instance Segmentation", GCPR 2023 (code kumuji/ugains,
  ``ugains/models/sam_sampling.py``, ``sampler.py``).
* :func:`maskomaly`: Ackermann et al., "Maskomaly: Zero-Shot Mask Anomaly
  Segmentation", BMVC 2023 (code jan-ackermann/Maskomaly, ``maskomaly/model.py``).

All scores: higher = more anomalous, probabilities in [0,1] in and out.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import kernels
from .errors import DTypeError, ShapeError, ValueRangeError
from .validation import as_int_labels, as_torch, check_range, restore, shape_str

log = logging.getLogger(__name__)

__all__ = ["farthest_point_sample", "mask_nms", "maskomaly", "objectomaly", "ugains", "ugains_fuse",
           "ugains_prompts"]


# ----------------------------------------------------------------------------- checks


def _bool_masks(masks: Any, a: torch.Tensor, dims: str) -> torch.Tensor:
    """``masks`` as a bool torch tensor of shape (B,N,H,W) with B,H,W of the anomaly map ``a``."""
    m, _ = as_torch(masks, "masks")
    if m.dtype != torch.bool:
        raise DTypeError(f"masks must be bool ({dims}); got dtype {m.dtype}")
    if m.ndim != 4 or m.shape[0] != a.shape[0] or tuple(m.shape[-2:]) != tuple(a.shape[-2:]):
        raise ShapeError(f"masks must be ({dims}) with B,H,W of anomaly {shape_str(a.shape)}; "
                         f"got {shape_str(m.shape)}")
    return m


def _anomaly(x: Any, name: str = "anomaly") -> tuple[torch.Tensor, bool]:
    t, was_np = as_torch(x, name)
    if not t.is_floating_point():
        raise DTypeError(f"{name} must be a float tensor (B,1,H,W) in [0,1]; got dtype {t.dtype}")
    if t.ndim != 4 or t.shape[1] != 1:
        raise ShapeError(f"{name} must be (B,1,H,W) anomaly probabilities; got shape {shape_str(t.shape)}")
    t = t.float()
    check_range(t, name, 0.0, 1.0)  # one pass: NaN/Inf (NonFiniteError) and the range
    return t, was_np


def _labels(x: Any, ref: torch.Tensor, name: str = "labels", *, check_min: bool = True) -> torch.Tensor:
    """An integer (B,H,W) label map matching ``ref``, int64 (``check_min=False``: int32 kept, and the
    >= -1 check left to a kernel that reads the labels anyway)."""
    t, _ = as_torch(x, name)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise DTypeError(f"{name} must be an integer (B,H,W) label map (-1 = unassigned); got dtype {t.dtype}")
    b, _, h, w = ref.shape
    if t.ndim != 3 or tuple(t.shape) != (b, h, w):
        raise ShapeError(f"{name} must be (B,H,W) = {(b, h, w)} matching anomaly {shape_str(ref.shape)}; "
                         f"got {shape_str(t.shape)}")
    t = t.to(ref.device)
    if not check_min:
        return as_int_labels(t)
    t = t.long()
    if t.numel() and int(t.min()) < -1:
        _raise_below(name, int(t.min()))
    return t


def _raise_below(name: str, lo: int) -> None:
    raise ValueRangeError(f"{name} must be >= -1 (-1 = unassigned); got min {lo}")


def _positive_int(v: Any, name: str, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueRangeError(f"{name} must be an integer >= {lo}; got {v!r}")
    return int(v)


def _unit(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not 0.0 <= float(v) <= 1.0:
        raise ValueRangeError(f"{name} must be a number in [0,1]; got {v!r}")
    return float(v)


# ----------------------------------------------------------------------------- Objectomaly


def _region_mean_paint(a: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,H,W) scores, (B,H,W) labels -> each labelled pixel set to its region's mean; -1 keeps its score."""
    b = a.shape[0]
    out = a.clone()
    for i in range(b):
        lab = labels[i].reshape(-1)
        m = lab >= 0
        if not bool(m.any()):
            continue
        n = int(lab.max()) + 1
        s = torch.zeros(n, dtype=torch.float64, device=a.device).index_add_(0, lab[m], a[i].reshape(-1)[m].double())
        c = torch.bincount(lab[m], minlength=n).clamp(min=1)
        flat = out[i].reshape(-1)
        flat[m] = (s / c)[lab[m]].float()
    return out


def _laplacian_sharpen(a: torch.Tensor) -> torch.Tensor:
    """Objectomaly MBP, first half: (B,H,W) -> (B,H,W).

    The official loop: ``edges = cv2.Laplacian(S, CV_32F)`` (3x3 kernel [[0,1,0],[1,-4,1],
    [0,1,0]], reflect-101 border); every pixel *not on the outer 1-pixel frame* whose
    Laplacian is > 0 takes the mean of its 3x3 neighbours whose Laplacian is exactly 0
    (kept when it has none). Neighbours with Laplacian 0 are never rewritten, so the
    official in-place raster loop equals this vectorized form.
    """
    b, h, w = a.shape
    if h < 3 or w < 3:
        return a.clone()
    p = F.pad(a[:, None], (1, 1, 1, 1), mode="reflect")[:, 0]
    c = p[:, 1:-1, 1:-1]
    # (up + down) + (left + right) - 4c: exactly 0 on a flat neighbourhood, as cv2's is
    lap = (p[:, :-2, 1:-1] + p[:, 2:, 1:-1]) + (p[:, 1:-1, :-2] + p[:, 1:-1, 2:]) - 4.0 * c
    flat = lap == 0
    num = torch.zeros_like(a[:, 1:-1, 1:-1])
    cnt = torch.zeros_like(num)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ys, xs = slice(1 + dy, h - 1 + dy), slice(1 + dx, w - 1 + dx)
            f = flat[:, ys, xs].to(a.dtype)
            num += a[:, ys, xs] * f
            cnt += f
    inner = (lap[:, 1:-1, 1:-1] > 0) & (cnt > 0)
    out = a.clone()
    core = out[:, 1:-1, 1:-1]
    core[inner] = (num / cnt.clamp(min=1))[inner]
    return out


def _gauss_taps(ksize: int, sigma: float) -> torch.Tensor:
    """The (ksize,) float32 taps of cv2.getGaussianKernel(ksize, sigma) (computed in float64)."""
    x = torch.arange(ksize, dtype=torch.float64) - ksize // 2
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    return (k / k.sum()).float()


@functools.lru_cache(maxsize=16)
def _gauss_taps_np(ksize: int, sigma: float) -> np.ndarray:
    """:func:`_gauss_taps` as a read-only numpy array, computed once per (ksize, sigma)."""
    k = _gauss_taps(ksize, sigma).numpy()
    k.setflags(write=False)
    return k


def _gaussian_blur(a: torch.Tensor, ksize: int, sigma: float) -> torch.Tensor:
    """cv2.GaussianBlur(ksize, sigma) with cv2's default reflect-101 border, separable, (B,H,W)."""
    r = ksize // 2
    k = _gauss_taps(ksize, sigma).to(a.dtype).to(a.device)
    t = a[:, None]
    h, w = a.shape[-2:]
    if h <= r or w <= r:  # reflect padding needs more pixels than the radius; use replicate then
        t = F.pad(t, (r, r, r, r), mode="replicate")
    else:
        t = F.pad(t, (r, r, r, r), mode="reflect")
    t = F.conv2d(t, k.view(1, 1, 1, -1))
    t = F.conv2d(t, k.view(1, 1, -1, 1))
    return t[:, 0]


def objectomaly(anomaly: Any, labels: Any, *, masks: Any = None, sharpen: bool = True, ksize: int = 7,
                sigma: float = 1.0, backend: str = "auto") -> Any:
    """Objectomaly (arXiv 2507.07460 §3.2-3.4): objectness-aware calibration + boundary sharpening.

    Stage 1 (CAS, §3.2) is the teacher's map ``anomaly``. Stage 2 (OASC, §3.3): inside each
    instance mask, every pixel takes the mask's mean coarse score (the official code:
    ``S[mask] = mean(S_coarse[mask])``, masks painted in ascending area so a larger mask
    overwrites a smaller one where they overlap; the means are always of the *coarse*
    map). Stage 3 (MBP, §3.4): Laplacian boundary sharpening (:func:`_laplacian_sharpen`),
    then a ``ksize`` x ``ksize`` Gaussian with ``sigma`` (official: 7, 1).

    Readings: SAM's automatic masks are replaced by any proposal source — ``labels``, the
    label map CSL2 fuses (a partition, so the painting order does not matter; -1 keeps
    its coarse score) — or by ``masks``, overlapping boolean masks painted in the official
    ascending-area order. The official horizontal-flip averaging of the coarse map belongs
    to the teacher and is not part of this op.

    Args:
        anomaly: (B,1,H,W) float anomaly probabilities in [0,1] (numpy or torch).
        labels: (B,H,W) integer regions, -1 = unassigned; ignored when ``masks`` is given
            (pass None then).
        masks: optional (B,N,H,W) bool instance masks (may overlap; all-False = padding).
        sharpen: run MBP (Laplacian + Gaussian); False = OASC only.
        ksize, sigma: the Gaussian (odd ``ksize`` >= 1, ``sigma`` > 0).
        backend: ``"auto"`` (numba for CPU maps of at least
            :data:`posthoc.kernels.SMALL` pixels, else torch), ``"numba"`` or ``"torch"``
            (the reference path). The numba kernels (:mod:`posthoc.kernels._numba_peers`)
            make the same float operations in the same order and agree bit for bit.

    Returns:
        (B,1,H,W) float32 in [0,1], numpy if ``anomaly`` was numpy.
    """
    a, was_np = _anomaly(anomaly)
    ksize = _positive_int(ksize, "ksize")
    if ksize % 2 == 0:
        raise ValueRangeError(f"ksize must be odd; got {ksize}")
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0:
        raise ValueRangeError(f"sigma must be a number > 0; got {sigma!r}")
    be = kernels.resolve_backend(backend, a.device, a.numel())
    nbk = kernels._numba_peers_mod() if be == "numba" else None
    if nbk is not None:
        kernels._numba_threads()
    s = a[:, 0]
    if masks is not None:
        m = _bool_masks(masks, a, "B,N,H,W").to(a.device)
        cal = s.clone()
        for i in range(a.shape[0]):
            area = m[i].flatten(1).sum(1)
            for n in torch.argsort(area, stable=True).tolist():  # ascending area: larger overwrite smaller
                if int(area[n]) == 0:
                    continue
                cal[i][m[i, n]] = s[i][m[i, n]].mean()
    else:
        if labels is None:
            raise ValueRangeError("objectomaly needs labels (B,H,W) or masks (B,N,H,W); got neither")
        if nbk is not None:  # paint, sharpen, blur and clamp in the kernels
            lab = _labels(labels, a, check_min=False)
            taps = _gauss_taps_np(ksize, float(sigma)) if sharpen else None
            res, lo = nbk.objectomaly_np(s.detach().contiguous().numpy(), lab.contiguous().numpy(), taps)
            if lo is not None:
                _raise_below("labels", lo)
            return restore(torch.from_numpy(res), was_np)
        else:
            cal = _region_mean_paint(s, _labels(labels, a))
    if sharpen and nbk is not None:
        taps = _gauss_taps_np(ksize, float(sigma))
        out = torch.from_numpy(nbk.sharpen_blur_np(cal.detach().contiguous().numpy(), taps))
        return restore(out, was_np)
    if sharpen:
        cal = _gaussian_blur(_laplacian_sharpen(cal), ksize, float(sigma))
    out = cal.clamp(0.0, 1.0)[:, None].contiguous()
    return restore(out, was_np)


# ----------------------------------------------------------------------------- UGainS


def farthest_point_sample(points: torch.Tensor, k: int) -> torch.Tensor:
    """Farthest point sampling (as pointnet2's ``furthest_point_sample``, used by UGainS).

    Starts from ``points[0]``; each next point is the one with the largest squared
    distance to the points chosen so far (ties: the lowest index).

    Args:
        points: (P,D) float coordinates.
        k: number of points to pick.

    Returns:
        (min(k,P),) int64 indices into ``points``, in the order picked.
    """
    if not isinstance(points, torch.Tensor) or points.ndim != 2:
        raise ShapeError(f"points must be a (P,D) tensor; got {getattr(points, 'shape', type(points).__name__)}")
    k = _positive_int(k, "k")
    p = points.double()
    n = p.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=points.device)
    k = min(k, n)
    idx = torch.zeros(k, dtype=torch.long, device=points.device)
    dist = torch.full((n,), float("inf"), dtype=torch.float64, device=points.device)
    cur = 0
    for j in range(k):
        idx[j] = cur
        dist = torch.minimum(dist, ((p - p[cur]) ** 2).sum(1))
        cur = int(torch.argmax(dist))
    return idx


def ugains_prompts(anomaly: torch.Tensor, threshold: float = 0.5, num_points: int = 50) -> torch.Tensor:
    """UGainS point prompts for one image (§3.2; official ``NLSSampler.__call__``).

    The candidates are the pixels whose anomaly score is >= ``threshold`` (official: the
    NLS uncertainty >= -0.15; with none, the official code falls back to a far lower
    threshold, -15, i.e. practically every pixel: here every pixel). ``num_points``
    prompts are farthest-point sampled from their (x, y) coordinates in raster order.

    Args:
        anomaly: (H,W) float scores in [0,1].
        threshold: candidate threshold on the score, in [0,1].
        num_points: number of prompts (official 50).

    Returns:
        (Q,2) float32 (x, y) pixel coordinates, Q = min(num_points, candidates).
    """
    if not isinstance(anomaly, torch.Tensor) or anomaly.ndim != 2:
        raise ShapeError(f"anomaly must be an (H,W) tensor; got {getattr(anomaly, 'shape', type(anomaly).__name__)}")
    threshold = _unit(threshold, "threshold")
    num_points = _positive_int(num_points, "num_points")
    yx = torch.nonzero(anomaly >= threshold)
    if yx.shape[0] == 0:
        yx = torch.nonzero(torch.ones_like(anomaly, dtype=torch.bool))
    xy = yx.flip(1)
    return xy[farthest_point_sample(xy.float(), num_points)].float()


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.7) -> list[int]:
    """Greedy mask NMS (official ``batched_mask_nms``): from the highest score down, drop
    every remaining mask whose IoU with a kept one is > ``iou_threshold``.

    Args:
        masks: (Q,H,W) bool; scores: (Q,) float.

    Returns:
        kept indices, in descending score order (ties: the lower index first).
    """
    if masks.ndim != 3 or scores.ndim != 1 or scores.shape[0] != masks.shape[0]:
        raise ShapeError(f"mask_nms needs masks (Q,H,W) and scores (Q,); got {shape_str(masks.shape)} and "
                         f"{shape_str(scores.shape)}")
    q = masks.shape[0]
    if q == 0:
        return []
    f = masks.flatten(1).float()
    inter = f @ f.T
    area = f.sum(1)
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1)
    order = torch.argsort(-scores.double(), stable=True).tolist()
    removed: set[int] = set()
    keep = []
    for i in order:
        if i in removed:
            continue
        keep.append(i)
        for j in range(q):
            if j != i and j not in removed and float(inter[i, j]) > 0 and float(iou[i, j]) > iou_threshold:
                removed.add(j)
    return keep


def ugains_fuse(anomaly: Any, masks: Any, *, num_points: int = 50, nms_threshold: float = 0.7,
                empty_value: float = -1.0) -> Any:
    """UGainS fusion of SAM's point-prompt masks with the pixel scores (§3.3; official ``test_step``).

    Each mask's score is the mean of the anomaly map inside it (the official ``nls_score``;
    -1 for an empty mask), masks are reduced by :func:`mask_nms` (IoU 0.7), and the
    instance map ``U = sum_q score_q * mask_q`` is set to ``empty_value`` (official -1)
    where it is 0; the official output is ``U + anomaly``.

    Reading: the official sum lies in [empty_value, num_points + 1]. posthoc's scores are
    probabilities, so the output is that sum under the fixed increasing map
    ``(x - empty_value) / (num_points + 1 - empty_value)``: one global affine map (the same
    for every image), so AP, FPR95 and every thresholded metric are those of the official sum.

    Args:
        anomaly: (B,1,H,W) float in [0,1].
        masks: (B,Q,H,W) bool masks of the prompts (all-False rows = padding).
        num_points: the prompt budget Q_max the map is normalised with (>= Q).
        nms_threshold: mask NMS IoU threshold in [0,1].
        empty_value: value of U outside every mask (<= 0).

    Returns:
        (B,1,H,W) float32 in [0,1].
    """
    a, was_np = _anomaly(anomaly)
    m = _bool_masks(masks, a, "B,Q,H,W")
    num_points = _positive_int(num_points, "num_points")
    if m.shape[1] > num_points:
        raise ValueRangeError(f"masks has {m.shape[1]} prompts; more than num_points={num_points}")
    nms_threshold = _unit(nms_threshold, "nms_threshold")
    if not isinstance(empty_value, (int, float)) or empty_value > 0:
        raise ValueRangeError(f"empty_value must be a number <= 0; got {empty_value!r}")
    m = m.to(a.device)
    out = torch.empty_like(a)
    for i in range(a.shape[0]):
        mi = m[i]
        nonempty = mi.flatten(1).any(1)
        mi = mi[nonempty]
        s = a[i, 0]
        if mi.shape[0]:
            f = mi.flatten(1).double()
            scores = (f @ s.reshape(-1).double()) / f.sum(1)
            keep = mask_nms(mi, scores, nms_threshold)
            u = torch.einsum("q,qhw->hw", scores[keep], mi[keep].double())
        else:
            u = torch.zeros_like(s, dtype=torch.float64)
        u = torch.where(u == 0, torch.full_like(u, float(empty_value)), u)
        tot = u + s.double()
        out[i, 0] = ((tot - empty_value) / (num_points + 1 - empty_value)).float()
    return restore(out.clamp(0.0, 1.0), was_np)


#: ``predict(i, points)`` -> (masks (Q,M,H,W) bool, predicted IoU (Q,M)) for image ``i`` of the batch
PointPredictor = Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def ugains(anomaly: Any, predict: PointPredictor, *, threshold: float = 0.5, num_points: int = 50,
           nms_threshold: float = 0.7, empty_value: float = -1.0) -> Any:
    """UGainS (GCPR 2023, §3): uncertainty-guided point prompts for SAM, masks fed back into the scores.

    For each image: :func:`ugains_prompts` (FPS over the uncertain pixels), one single-point
    positive prompt per point to ``predict`` (SAM with ``multimask_output=True``; per prompt
    the mask with the highest predicted IoU is kept, as the official code does), then
    :func:`ugains_fuse`.

    Args:
        anomaly: (B,1,H,W) float in [0,1].
        predict: ``predict(i, points (Q,2) float32 (x,y) in anomaly's pixel frame)`` ->
            ``(masks (Q,M,H,W) bool, iou (Q,M) float)``; e.g.
            :func:`posthoc.adapters.proposals_sam.sam_point_predictor`.
        threshold, num_points, nms_threshold, empty_value: see :func:`ugains_prompts` and
            :func:`ugains_fuse` (official: -0.15 on NLS, 50, 0.7, -1).

    Returns:
        (B,1,H,W) float32 in [0,1].
    """
    a, was_np = _anomaly(anomaly)
    if not callable(predict):
        raise DTypeError(f"predict must be callable (i, points) -> (masks, iou); got {type(predict).__name__}")
    num_points = _positive_int(num_points, "num_points")
    b, _, h, w = a.shape
    per = []
    for i in range(b):
        pts = ugains_prompts(a[i, 0], threshold, num_points)
        mk, iou = predict(i, pts)
        if not isinstance(mk, torch.Tensor) or mk.ndim != 4 or tuple(mk.shape[-2:]) != (h, w) \
                or mk.shape[0] != pts.shape[0] or iou.shape != mk.shape[:2]:
            raise ShapeError(f"predict must return masks (Q,M,H,W) = ({pts.shape[0]},M,{h},{w}) and iou (Q,M); "
                             f"got {shape_str(getattr(mk, 'shape', ()))} and {shape_str(getattr(iou, 'shape', ()))}")
        best = iou.argmax(1)
        per.append(mk[torch.arange(mk.shape[0]), best].bool().to(a.device))
    q = max((p.shape[0] for p in per), default=0)
    masks = torch.zeros(b, q, h, w, dtype=torch.bool, device=a.device)
    for i, p in enumerate(per):
        masks[i, : p.shape[0]] = p
    out = ugains_fuse(a, masks, num_points=num_points, nms_threshold=nms_threshold, empty_value=empty_value)
    return restore(out, was_np)


# ----------------------------------------------------------------------------- Maskomaly


def maskomaly(mask_probs: Any, class_probs: Any, *, size: Sequence[int] | None = None,
              anomaly_queries: Sequence[int] = (), ground_queries: Sequence[int] = (),
              reject_threshold: float = 0.7, border_threshold: float = 0.1, weight: float = 0.6,
              backend: str = "auto") -> Any:
    """Maskomaly (BMVC 2023, §3; official ``Maskomaly.get_soft_mask``) on a mask transformer's raw masks.

    With mask probabilities m_q = sigmoid(mask logits) and class probabilities
    p_q = softmax over K classes + "no object" (last):

    1. rejection: ``R = min(1, min_q (1 - m_q * max p_q))`` over the queries whose top
       class is not "no object" and whose top probability is > ``reject_threshold`` (0.7);
    2. borders: ``R = 0`` where two non-"no object" queries both have m > ``border_threshold``
       (0.1);
    3. ground: ``R = min(R, 1 - m_q * max p_q)`` for the ``ground_queries``;
    4. anomaly queries: ``A = max_q m_q * max p_q`` over the ``anomaly_queries`` (the queries
       ranked on a validation set by their overlap with anomalies; 0 if none);
    5. output ``weight * R + (1 - weight) * A`` (official 0.6), resized bilinearly to ``size``.

    Readings: the official code hard-codes the query indices of its Mask2Former checkpoint
    (anomaly [49, 31, 83, 32], ground [19, 24]); here both are arguments, empty by default.
    The map does not use a teacher's pixel scores: Maskomaly is a stand-alone score
    from the mask transformer. A class-agnostic proposer (validity V_q only) is read as
    p_q = (V_q, 1 - V_q): one "region" class and "no object".

    Args:
        mask_probs: (B,N,h,w) float mask probabilities in [0,1].
        class_probs: (B,N,K+1) float class probabilities in [0,1], "no object" last.
        size: (H,W) of the output (default (h,w)).
        backend: ``"auto"`` (numba for CPU masks of at least :data:`posthoc.kernels.SMALL`
            elements, else torch), ``"numba"`` (one pass over the masks,
            :mod:`posthoc.kernels._numba_peers`; bit for bit the torch result) or ``"torch"``.

    Returns:
        (B,1,H,W) float32 in [0,1].
    """
    m, was_np = as_torch(mask_probs, "mask_probs")
    p, _ = as_torch(class_probs, "class_probs")
    if not m.is_floating_point() or not p.is_floating_point():
        raise DTypeError(f"mask_probs and class_probs must be float; got {m.dtype} and {p.dtype}")
    if m.ndim != 4 or p.ndim != 3 or p.shape[:2] != m.shape[:2] or p.shape[2] < 2:
        raise ShapeError(f"maskomaly needs mask_probs (B,N,h,w) and class_probs (B,N,K+1) with K >= 1; got "
                         f"{shape_str(m.shape)} and {shape_str(p.shape)}")
    m, p = m.float(), p.float().to(m.device)
    for t, name in ((m, "mask_probs"), (p, "class_probs")):
        check_range(t, name, 0.0, 1.0)  # one pass: NaN/Inf (NonFiniteError) and the range
    reject_threshold = _unit(reject_threshold, "reject_threshold")
    border_threshold = _unit(border_threshold, "border_threshold")
    weight = _unit(weight, "weight")
    b, n, h, w = m.shape
    for name, qs in (("anomaly_queries", anomaly_queries), ("ground_queries", ground_queries)):
        bad = [q for q in qs if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 0 <= q < n]
        if bad:
            raise ValueRangeError(f"{name} must be query indices in [0,{n}); got {list(bad)}")
    if size is not None:
        hw = tuple(int(s) for s in size)
        if len(hw) != 2 or min(hw) < 1:
            raise ValueRangeError(f"size must be (H,W) with H,W >= 1; got {size!r}")
    pmax, arg = p.max(2)
    positive = arg != p.shape[2] - 1
    sel = positive & (pmax > reject_threshold)
    be = kernels.resolve_backend(backend, m.device, m.numel())
    nbk = kernels._numba_peers_mod() if be == "numba" else None
    if nbk is not None:
        kernels._numba_threads()
        idx = [np.asarray([int(q) for q in qs], np.int64) for qs in (ground_queries, anomaly_queries)]
        soft = torch.from_numpy(nbk.maskomaly_np(
            m.detach().contiguous().numpy(), pmax.detach().contiguous().numpy(), sel.numpy(), positive.numpy(),
            idx[0], idx[1], border_threshold, weight, 1 - weight))
        return restore(_maskomaly_out(soft, size, h, w), was_np)
    conf = m * pmax[..., None, None]
    rej = torch.ones(b, h, w, device=m.device)
    neg = torch.where(sel[..., None, None], 1 - conf, torch.ones_like(conf))
    if n:
        rej = torch.minimum(rej, neg.min(1).values)
        cnt = ((m > border_threshold) & positive[..., None, None]).sum(1)
        rej = torch.where(cnt >= 2, torch.zeros_like(rej), rej)
    for q in ground_queries:
        rej = torch.minimum(rej, 1 - conf[:, q])
    anom = torch.zeros_like(rej)
    for q in anomaly_queries:
        anom = torch.maximum(anom, conf[:, q])
    out = (weight * rej + (1 - weight) * anom)[:, None]
    return restore(_maskomaly_out(out, size, h, w), was_np)


def _maskomaly_out(out: torch.Tensor, size: Any, h: int, w: int) -> torch.Tensor:
    """Maskomaly's last step: the (B,1,h,w) map resized bilinearly to ``size`` (checked), clamped to [0,1]."""
    if size is not None:
        hw = tuple(int(s) for s in size)
        if hw != (h, w):
            out = F.interpolate(out, size=hw, mode="bilinear", align_corners=False)
    return out.clamp(0.0, 1.0)
