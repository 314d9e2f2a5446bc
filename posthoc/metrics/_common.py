"""Input plumbing shared by the metric accumulators.

Metrics are computed on the host with numpy (the official SMIYC code is numpy too):
torch tensors, on any device, are copied to host memory once per ``update``. The
caller's arrays are never modified; every helper here returns new arrays or
read-only views.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ..errors import DTypeError, NonFiniteError, PosthocError, ShapeError, ValueRangeError
from ..validation import check_tensor_type, shape_str

__all__ = [
    "EmptyMetricError",
    "as_batch",
    "check_binary_labels",
    "check_class_map",
    "check_mergeable",
    "check_scores",
    "to_numpy",
]


class EmptyMetricError(PosthocError, ValueError):
    """``compute()`` was called on an accumulator that holds no (valid) data."""


def check_anomaly_ignore_index(ignore_index: Any, owner: str) -> int:
    """The void value of 0/1/void anomaly labels: an int that is not a class value (0 or 1).

    With ``ignore_index`` 0 or 1 the pixel metrics would ignore nothing while the component
    metrics would void every anomaly, so such a value is refused.
    """
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise DTypeError(f"{owner}: ignore_index must be an int (255 in SMIYC); got {ignore_index!r}")
    if int(ignore_index) in (0, 1):
        raise ValueRangeError(
            f"{owner}: ignore_index must not be a class value of anomaly labels (0 = in-distribution, "
            f"1 = anomaly); got {int(ignore_index)}. Use the void value of the labels, 255 in SMIYC"
        )
    return int(ignore_index)


def to_numpy(x: Any, name: str) -> np.ndarray:
    """numpy array or torch tensor (any device) -> numpy array on the host, without copying numpy input.

    bfloat16 tensors become float32 (numpy has no bfloat16).
    """
    check_tensor_type(x, name)
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.cpu().numpy()
    return x


def as_batch(x: np.ndarray, name: str, *, allow_channel: bool = False) -> np.ndarray:
    """Return a (B,H,W) view of an (H,W), (B,H,W) or, with ``allow_channel``, (B,1,H,W) array."""
    if x.ndim == 2:
        return x[None]
    if x.ndim == 3:
        return x
    if allow_channel and x.ndim == 4 and x.shape[1] == 1:
        return x[:, 0]
    layout = "(H,W), (B,H,W) or (B,1,H,W)" if allow_channel else "(H,W) or (B,H,W)"
    raise ShapeError(f"{name} must be {layout}; got {x.ndim} axes with shape {shape_str(x.shape)}")


def check_scores(scores: Any, name: str = "scores") -> np.ndarray:
    """Scores -> (B,H,W) float numpy array (dtype kept: float16/32/64; bfloat16 -> float32)."""
    s = as_batch(to_numpy(scores, name), name, allow_channel=True)
    if s.dtype.kind != "f":
        raise DTypeError(
            f"{name} must be a floating-point array of anomaly scores (higher = more anomalous); got dtype {s.dtype}"
        )
    return s


def check_same_shape(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    if a.shape != b.shape:
        raise ShapeError(
            f"{b_name} must have the shape of {a_name} {shape_str(a.shape)} (as (B,H,W)); got {shape_str(b.shape)}"
        )


def _check_integer(x: np.ndarray, name: str) -> None:
    if x.dtype.kind not in "iub":
        raise DTypeError(f"{name} must be an integer (or bool) label map; got dtype {x.dtype}")


def check_binary_labels(labels: Any, ignore_index: int, name: str = "labels") -> np.ndarray:
    """Binary anomaly labels -> (B,H,W) numpy array with values in {0, 1, ignore_index}.

    bool labels are accepted (True = anomaly). Any other value raises ValueRangeError that
    lists the offending values.
    """
    lab = as_batch(to_numpy(labels, name), name, allow_channel=True)
    _check_integer(lab, name)
    if lab.dtype == np.bool_:
        return lab.view(np.uint8)
    if lab.size:
        # one pass over a small histogram is cheaper than np.unique for uint8 maps
        if lab.dtype == np.uint8:
            present = np.flatnonzero(np.bincount(lab.ravel(), minlength=256))
        else:
            present = np.unique(lab)
        bad = [int(v) for v in present if v not in (0, 1, ignore_index)]
        if bad:
            raise ValueRangeError(
                f"{name} must hold 0 (in-distribution), 1 (anomaly) or {ignore_index} (void); "
                f"got other values {bad[:10]}{' ...' if len(bad) > 10 else ''}"
            )
    return lab


def check_class_map(x: Any, name: str, num_classes: int, ignore_index: int | None,
                    *, allow_ignore: bool = True) -> np.ndarray:
    """Integer class map -> (B,H,W) int64 numpy array with values in [0,num_classes) (or ignore_index)."""
    a = as_batch(to_numpy(x, name), name)
    _check_integer(a, name)
    a = a.astype(np.int64, copy=False)
    if a.size:
        inside = (a >= 0) & (a < num_classes)
        if allow_ignore and ignore_index is not None:
            inside |= a == ignore_index
        if not inside.all():
            bad = np.unique(a[~inside])
            allowed = f"[0,{num_classes - 1}]" + (
                f" or {ignore_index} (void)" if allow_ignore and ignore_index is not None else ""
            )
            raise ValueRangeError(
                f"{name} must hold class ids in {allowed}; got other values {bad[:10].tolist()}"
                f"{' ...' if bad.size > 10 else ''}"
            )
    return a


def check_finite_values(v: np.ndarray, name: str) -> None:
    """Raise NonFiniteError if a float array holds NaN or Inf."""
    if v.size and not np.isfinite(v).all():
        n_nan = int(np.isnan(v).sum())
        n_inf = int(np.isinf(v).sum())
        raise NonFiniteError(
            f"{name} must be finite on non-void pixels; got {n_nan} NaN and {n_inf} Inf values"
        )


def check_mergeable(a: Any, b: Any, fields: Iterable[str]) -> None:
    """Raise TypeError/ValueError unless ``b`` is the same accumulator type with the same settings as ``a``."""
    if type(a) is not type(b):
        raise DTypeError(f"can only merge a {type(a).__name__} with another {type(a).__name__}; got {type(b).__name__}")
    for f in fields:
        va, vb = getattr(a, f), getattr(b, f)
        same = np.array_equal(va, vb) if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray) else va == vb
        if not same:
            raise ValueRangeError(
                f"cannot merge {type(a).__name__} states with different settings: {f}={va!r} vs {f}={vb!r}"
            )
