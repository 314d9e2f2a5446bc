"""Mean-shift clustering of per-pixel embeddings on the real projective sphere (or the unit sphere).

This is the clustering step of the bottom-up class-agnostic segmentation paper
(Dille et al., "A Bottom-Up Approach to Class-Agnostic Image Segmentation", 2024):
a network maps every pixel to a unit vector, pixels of one entity are (nearly)
parallel and different entities are (nearly) orthogonal, and segments are the
basins of a mean-shift over those vectors. The paper's definitions and our readings
(docs/architecture.md, "Mean-shift on the sphere"):

* **Features are lines** (Eq. 1): ``||f|| = 1`` and ``f == -f``, with distance
  ``1 - |f1.f2|`` (Eq. 2). ``projective=True`` (default) works on lines: every
  neighbour is flipped to the side of the current mode before averaging, the mean is
  re-normalized onto the sphere, and pixels go to the mode of largest ``|f.m|``.
  ``projective=False`` treats features as plain unit directions (``f`` and ``-f`` are
  two clusters) and follows scikit-learn's ``MeanShift`` exactly.
* **The neighbourhood is 45 degrees.** The paper's bandwidth ``sqrt(2)/2`` "represents
  a 45 degree separation": two lines are neighbours when ``|f1.f2| >= cos 45 = sqrt(2)/2``.
  ``angle_deg=45.0`` is that rule. ``bandwidth`` stays as an alias in Euclidean chord
  units on the unit sphere, ``chord = 2 sin(angle/2)``, ``angle = 2 asin(chord/2)``,
  ``cos(angle) = 1 - chord**2/2``; the earlier default ``bandwidth=sqrt(2)/2`` is
  a chord of 41.41 degrees, and 45 degrees is a chord of 0.7654.
* ``n_seeds`` (256 by default) seeds are subsampled from the pixels, and each
  mean-shift step moves the seeds against a random subsample of ``n_samples``
  (20k by default) pixels with a flat kernel (the new position is the plain mean of
  the (sign-aligned) sample points in the neighbourhood of the old one; a seed stops
  when it moves by at most ``tol * chord``);
* converged seeds are ranked by how many sample points lie in their neighbourhood and
  greedily merged: a mode suppresses every lower-ranked mode within the neighbourhood
  (scikit-learn's post-processing, ties broken the same way; projective modes are
  first given a canonical sign, largest-magnitude component positive);
* every pixel is assigned to its nearest mode: largest ``|f.m|`` for lines, nearest
  Euclidean (as scikit-learn) for directions.

With ``projective=False``, ``n_samples`` at least the number of points and the same
seeds, the result is scikit-learn's ``MeanShift(bandwidth=chord, seeds=...)``
(tests/posthoc/test_meanshift.py checks ARI >= 0.99); scikit-learn's ``bin_seeding`` is
not used because it breaks on unit vectors (docs/architecture.md, "Mean-shift on unit vectors").

The paper's multi-resolution refinement (§4.1: run the network at several input
resolutions, cluster each, and merge the segments from coarse to fine) is
:func:`posthoc.meanshift_multires`. ``levels > 1`` here is a different, older speed
option kept for existing callers: one feature map is pooled by ``2**(levels-1)``
(sign-aligned pooling for lines, average pooling for directions) and re-normalized, the
modes are found there and refined by warm-started mean-shift at every finer level; every
full-resolution pixel is then assigned to its nearest mode.

Everything is pure torch and runs on the device of the input; the matmuls are
chunked (``chunk_size`` sample points or pixels at a time) so memory stays bounded.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F

from .errors import PosthocError, ShapeError, ValueRangeError
from .types import Array, ArrayT
from .validation import as_torch, check_finite, check_float, restore, shape_str

log = logging.getLogger(__name__)

__all__ = [
    "SPHERE_ANGLE_DEG",
    "SPHERE_BANDWIDTH",
    "MeanShiftSphere",
    "angle_to_chord",
    "chord_to_angle",
    "meanshift_points",
    "meanshift_sphere",
]

#: sqrt(2)/2: the number the bottom-up paper gives as its bandwidth. The paper means cos 45 degrees
#: (``|f1.f2| >= sqrt(2)/2``); read as a Euclidean chord on the unit sphere, as ``bandwidth=`` does,
#: it is 41.41 degrees.
SPHERE_BANDWIDTH = math.sqrt(2.0) / 2.0
#: 45 degrees: the paper's neighbourhood, "representing a 45 degree separation" (the default ``angle_deg``).
SPHERE_ANGLE_DEG = 45.0


def chord_to_angle(chord: float) -> float:
    """Angle in degrees between two unit vectors whose Euclidean distance is ``chord`` in [0,2]:
    ``2 asin(chord/2)`` (``||a-b||^2 = 2 - 2 cos``). ``chord_to_angle(sqrt(2)/2)`` is 41.41."""
    return math.degrees(2.0 * math.asin(min(max(chord, 0.0), 2.0) / 2.0))


def angle_to_chord(angle_deg: float) -> float:
    """Euclidean distance between two unit vectors ``angle_deg`` degrees apart: ``2 sin(angle/2)``.
    ``angle_to_chord(45)`` is 0.7654."""
    return 2.0 * math.sin(math.radians(angle_deg) / 2.0)


def _resolve_neighbourhood(bandwidth: float | None, angle_deg: float, projective: bool) -> tuple[float, float]:
    """(chord, cos) of the neighbourhood from ``bandwidth`` (the alias, chord units) or ``angle_deg``."""
    if not isinstance(projective, (bool, np.bool_)):
        raise ValueRangeError(f"projective must be True or False; got {projective!r}")
    if bandwidth is not None:
        if not (isinstance(bandwidth, (int, float)) and not isinstance(bandwidth, bool) and math.isfinite(bandwidth)
                and 0 < bandwidth <= 2):
            raise ValueRangeError(
                f"bandwidth must be a number in (0,2] (Euclidean distance on the unit sphere); got {bandwidth!r}")
        if angle_deg != SPHERE_ANGLE_DEG:
            raise ValueRangeError(
                f"give the neighbourhood as angle_deg or as bandwidth (its chord alias), not both; got "
                f"angle_deg={angle_deg!r} and bandwidth={bandwidth!r}")
        chord = float(bandwidth)
        angle = chord_to_angle(chord)
    else:
        if not (isinstance(angle_deg, (int, float)) and not isinstance(angle_deg, bool) and math.isfinite(angle_deg)
                and 0 < angle_deg <= 180):
            raise ValueRangeError(f"angle_deg must be a number of degrees in (0,180]; got {angle_deg!r}")
        angle = float(angle_deg)
        chord = angle_to_chord(angle)
    if projective and not angle < 90.0:
        raise ValueRangeError(
            f"with projective=True the neighbourhood must be below 90 degrees (two lines are at most 90 degrees "
            f"apart, so every line would be a neighbour); got {angle:.4g} degrees"
            + (f" (bandwidth={bandwidth!r})" if bandwidth is not None else ""))
    return chord, 1.0 - 0.5 * chord * chord


def _check_settings(n_seeds: int, n_samples: int, max_iter: int, tol: float, chunk_size: int,
                    levels: int = 1) -> None:
    for name, v, lo in (("n_seeds", n_seeds, 1), ("n_samples", n_samples, 1), ("max_iter", max_iter, 1),
                        ("chunk_size", chunk_size, 1), ("levels", levels, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise ValueRangeError(f"{name} must be an integer >= {lo}; got {v!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueRangeError(f"tol must be a finite number >= 0; got {tol!r}")


def _normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    return F.normalize(x.float(), p=2.0, dim=dim, eps=1e-12)


def _canon(m: torch.Tensor) -> torch.Tensor:
    """Canonical representative of each line (row) of m (S,F): its largest-magnitude component is positive."""
    if m.shape[0] == 0 or m.shape[1] == 0:
        return m
    big = m.gather(1, m.abs().argmax(1, keepdim=True))
    return m * torch.where(big < 0, -1.0, 1.0).to(m.dtype)


def _dedupe(means: torch.Tensor, idx: torch.Tensor, still: torch.Tensor, active: torch.Tensor,
            follow: torch.Tensor) -> None:
    """Seeds that landed on the same point (same neighbour set) have the same future: keep one walker
    per position and let the others follow it (docs/architecture.md: "drop duplicate seeds"). In place."""
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


def _roots(follow: torch.Tensor) -> torch.Tensor:
    """Followers take their leader's final position; a leader may itself have started following a later
    leader, so follow the chain to its root (pointer jumping)."""
    S = follow.shape[0]
    root = torch.where(follow >= 0, follow, torch.arange(S, device=follow.device))
    for _ in range(S):
        nxt = root[root]
        if torch.equal(nxt, root):
            break
        root = nxt
    return root


def _shift(seeds: torch.Tensor, sample: torch.Tensor, bandwidth: float, max_iter: int, tol: float,
           chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat-kernel mean-shift of ``seeds`` (S,F) against ``sample`` (M,F) for unit *directions*.

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
        _dedupe(means, idx, ~done, active, follow)
    root = _roots(follow)
    return means[root], counts[root]


def _line_weights(d: torch.Tensor, clamp: bool) -> torch.Tensor:
    """In place: d = (m/cos).x -> sign(m.x) where |m.x| >= cos, else 0 (trunc, then clamp when cos <= 0.51)."""
    d.trunc_()
    if clamp:
        d.clamp_(-1.0, 1.0)
    return d


def _line_counts(modes: torch.Tensor, sample: torch.Tensor, cos_thr: float, chunk_size: int) -> torch.Tensor:
    """Number of sample lines within the neighbourhood of each mode (K,) int64."""
    cnt = torch.zeros(modes.shape[0], dtype=torch.float32, device=modes.device)
    ms = modes * (1.0 / cos_thr)
    for s0 in range(0, sample.shape[0], chunk_size):
        w = _line_weights(ms @ sample[s0:s0 + chunk_size].T, True)
        cnt += w.abs_().sum(1)
    return cnt.round().to(torch.int64)


def _shift_lines(seeds: torch.Tensor, sample: torch.Tensor, cos_thr: float, chord: float, max_iter: int,
                 tol: float, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat-kernel mean-shift of unit ``seeds`` (S,F) against unit ``sample`` (M,F) on the projective sphere.

    The neighbours of the mode m are the sample lines x with ``|x.m| >= cos_thr`` (the paper's Eq. 2
    distance ``1 - |x.m|`` at most ``1 - cos``); each is flipped to m's side (``sign(x.m) x``) before the
    plain mean, and the mean is put back on the sphere with its canonical sign. A seed stops when the
    line moved by at most ``tol * chord`` (``sqrt(2 - 2|m_new.m_old|)``), when it has no neighbours, or
    after ``max_iter`` moves. Per chunk this is one matmul against ``m / cos`` whose truncation *is* the
    signed flat kernel (values in {-1,0,1} once |.| < 2), then a second matmul that sums the signed
    neighbours. Returns the final modes (S,F) and their neighbour counts (S,) int64 (0 = dropped).
    """
    S, Fd = seeds.shape
    means = _canon(seeds.clone())
    active = torch.ones(S, dtype=torch.bool, device=seeds.device)
    alive = torch.ones(S, dtype=torch.bool, device=seeds.device)
    follow = torch.full((S,), -1, dtype=torch.int64, device=seeds.device)
    inv_c = 1.0 / cos_thr
    clamp = cos_thr <= 0.51  # |x.m|/cos < 2 otherwise, so trunc alone gives {-1,0,1}
    stop = tol * chord
    for _ in range(max_iter):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        m = means[idx]
        ms = m * inv_c
        acc = torch.zeros(m.shape[0], Fd, dtype=m.dtype, device=m.device)
        for s0 in range(0, sample.shape[0], chunk_size):
            xc = sample[s0:s0 + chunk_size]
            acc.addmm_(_line_weights(ms @ xc.T, clamp), xc)
        # every signed neighbour has a positive dot with m, so the sum is non-zero iff there is one
        has = (acc * m).sum(1) > 0
        new = torch.where(has.unsqueeze(1), _canon(_normalize(acc, 1)), m)
        moved = (2.0 - 2.0 * (new * m).sum(1).abs()).clamp_min_(0.0).sqrt_()
        means[idx] = new
        alive[idx[~has]] = False
        done = (~has) | (moved <= stop)
        active[idx[done]] = False
        _dedupe(means, idx, ~done, active, follow)
    root = _roots(follow)
    uniq, inv = torch.unique(root, return_inverse=True)
    counts = torch.zeros(uniq.shape[0], dtype=torch.int64, device=seeds.device)
    live = alive[uniq]
    if bool(live.any()):
        counts[live] = _line_counts(means[uniq[live]], sample, cos_thr, chunk_size)
    return means[root], counts[inv]


def _merge(modes: torch.Tensor, counts: torch.Tensor, bandwidth: float, cos_thr: float | None = None) -> torch.Tensor:
    """scikit-learn's post-processing: drop empty seeds and exact duplicates, rank by
    (count, coordinates) descending, then let each surviving mode suppress every other
    mode within the neighbourhood (chord ``bandwidth`` for directions; ``|cos| >= cos_thr``
    for lines when ``cos_thr`` is given). Returns the kept modes (K,F) in rank order."""
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
    if cos_thr is None:
        d2 = ((centers[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
        near = d2 <= bandwidth * bandwidth
    else:
        near = np.abs(centers @ centers.T) >= cos_thr
    unique = np.ones(len(centers), dtype=bool)
    for i in range(len(centers)):
        if unique[i]:
            unique[near[i]] = False
            unique[i] = True
    return torch.as_tensor(centers[unique], dtype=modes.dtype, device=modes.device)


def _assign(x: torch.Tensor, modes: torch.Tensor, chunk_size: int, projective: bool = False) -> torch.Tensor:
    """Nearest mode of every row of x (P,F) -> (P,) int64, ties to the lowest index: Euclidean for
    directions, largest ``|x.m|`` for lines (unit modes)."""
    P = x.shape[0]
    out = torch.empty(P, dtype=torch.int64, device=x.device)
    if modes.shape[0] == 0 or P == 0:
        return out.fill_(-1)
    step = max(chunk_size, 1) * 8
    if projective:
        w = modes.T.contiguous()
        for s0 in range(0, P, step):
            out[s0:s0 + step] = torch.max(torch.mm(x[s0:s0 + step], w).abs_(), dim=1).indices
        return out
    # argmin ||x-m||^2 = argmax 2 x.m - ||m||^2 = argmax [x, 1] . [2m, -||m||^2]
    m_aug = torch.cat([2.0 * modes, -(modes * modes).sum(1, keepdim=True)], 1).T.contiguous()  # (F+1,K)
    w = m_aug[:-1]
    b = m_aug[-1]
    for s0 in range(0, P, step):
        score = torch.addmm(b, x[s0:s0 + step], w)
        out[s0:s0 + step] = torch.max(score, dim=1).indices
    return out


def _sample_rows(n_total: int, n: int, gen: torch.Generator, device) -> torch.Tensor:
    if n >= n_total:
        return torch.arange(n_total, device=device)
    # sorted: gathering the sample from a large feature map then walks memory in order
    return torch.randperm(n_total, generator=gen)[:n].sort().values.to(device)


def _seeds_from(sample: torch.Tensor, n_seeds: int, gen: torch.Generator, projective: bool) -> torch.Tensor:
    """``n_seeds`` rows of the sample; for lines only non-zero rows (a zero vector has no direction, so it
    has no neighbour on the projective sphere)."""
    if projective:
        nz = (sample != 0).any(1).nonzero().squeeze(1)
        if nz.numel() < sample.shape[0]:
            return sample[nz[_sample_rows(nz.numel(), n_seeds, gen, sample.device)]]
    return sample[_sample_rows(sample.shape[0], n_seeds, gen, sample.device)]


def _find_modes(start: torch.Tensor, sample: torch.Tensor, chord: float, cos_thr: float, projective: bool,
                max_iter: int, tol: float, chunk_size: int) -> torch.Tensor:
    if projective:
        means, counts = _shift_lines(start, sample, cos_thr, chord, max_iter, tol, chunk_size)
        return _merge(means, counts, chord, cos_thr)
    means, counts = _shift(start, sample, chord, max_iter, tol, chunk_size)
    return _merge(means, counts, chord)


@torch.no_grad()
def meanshift_points(
    points: Any,
    bandwidth: float | None = None,
    *,
    angle_deg: float = SPHERE_ANGLE_DEG,
    projective: bool = True,
    seeds: Any | None = None,
    n_seeds: int = 256,
    n_samples: int = 20000,
    max_iter: int = 300,
    tol: float = 1e-3,
    normalize: bool = True,
    chunk_size: int = 2048,
    seed: int = 0,
) -> tuple[Any, Any]:
    """Mean-shift clustering of a point set on the projective / unit sphere (the core of :func:`meanshift_sphere`).

    Args:
        points: (P,F) float embeddings, any finite range (L2-normalized here when
            ``normalize``), numpy or torch on any device.
        bandwidth: alias of ``angle_deg`` in Euclidean chord units on the unit sphere,
            ``angle = 2 asin(bandwidth/2)`` (sqrt(2)/2 is 41.41 degrees); overrides ``angle_deg``.
        angle_deg: neighbourhood in degrees (paper: 45, i.e. ``|cos| >= sqrt(2)/2`` for lines).
        projective: True (paper, Eq. 1-2): features are lines, ``f == -f``; False: unit
            directions, scikit-learn's ``MeanShift`` with ``bandwidth = 2 sin(angle/2)``.
        seeds: optional (S,F) float starting points (normalized like ``points``); default:
            ``n_seeds`` points drawn without replacement from the density sample.
        n_seeds: number of seeds drawn when ``seeds`` is None.
        n_samples: size of the random subsample the seeds are shifted against (all
            points when P <= n_samples).
        max_iter: maximum number of mean-shift steps per seed (sklearn's default 300).
        tol: a seed has converged when it moves by at most ``tol * chord`` (sklearn).
        normalize: L2-normalize ``points`` and ``seeds`` first (set False only if they already are).
        chunk_size: number of sample points per matmul chunk (2048 keeps the (S,chunk) block in L2).
        seed: seed of the CPU generator used for the subsamples (results are deterministic).

    Returns:
        (labels, modes): labels (P,) int64 in [0,K), the nearest mode of each point;
        modes (K,F) float32, ranked by density (the sklearn ``cluster_centers_`` order); for
        lines they are unit vectors with their largest-magnitude component positive.
        Same kind (numpy/torch) and device as ``points``.

    Raises:
        ShapeError, DTypeError, NonFiniteError, ValueRangeError: on bad input or settings.
        PosthocError: no seed has a neighbour (e.g. all seeds are zero vectors).
    """
    x, was_np = as_torch(points, "points")
    if x.ndim != 2:
        raise ShapeError(f"points must be (P,F); got shape {shape_str(x.shape)}")
    check_float(x, "points")
    check_finite(x, "points")
    chord, cos_thr = _resolve_neighbourhood(bandwidth, angle_deg, projective)
    _check_settings(n_seeds, n_samples, max_iter, tol, chunk_size)
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
        s = _seeds_from(sample, n_seeds, gen, projective)
    modes = _find_modes(s, sample, chord, cos_thr, projective, max_iter, tol, chunk_size)
    if modes.shape[0] == 0:
        raise PosthocError(
            f"mean-shift found no mode: none of the {s.shape[0]} seeds has a sample point within "
            f"{chord_to_angle(chord):.4g} degrees (chord {chord:.4g}); use a wider neighbourhood or seeds "
            "drawn from the data")
    labels = _assign(x, modes, chunk_size, projective)
    return restore(labels, was_np), restore(modes, was_np)


def _unit_columns(x: torch.Tensor) -> torch.Tensor:
    """(F,P) -> columns divided by max(norm, 1e-12) (F.normalize over dim 0, without its slow strided norm)."""
    n2 = torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
    for f in range(x.shape[0]):
        n2.addcmul_(x[f], x[f])
    return x / n2.sqrt_().clamp_min_(1e-12)


def _assign_columns(x: torch.Tensor, modes: torch.Tensor, chunk_size: int, projective: bool = False) -> torch.Tensor:
    """Nearest mode of every *normalized* column of the raw (F,P) map -> (P,) int64, ties to the lowest index.

    Directions: argmin_k ||x/|x| - m_k||^2 = argmax_k (2 x.m_k / |x| - ||m_k||^2): the normalization is
    folded into the scores chunk by chunk, so the full-resolution map is never normalized in memory.
    Lines: argmax_k |x.m_k| needs no normalization at all (|x| is the same for every k).
    """
    P = x.shape[1]
    out = torch.empty(P, dtype=torch.int64, device=x.device)
    if modes.shape[0] == 0 or P == 0:
        return out.fill_(-1)
    step = max(chunk_size, 1) * 8
    if projective:
        for c0 in range(0, P, step):
            out[c0:c0 + step] = torch.max(torch.mm(modes, x[:, c0:c0 + step]).abs_(), dim=0).indices
        return out
    w2 = 2.0 * modes  # (K,F)
    b = (modes * modes).sum(1, keepdim=True)  # (K,1)
    for c0 in range(0, P, step):
        xs = x[:, c0:c0 + step]
        nrm = xs.square().sum(0).sqrt_().clamp_min_(1e-12)
        score = torch.mm(w2, xs).div_(nrm).sub_(b)  # (K,c)
        out[c0:c0 + step] = torch.max(score, dim=0).indices
    return out


def _pool_lines(u: torch.Tensor) -> torch.Tensor:
    """2x2 pooling of a (F,h,w) map of unit lines: each pixel of a block is flipped to the side of the
    block's top-left pixel, summed and re-normalized (plain averaging would cancel f and -f). Odd sizes
    are zero-padded at the bottom/right (a zero vector adds nothing), like ``avg_pool2d(ceil_mode=True)``."""
    Fd, h, w = u.shape
    u = F.pad(u, (0, w % 2, 0, h % 2))
    blocks = u.reshape(Fd, (h + 1) // 2, 2, (w + 1) // 2, 2)
    ref = blocks[:, :, :1, :, :1]
    sgn = torch.where((blocks * ref).sum(0, keepdim=True) < 0, -1.0, 1.0)
    return _normalize((blocks * sgn).sum((2, 4)), 0)


def _meanshift_image(feat: torch.Tensor, chord: float, cos_thr: float, projective: bool, n_seeds: int,
                     n_samples: int, max_iter: int, tol: float, levels: int, chunk_size: int,
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
            if projective:
                prev = _pool_lines(prev)
            else:
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
            start = _seeds_from(sample, n_seeds, gen, projective)
        else:
            start = modes  # warm start from the coarser level's modes
        merged = _find_modes(start, sample, chord, cos_thr, projective, max_iter, tol, chunk_size)
        if merged.shape[0] == 0:
            if modes is not None:  # keep the coarser modes
                continue
            if not bool(start.any()):
                # only zero vectors were sampled: no direction anywhere, so one segment (mode 0)
                merged = torch.zeros(1, Fd, dtype=sample.dtype, device=sample.device)
            else:  # cannot happen for seeds drawn from the sample
                raise PosthocError("mean-shift found no mode (empty sample)")
        modes = merged
    assert modes is not None  # the first level always sets it (levels >= 1)
    labels = _assign_columns(x, modes, chunk_size, projective).reshape(h, w)
    return labels, modes


@overload
def meanshift_sphere(
    features: ArrayT, bandwidth: float | None = ..., *,
    angle_deg: float = ..., projective: bool = ..., n_seeds: int = ..., n_samples: int = ..., max_iter: int = ...,
    tol: float = ..., levels: int = ..., chunk_size: int = ..., seed: int = ...,
    return_modes: Literal[False] = ...,
) -> ArrayT: ...
@overload
def meanshift_sphere(
    features: ArrayT, bandwidth: float | None = ..., *,
    angle_deg: float = ..., projective: bool = ..., n_seeds: int = ..., n_samples: int = ..., max_iter: int = ...,
    tol: float = ..., levels: int = ..., chunk_size: int = ..., seed: int = ...,
    return_modes: Literal[True],
) -> tuple[ArrayT, list[ArrayT]]: ...
@torch.no_grad()
def meanshift_sphere(
    features: Array,
    bandwidth: float | None = None,
    *,
    angle_deg: float = SPHERE_ANGLE_DEG,
    projective: bool = True,
    n_seeds: int = 256,
    n_samples: int = 20000,
    max_iter: int = 300,
    tol: float = 1e-3,
    levels: int = 1,
    chunk_size: int = 2048,
    seed: int = 0,
    return_modes: bool = False,
) -> Any:
    """Segment a batch of per-pixel embeddings by mean-shift on the projective sphere (Dille et al.).

    See the module docstring for the algorithm and the paper's definitions (Eq. 1-2, the 45 degree
    neighbourhood) and docs/architecture.md for the decided semantics.

    Args:
        features: (B,F,h,w) float embeddings, any finite range; they are L2-normalized over F.
            numpy or torch, on any device (the work runs there).
        bandwidth: alias of ``angle_deg`` in Euclidean chord units on the unit sphere:
            ``angle = 2 asin(bandwidth/2)``, ``cos(angle) = 1 - bandwidth**2/2``. The old
            default ``bandwidth=sqrt(2)/2`` is 41.41 degrees (cos 0.75). Overrides ``angle_deg``.
        angle_deg: neighbourhood in degrees; default 45, the paper's ``|f1.f2| >= sqrt(2)/2``.
            Must be < 90 for lines.
        projective: True (default, the paper's Eq. 1): f and -f are the same feature; the mean
            is sign-aligned to the current mode and pixels go to the mode of largest ``|f.m|``.
            False: plain unit directions (scikit-learn's ``MeanShift`` with chord bandwidth).
        n_seeds: seeds subsampled per image (>= 256 recommended).
        n_samples: size of the per-image, per-level subsample the seeds are shifted against.
        max_iter: maximum mean-shift steps per seed.
        tol: convergence threshold, relative to the chord of the neighbourhood (sklearn's 1e-3).
        levels: pooled-pyramid warm start (1 = single resolution). Not the paper's §4.1
            multi-resolution refinement, which is :func:`posthoc.meanshift_multires`; kept for
            speed and for existing callers (with ``projective=False, bandwidth=sqrt(2)/2`` it is
            exactly the old behaviour).
        chunk_size: sample points (or pixels / 8) per matmul chunk; bounds the memory.
        seed: seed of the generator for the subsamples; the output is deterministic.
        return_modes: also return the list of per-image modes.

    Returns:
        labels (B,h,w) int64 with values in [0, K_b) per image (every pixel is assigned),
        same kind/device as ``features``; with ``return_modes`` a tuple
        ``(labels, [modes_b (K_b,F) float32, ...])``: unit sphere means (lines: canonical sign,
        largest-magnitude component positive; an image of zero vectors has one zero mode).

    Raises:
        ShapeError: features is not 4-D. DTypeError: not floating point.
        NonFiniteError: NaN/Inf in features. ValueRangeError: bad settings.

    Four 2-D embeddings on a 1x4 image: two point along x, one along -x, one along y.
    As lines, x and -x are one segment:

    >>> import torch
    >>> f = torch.tensor([[[[1.0, 0.9, -0.95, 0.0]], [[0.0, 0.1, 0.05, 1.0]]]])  # (B,F,h,w)
    >>> labels, modes = meanshift_sphere(f, return_modes=True)
    >>> labels.tolist(), tuple(modes[0].shape)
    ([[[0, 0, 0, 1]]], (2, 2))
    >>> meanshift_sphere(f, projective=False).tolist()  # as directions, -x is a third segment
    [[[0, 0, 2, 1]]]
    """
    f, was_np = as_torch(features, "features")
    if f.ndim != 4:
        raise ShapeError(f"features must be (B,F,h,w); got {f.ndim} axes with shape {shape_str(f.shape)}")
    check_float(f, "features")
    check_finite(f, "features")
    chord, cos_thr = _resolve_neighbourhood(bandwidth, angle_deg, projective)
    _check_settings(n_seeds, n_samples, max_iter, tol, chunk_size, levels)
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
        lab, modes = _meanshift_image(f[b].float(), chord, cos_thr, bool(projective), n_seeds, n_samples,
                                      max_iter, tol, levels, chunk_size, gen)
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

    def __init__(self, bandwidth: float | None = None, *, angle_deg: float = SPHERE_ANGLE_DEG,
                 projective: bool = True, n_seeds: int = 256, n_samples: int = 20000, max_iter: int = 300,
                 tol: float = 1e-3, levels: int = 1, chunk_size: int = 2048, seed: int = 0) -> None:
        _resolve_neighbourhood(bandwidth, angle_deg, projective)
        _check_settings(n_seeds, n_samples, max_iter, tol, chunk_size, levels)
        self.kw: dict[str, Any] = {"bandwidth": bandwidth, "angle_deg": angle_deg, "projective": bool(projective),
                   "n_seeds": n_seeds, "n_samples": n_samples, "max_iter": max_iter, "tol": tol,
                   "levels": levels, "chunk_size": chunk_size, "seed": seed}

    def __call__(self, features: Any, return_modes: bool = False) -> Any:
        return meanshift_sphere(features, return_modes=return_modes, **self.kw)  # type: ignore[call-overload]  # bool flag

    def __repr__(self) -> str:
        return "MeanShiftSphere(" + ", ".join(f"{k}={v!r}" for k, v in self.kw.items()) + ")"
