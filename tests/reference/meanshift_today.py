"""Frozen copy of ``posthoc.meanshift`` as it was before issue 18 (commit df5fd83), kept verbatim.

It is the regression and speed baseline: ``meanshift_sphere(..., projective=False,
bandwidth=SPHERE_BANDWIDTH)`` must give exactly these labels, and
``python -m posthoc.bench.speed_meanshift`` times the new code against it. Do not edit.

Original module docstring follows.

Mean-shift clustering of per-pixel embeddings on the unit hypersphere.

This is the clustering step of the bottom-up class-agnostic segmentation paper
(Dille et al., "A Bottom-Up Approach to Class-Agnostic Image Segmentation", 2024):
a network maps every pixel to a unit vector, pixels of one entity are (nearly)
parallel and different entities are (nearly) orthogonal, and segments are the
basins of a mean-shift over those vectors. docs/architecture.md fixes the reading we follow:

* features are L2-normalized along the channel axis;
* the bandwidth is ``sqrt(2)/2``: two unit vectors are neighbours when their
  Euclidean distance is at most that, i.e. when they are less than ~41 degrees apart
  (``||a-b||^2 = 2 - 2 cos``);
* ``n_seeds`` (>= 256 by default) seeds are subsampled from the pixels, and each
  mean-shift step moves the seeds against a random subsample of ``n_samples``
  (20k by default) pixels, with the flat kernel that scikit-learn's ``MeanShift``
  uses (the new position is the plain mean of the sample points within the
  bandwidth of the old one; ``stop when ||m_new - m_old|| <= tol * bandwidth``);
* converged seeds are ranked by how many sample points lie within the bandwidth and
  greedily merged: a mode suppresses every lower-ranked mode closer than the
  bandwidth (scikit-learn's post-processing, ties broken the same way);
* every pixel is assigned to its nearest mode (Euclidean, as scikit-learn does).

With ``n_samples`` at least the number of points and the same seeds, the result is
scikit-learn's ``MeanShift(bandwidth, seeds=...)`` (tests/posthoc/test_meanshift.py
checks ARI >= 0.99); scikit-learn's ``bin_seeding`` is not used because it breaks on
unit vectors (docs/architecture.md, "Mean-shift on unit vectors").

Multi-resolution refinement (``levels > 1``) is our reading of "coarse to fine":
the feature map is average-pooled by ``2**(levels-1)`` and re-normalized, the modes
are found there (pooled features are less noisy and the sample covers more of the
image), then at every finer level the modes are refined by warm-started mean-shift
against a sample of that level's features and merged again; finally every
full-resolution pixel is assigned to its nearest mode.

Everything is pure torch and runs on the device of the input; the matmuls are
chunked (``chunk_size`` sample points or pixels at a time) so memory stays bounded.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from posthoc.errors import PosthocError, ShapeError, ValueRangeError
from posthoc.validation import as_torch, check_finite, check_float, restore, shape_str

log = logging.getLogger(__name__)

__all__ = ["SPHERE_BANDWIDTH", "MeanShiftSphere", "meanshift_points", "meanshift_sphere"]

#: sqrt(2)/2: the bandwidth of the bottom-up paper (docs/architecture.md), in Euclidean units on the unit sphere.
SPHERE_BANDWIDTH = math.sqrt(2.0) / 2.0


def _check_settings(bandwidth: float, n_seeds: int, n_samples: int, max_iter: int, tol: float,
                    chunk_size: int, levels: int = 1) -> None:
    if not (isinstance(bandwidth, (int, float)) and math.isfinite(bandwidth) and 0 < bandwidth <= 2):
        raise ValueRangeError(f"bandwidth must be a number in (0,2] (distance on the unit sphere); got {bandwidth!r}")
    for name, v, lo in (("n_seeds", n_seeds, 1), ("n_samples", n_samples, 1), ("max_iter", max_iter, 1),
                        ("chunk_size", chunk_size, 1), ("levels", levels, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise ValueRangeError(f"{name} must be an integer >= {lo}; got {v!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueRangeError(f"tol must be a finite number >= 0; got {tol!r}")


def _normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    return F.normalize(x.float(), p=2.0, dim=dim, eps=1e-12)


def _shift(seeds: torch.Tensor, sample: torch.Tensor, bandwidth: float, max_iter: int, tol: float,
           chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat-kernel mean-shift of ``seeds`` (S,F) against ``sample`` (M,F).

    Follows scikit-learn's ``_mean_shift_single_seed`` for every seed at once: the
    neighbours of m are the sample points x with ``||x - m|| <= bandwidth``; m moves to
    their mean; a seed stops when it moved by at most ``tol * bandwidth``, when it has
    no neighbours, or after ``max_iter`` moves. Returns the final positions (S,F) and the
    number of neighbours found in the last step (S,) int64 (0 = dropped, as in sklearn).
    """
    S, Fd = seeds.shape
    means = seeds.clone()
    counts = torch.zeros(S, dtype=torch.int64, device=seeds.device)
    active = torch.ones(S, dtype=torch.bool, device=seeds.device)
    follow = torch.full((S,), -1, dtype=torch.int64, device=seeds.device)
    # ||x - m||^2 <= bw^2  <=>  [2m, -1] . [x, ||x||^2] >= ||m||^2 - bw^2: one matmul and one compare per chunk;
    # summing the neighbours with [x, 1] gives their sum and their count in a second matmul
    ones = torch.ones(sample.shape[0], 1, dtype=sample.dtype, device=sample.device)
    x_dist = torch.cat([sample, (sample * sample).sum(1, keepdim=True)], 1)  # (M,F+1)
    x_sum = torch.cat([sample, ones], 1)  # (M,F+1)
    bw2 = bandwidth * bandwidth
    stop = tol * bandwidth
    for _ in range(max_iter):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        m = means[idx]
        m_aug = torch.cat([2.0 * m, -torch.ones_like(m[:, :1])], 1)  # (S',F+1)
        thr = ((m * m).sum(1) - bw2).unsqueeze(1)
        acc = torch.zeros(m.shape[0], Fd + 1, dtype=m.dtype, device=m.device)
        for s0 in range(0, sample.shape[0], chunk_size):
            d = m_aug @ x_dist[s0:s0 + chunk_size].T
            torch.ge(d, thr, out=d)  # 1.0 / 0.0 in place: one pass, no bool temporary
            acc.addmm_(d, x_sum[s0:s0 + chunk_size])
        cnt = acc[:, Fd]
        has = cnt > 0
        new = torch.where(has.unsqueeze(1), acc[:, :Fd] / cnt.clamp_min(1).unsqueeze(1), m)
        moved = (new - m).norm(dim=1)
        means[idx] = new
        counts[idx] = cnt.round().to(torch.int64)
        done = (~has) | (moved <= stop)
        active[idx[done]] = False
        # seeds that landed on the same point (same neighbour set) have the same future: keep one
        # walker per position and let the others follow it (docs/architecture.md: "drop duplicate seeds")
        still = ~done
        if int(still.sum()) > 1:
            live = idx[still]
            key = torch.round(means[live] * 1e6)
            _, inv = torch.unique(key, dim=0, return_inverse=True)
            first = torch.full((int(inv.max()) + 1,), live.numel(), dtype=torch.int64, device=inv.device)
            first.scatter_reduce_(0, inv, torch.arange(live.numel(), device=inv.device), reduce="amin")
            leader = live[first[inv]]
            dup = leader != live
            if bool(dup.any()):
                follow[live[dup]] = leader[dup]
                active[live[dup]] = False
    # followers take their leader's final position; a leader may itself have started following
    # a later leader, so follow the chain to its root (pointer jumping)
    root = torch.where(follow >= 0, follow, torch.arange(S, device=follow.device))
    for _ in range(S):
        nxt = root[root]
        if torch.equal(nxt, root):
            break
        root = nxt
    means = means[root]
    counts = counts[root]
    return means, counts


def _merge(modes: torch.Tensor, counts: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """scikit-learn's post-processing: drop empty seeds and exact duplicates, rank by
    (count, coordinates) descending, then let each surviving mode suppress every other
    mode within the bandwidth. Returns the kept modes (K,F) in rank order."""
    keep = counts > 0
    modes, counts = modes[keep], counts[keep]
    if modes.shape[0] == 0:
        return modes
    m64 = modes.detach().double().cpu().numpy()
    c = counts.cpu().numpy()
    # sklearn keys a dict by the center tuple (duplicates collapse), then sorts by (count, tuple) descending
    uniq: dict = {}
    for row, n in zip(map(tuple, m64), c, strict=False):
        uniq[row] = int(n)
    items = sorted(uniq.items(), key=lambda t: (t[1], t[0]), reverse=True)
    centers = np.asarray([t[0] for t in items], dtype=np.float64)
    d2 = ((centers[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    near = d2 <= bandwidth * bandwidth
    unique = np.ones(len(centers), dtype=bool)
    for i in range(len(centers)):
        if unique[i]:
            unique[near[i]] = False
            unique[i] = True
    return torch.as_tensor(centers[unique], dtype=modes.dtype, device=modes.device)


def _assign(x: torch.Tensor, modes: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Nearest mode (Euclidean) of every row of x (P,F) -> (P,) int64, ties to the lowest index."""
    P = x.shape[0]
    out = torch.empty(P, dtype=torch.int64, device=x.device)
    if modes.shape[0] == 0 or P == 0:
        return out.fill_(-1)
    # argmin ||x-m||^2 = argmax 2 x.m - ||m||^2 = argmax [x, 1] . [2m, -||m||^2]
    m_aug = torch.cat([2.0 * modes, -(modes * modes).sum(1, keepdim=True)], 1).T.contiguous()  # (F+1,K)
    w = m_aug[:-1]
    b = m_aug[-1]
    step = max(chunk_size, 1) * 8
    for s0 in range(0, P, step):
        score = torch.addmm(b, x[s0:s0 + step], w)
        out[s0:s0 + step] = torch.max(score, dim=1).indices
    return out


def _sample_rows(n_total: int, n: int, gen: torch.Generator, device) -> torch.Tensor:
    if n >= n_total:
        return torch.arange(n_total, device=device)
    # sorted: gathering the sample from a large feature map then walks memory in order
    return torch.randperm(n_total, generator=gen)[:n].sort().values.to(device)


@torch.inference_mode()
def meanshift_points(
    points: Any,
    bandwidth: float = SPHERE_BANDWIDTH,
    *,
    seeds: Any | None = None,
    n_seeds: int = 256,
    n_samples: int = 20000,
    max_iter: int = 300,
    tol: float = 1e-3,
    normalize: bool = True,
    chunk_size: int = 2048,
    seed: int = 0,
) -> tuple[Any, Any]:
    """Mean-shift clustering of a point set on the unit sphere (the core of :func:`meanshift_sphere`).

    Args:
        points: (P,F) float embeddings, any finite range (L2-normalized here when
            ``normalize``), numpy or torch on any device.
        bandwidth: flat-kernel radius, Euclidean distance on the sphere; default sqrt(2)/2.
        seeds: optional (S,F) float starting points (normalized like ``points``); default:
            ``n_seeds`` points drawn without replacement from the density sample.
        n_seeds: number of seeds drawn when ``seeds`` is None.
        n_samples: size of the random subsample the seeds are shifted against (all
            points when P <= n_samples).
        max_iter: maximum number of mean-shift steps per seed (sklearn's default 300).
        tol: a seed has converged when it moves by at most ``tol * bandwidth`` (sklearn).
        normalize: L2-normalize ``points`` and ``seeds`` first (set False only if they already are).
        chunk_size: number of sample points per matmul chunk (2048 keeps the (S,chunk) block in L2).
        seed: seed of the CPU generator used for the subsamples (results are deterministic).

    Returns:
        (labels, modes): labels (P,) int64 in [0,K), the nearest mode of each point;
        modes (K,F) float32, ranked by density (the sklearn ``cluster_centers_`` order).
        Same kind (numpy/torch) and device as ``points``.

    Raises:
        ShapeError, DTypeError, NonFiniteError, ValueRangeError: on bad input or settings.
    """
    x, was_np = as_torch(points, "points")
    if x.ndim != 2:
        raise ShapeError(f"points must be (P,F); got shape {shape_str(x.shape)}")
    check_float(x, "points")
    check_finite(x, "points")
    _check_settings(bandwidth, n_seeds, n_samples, max_iter, tol, chunk_size)
    P, Fd = x.shape
    x = _normalize(x, 1) if normalize else x.float()
    if P == 0:
        return restore(torch.empty(0, dtype=torch.int64, device=x.device), was_np), restore(
            torch.empty(0, Fd, device=x.device), was_np)
    gen = torch.Generator().manual_seed(int(seed))
    sample = x[_sample_rows(P, n_samples, gen, x.device)]
    if seeds is not None:
        s, _ = as_torch(seeds, "seeds")
        if s.ndim != 2 or s.shape[1] != Fd:
            raise ShapeError(f"seeds must be (S,F) with F={Fd}; got {shape_str(s.shape)}")
        check_float(s, "seeds")
        check_finite(s, "seeds")
        s = s.to(x.device)
        s = _normalize(s, 1) if normalize else s.float()
    else:
        s = sample[_sample_rows(sample.shape[0], n_seeds, gen, x.device)]
    means, counts = _shift(s, sample, bandwidth, max_iter, tol, chunk_size)
    modes = _merge(means, counts, bandwidth)
    if modes.shape[0] == 0:
        raise PosthocError(
            f"mean-shift found no mode: none of the {s.shape[0]} seeds has a sample point within bandwidth "
            f"{bandwidth:g}; use a larger bandwidth or seeds drawn from the data"
        )
    labels = _assign(x, modes, chunk_size)
    return restore(labels, was_np), restore(modes, was_np)


def _unit_columns(x: torch.Tensor) -> torch.Tensor:
    """(F,P) -> columns divided by max(norm, 1e-12) (F.normalize over dim 0, without its slow strided norm)."""
    n2 = torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
    for f in range(x.shape[0]):
        n2.addcmul_(x[f], x[f])
    return x / n2.sqrt_().clamp_min_(1e-12)


def _assign_columns(x: torch.Tensor, modes: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Nearest mode of every *normalized* column of the raw (F,P) map -> (P,) int64, ties to the lowest index.

    argmin_k ||x/|x| - m_k||^2 = argmax_k (2 x.m_k / |x| - ||m_k||^2): the normalization is folded into
    the scores chunk by chunk, so the full-resolution map is never normalized in memory.
    """
    P = x.shape[1]
    out = torch.empty(P, dtype=torch.int64, device=x.device)
    if modes.shape[0] == 0 or P == 0:
        return out.fill_(-1)
    w2 = 2.0 * modes  # (K,F)
    b = (modes * modes).sum(1, keepdim=True)  # (K,1)
    step = max(chunk_size, 1) * 8
    for c0 in range(0, P, step):
        xs = x[:, c0:c0 + step]
        nrm = xs.square().sum(0).sqrt_().clamp_min_(1e-12)
        score = torch.mm(w2, xs).div_(nrm).sub_(b)  # (K,c)
        out[c0:c0 + step] = torch.max(score, dim=0).indices
    return out



def _meanshift_image(feat: torch.Tensor, bandwidth: float, n_seeds: int, n_samples: int, max_iter: int,
                     tol: float, levels: int, chunk_size: int,
                     gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: feat (F,h,w) float32 embeddings (any norm) -> labels (h,w) int64, modes (K,F)."""
    Fd, h, w = feat.shape
    x = feat.reshape(Fd, -1)
    # level 0 is sampled (and its samples normalized) lazily; coarser levels are pooled unit vectors
    pyramid: list = [None]
    if levels > 1 and min(h, w) >= 2:
        prev = _unit_columns(x).reshape(Fd, h, w)
        for _ in range(levels - 1):
            if min(prev.shape[-2:]) < 2:
                break
            pooled = F.avg_pool2d(prev.unsqueeze(0), 2, ceil_mode=True).squeeze(0)
            prev = _normalize(pooled, 0)
            pyramid.append(prev)
    modes = None
    for lvl in range(len(pyramid) - 1, -1, -1):
        if lvl == 0:
            sample = _normalize(x[:, _sample_rows(x.shape[1], n_samples, gen, x.device)].T, 1)
        else:
            pts = pyramid[lvl].reshape(Fd, -1)
            sample = pts[:, _sample_rows(pts.shape[1], n_samples, gen, pts.device)].T.contiguous()
        if modes is None:
            start = sample[_sample_rows(sample.shape[0], n_seeds, gen, sample.device)]
        else:
            start = modes  # warm start from the coarser level's modes
        means, counts = _shift(start, sample, bandwidth, max_iter, tol, chunk_size)
        merged = _merge(means, counts, bandwidth)
        if merged.shape[0] == 0:  # cannot happen for seeds drawn from the sample; keep the coarser modes
            if modes is None:
                raise PosthocError("mean-shift found no mode (empty sample)")
            continue
        modes = merged
    labels = _assign_columns(x, modes, chunk_size).reshape(h, w)
    return labels, modes


@torch.inference_mode()
def meanshift_sphere(
    features: Any,
    bandwidth: float = SPHERE_BANDWIDTH,
    *,
    n_seeds: int = 256,
    n_samples: int = 20000,
    max_iter: int = 300,
    tol: float = 1e-3,
    levels: int = 1,
    chunk_size: int = 2048,
    seed: int = 0,
    return_modes: bool = False,
) -> Any:
    """Segment a batch of per-pixel embeddings by mean-shift on the hypersphere (Dille et al.).

    See the module docstring for the algorithm and docs/architecture.md for the decided semantics.

    Args:
        features: (B,F,h,w) float embeddings, any finite range; they are L2-normalized over F.
            numpy or torch, on any device (the work runs there).
        bandwidth: flat-kernel radius on the unit sphere; default sqrt(2)/2, i.e. two unit
            vectors are neighbours when their cosine similarity is >= 0.75 (about 41 degrees).
        n_seeds: seeds subsampled per image (>= 256 recommended).
        n_samples: size of the per-image, per-level subsample the seeds are shifted against.
        max_iter: maximum mean-shift steps per seed.
        tol: convergence threshold, relative to the bandwidth (sklearn's 1e-3).
        levels: number of pyramid levels for coarse-to-fine refinement (1 = single resolution).
        chunk_size: sample points (or pixels / 8) per matmul chunk; bounds the memory.
        seed: seed of the generator for the subsamples; the output is deterministic.
        return_modes: also return the list of per-image modes.

    Returns:
        labels (B,h,w) int64 with values in [0, K_b) per image (every pixel is assigned),
        same kind/device as ``features``; with ``return_modes`` a tuple
        ``(labels, [modes_b (K_b,F) float32 unit-sphere means, ...])``.

    Raises:
        ShapeError: features is not 4-D. DTypeError: not floating point.
        NonFiniteError: NaN/Inf in features. ValueRangeError: bad settings.

    Four 2-D embeddings on a 1x4 image: three point along x, one along y:

    >>> import torch
    >>> f = torch.tensor([[[[1.0, 0.9, 0.95, 0.0]], [[0.0, 0.1, 0.05, 1.0]]]])  # (B,F,h,w)
    >>> labels, modes = meanshift_sphere(f, return_modes=True)
    >>> labels.tolist(), tuple(modes[0].shape)
    ([[[0, 0, 0, 1]]], (2, 2))
    """
    f, was_np = as_torch(features, "features")
    if f.ndim != 4:
        raise ShapeError(f"features must be (B,F,h,w); got {f.ndim} axes with shape {shape_str(f.shape)}")
    check_float(f, "features")
    check_finite(f, "features")
    _check_settings(bandwidth, n_seeds, n_samples, max_iter, tol, chunk_size, levels)
    B, Fd, h, w = f.shape
    labels = torch.empty((B, h, w), dtype=torch.int64, device=f.device)
    all_modes = []
    if Fd == 0 and B * h * w > 0:
        raise ShapeError(f"features must have F >= 1 channels; got shape {shape_str(f.shape)}")
    gen = torch.Generator().manual_seed(int(seed))
    for b in range(B):
        if h * w == 0:
            all_modes.append(torch.empty(0, Fd, device=f.device))
            continue
        lab, modes = _meanshift_image(f[b].float(), bandwidth, n_seeds, n_samples, max_iter, tol,
                                      levels, chunk_size, gen)
        labels[b] = lab
        all_modes.append(modes)
        log.debug("meanshift_sphere: image %d -> %d modes", b, modes.shape[0])
    out = restore(labels, was_np)
    if return_modes:
        return out, [restore(m, was_np) for m in all_modes]
    return out


class MeanShiftSphere:
    """Settings holder for :func:`meanshift_sphere` (Conventions 2: classes only hold settings).

    ``MeanShiftSphere(**kw)(features)`` equals ``meanshift_sphere(features, **kw)``.
    """

    def __init__(self, bandwidth: float = SPHERE_BANDWIDTH, *, n_seeds: int = 256, n_samples: int = 20000,
                 max_iter: int = 300, tol: float = 1e-3, levels: int = 1, chunk_size: int = 2048,
                 seed: int = 0) -> None:
        _check_settings(bandwidth, n_seeds, n_samples, max_iter, tol, chunk_size, levels)
        self.kw = {"bandwidth": bandwidth, "n_seeds": n_seeds, "n_samples": n_samples, "max_iter": max_iter, "tol": tol,
                       "levels": levels, "chunk_size": chunk_size, "seed": seed}

    def __call__(self, features: Any, return_modes: bool = False) -> Any:
        return meanshift_sphere(features, return_modes=return_modes, **self.kw)

    def __repr__(self) -> str:
        return "MeanShiftSphere(" + ", ".join(f"{k}={v!r}" for k, v in self.kw.items()) + ")"
