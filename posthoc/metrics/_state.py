"""Metric states as plain arrays, and their exact reduction over ``torch.distributed``.

Every accumulator's ``state_dict()`` is a flat ``dict[str, numpy.ndarray]``: settings and
counts as 0-d arrays (a string setting as a 0-d unicode array), data as 1-D or 2-D arrays.
Such a dict saves with ``np.savez`` and loads with ``np.load(allow_pickle=False)``, and it
never needs pickle.

``sync(process_group=None)`` brings the state of every rank of a process group into every
rank, in place, with two kinds of collectives:

* additive arrays of a fixed shape (confusion matrices, per-class sums, histograms) are
  all-reduced with ``SUM`` (integer sums are exact; float64 sums differ from a sequential
  sum by rounding only);
* variable-length arrays (per-frame bins, per-component values) are all-gathered (sizes first,
  then the arrays padded to the largest size) and concatenated **in rank order**. A data
  set split into contiguous blocks of frames, block r on rank r, is therefore merged in
  frame order, which is what a single process sees.

Gloo (CPU tensors) and NCCL (tensors on ``cuda:torch.cuda.current_device()``) are both
supported. A failed or timed-out collective (a rank died, the group's ``timeout`` passed)
raises :class:`MetricSyncError` naming the rank and the step.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import DTypeError, PosthocError, ShapeError, ValueRangeError

__all__ = [
    "MetricSyncError",
    "all_gather_arrays",
    "all_reduce_sum",
    "check_settings",
    "check_state_keys",
    "gather_and_check_settings",
    "scalar",
    "split_sizes",
    "sync_state",
]


class MetricSyncError(PosthocError, RuntimeError):
    """A collective of ``sync()`` failed: another rank died, or the group's timeout passed."""


def scalar(state: Mapping[str, np.ndarray], key: str) -> Any:
    """The Python value of a 0-d entry of a state dict."""
    return np.asarray(state[key]).item()


def check_state_keys(owner: str, state: Mapping[str, Any], required: Sequence[str]) -> None:
    """Raise unless ``state`` is a mapping of arrays holding every key in ``required``."""
    if not isinstance(state, Mapping):
        raise DTypeError(f"{owner}.load_state_dict expects a dict of arrays; got {type(state).__name__}")
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueRangeError(
            f"{owner}.load_state_dict: the state lacks {missing}; got keys {sorted(state)} "
            f"(was it saved by another accumulator or mode?)"
        )
    for k in required:
        if isinstance(state[k], torch.Tensor):
            continue
        if not isinstance(state[k], (np.ndarray, np.generic, int, float, str)):
            raise DTypeError(f"{owner}.load_state_dict: state[{k!r}] must be an array; got {type(state[k]).__name__}")


def as_array(state: Mapping[str, Any], key: str, dtype: Any, ndim: int) -> np.ndarray:
    """``state[key]`` as a numpy array of ``dtype`` with ``ndim`` axes (torch tensors are moved to the host)."""
    v = state[key]
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    a = np.asarray(v)
    if a.ndim != ndim:
        raise ShapeError(f"state[{key!r}] must have {ndim} axes; got shape {a.shape}")
    if dtype is not None:
        if np.dtype(dtype).kind in "iu" and a.dtype.kind not in "iu":
            raise DTypeError(f"state[{key!r}] must be an integer array; got dtype {a.dtype}")
        a = a.astype(dtype, copy=False)
    return a


def check_settings(owner: str, mine: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """Raise ValueRangeError unless the settings stored in ``state`` equal this accumulator's."""
    for k, v in mine.items():
        sv = state[k]
        if isinstance(sv, torch.Tensor):
            sv = sv.detach().cpu().numpy()
        a, b = np.asarray(sv), np.asarray(v)
        floats = a.dtype.kind == "f" and b.dtype.kind == "f"
        same = np.array_equal(a, b, equal_nan=True) if floats else np.array_equal(a, b)
        if not same:
            raise ValueRangeError(
                f"{owner}.load_state_dict: the state was saved with {k}={np.asarray(sv).tolist()!r}; "
                f"this accumulator has {k}={np.asarray(v).tolist()!r}"
            )


# --------------------------------------------------------------------------- collectives
def _dist():
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise MetricSyncError(
            "sync() needs an initialized torch.distributed process group "
            "(torch.distributed.init_process_group, e.g. under torchrun); got none"
        )
    return dist


def _device(dist: Any, group: Any) -> torch.device:
    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _call(dist: Any, what: str, fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except Exception as e:  # gloo/NCCL raise RuntimeError subclasses (DistBackendError, timeouts)
        rank = dist.get_rank()
        raise MetricSyncError(
            f"rank {rank}: {what} failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "another rank probably died or the process group's timeout passed"
        ) from e


def all_reduce_sum(a: np.ndarray, group: Any = None, what: str = "all_reduce") -> np.ndarray:
    """Element-wise sum of ``a`` (int64 or float64, same shape on every rank) over the group."""
    dist = _dist()
    dev = _device(dist, group)
    a = np.asarray(a)
    t = torch.from_numpy(np.ascontiguousarray(a).reshape(-1).copy()).to(dev)
    _call(dist, what, dist.all_reduce, t, op=dist.ReduceOp.SUM, group=group)
    return t.cpu().numpy().astype(a.dtype, copy=False).reshape(a.shape)


def all_gather_arrays(arrays: Sequence[np.ndarray], group: Any = None,
                      what: str = "all_gather") -> list[list[np.ndarray]]:
    """Gather 1-D arrays of any length from every rank.

    Args:
        arrays: the same number of 1-D arrays on every rank; array i has the same dtype
            (int64, float64, float32 or float16) on every rank, any length.
        group: process group (None = the default group).

    Returns:
        ``out[i][r]``: array i of rank r, in rank order of the group.
    """
    dist = _dist()
    dev = _device(dist, group)
    world = dist.get_world_size(group)
    arrays = [np.ascontiguousarray(a).ravel() for a in arrays]
    codes = {np.dtype(np.int64): 0, np.dtype(np.float64): 1, np.dtype(np.float32): 2, np.dtype(np.float16): 3}
    for a in arrays:
        if a.dtype not in codes:
            raise DTypeError(f"all_gather_arrays: arrays must be int64 or float; got dtype {a.dtype}")
    header = torch.tensor([a.shape[0] for a in arrays] + [codes[a.dtype] for a in arrays], dtype=torch.int64,
                          device=dev)
    headers = [torch.empty_like(header) for _ in range(world)]
    _call(dist, f"{what} (sizes)", dist.all_gather, headers, header, group=group)
    hs = torch.stack(headers).cpu().numpy()
    n = len(arrays)
    if n and not (hs[:, n:] == hs[0, n:]).all():
        raise MetricSyncError(f"{what}: the ranks hold states of different dtypes ({hs[:, n:].tolist()})")
    out: list[list[np.ndarray]] = []
    for i, a in enumerate(arrays):
        sizes = hs[:, i]
        m = int(sizes.max()) if world else 0
        if m == 0:  # empty everywhere: nothing to send
            out.append([a[:0].copy() for _ in range(world)])
            continue
        buf = torch.zeros(m, dtype=torch.from_numpy(a[:0]).dtype, device=dev)
        buf[: a.shape[0]] = torch.from_numpy(a).to(dev)
        bufs = [torch.empty_like(buf) for _ in range(world)]
        _call(dist, what, dist.all_gather, bufs, buf, group=group)
        out.append([b[: int(s)].cpu().numpy() for b, s in zip(bufs, sizes, strict=True)])
    return out


def _settings_code(settings: Mapping[str, Any]) -> int:
    blob = repr(sorted((k, np.asarray(v).tolist()) for k, v in settings.items())).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:7], "little")


def gather_and_check_settings(owner: str, settings: Mapping[str, Any], group: Any = None) -> None:
    """Raise MetricSyncError unless every rank's accumulator has the same settings."""
    dist = _dist()
    (codes,) = all_gather_arrays([np.array([_settings_code(settings)], np.int64)], group, f"{owner}.sync")
    ranks = [r for r, c in enumerate(codes) if int(c[0]) != int(codes[0][0])]
    if ranks:
        raise MetricSyncError(
            f"{owner}.sync: ranks {ranks} hold an accumulator with other settings than rank 0 "
            f"({', '.join(sorted(settings))}); this is rank {dist.get_rank()} with "
            + ", ".join(f"{k}={np.asarray(v).tolist()!r}" for k, v in sorted(settings.items()))
        )


def sync_state(owner: str, settings: Mapping[str, Any], state: Mapping[str, np.ndarray], sum_keys: Sequence[str],
               cat_keys: Sequence[str], group: Any = None) -> dict[str, np.ndarray]:
    """The state of the whole group: ``sum_keys`` all-reduced, ``cat_keys`` gathered and concatenated in rank order.

    Every rank gets the same dict. Keys in neither list (the settings) are copied.
    """
    gather_and_check_settings(owner, settings, group)
    new = dict(state)
    for k in sum_keys:
        new[k] = all_reduce_sum(np.asarray(state[k]), group, f"{owner}.sync ({k})")
    if cat_keys:
        gathered = all_gather_arrays([np.asarray(state[k]) for k in cat_keys], group, f"{owner}.sync")
        for k, parts in zip(cat_keys, gathered, strict=True):
            new[k] = np.concatenate(parts) if parts else np.asarray(state[k])
    return new


def split_sizes(values: np.ndarray, sizes: np.ndarray, what: str) -> list[np.ndarray]:
    """Split a concatenation back into its parts; checks that the sizes add up."""
    if sizes.size and sizes.min() < 0:
        raise ValueRangeError(f"{what}: sizes must be >= 0; got minimum {int(sizes.min())}")
    if int(sizes.sum()) != values.shape[0]:
        raise ShapeError(f"{what}: sizes add up to {int(sizes.sum())} but the values hold {values.shape[0]} entries")
    return np.split(values, np.cumsum(sizes)[:-1]) if sizes.size else []
