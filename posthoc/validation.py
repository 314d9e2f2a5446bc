"""Input checks and numpy/torch plumbing shared by every public entry point.

Convention (DESIGN.md, "Conventions" 1 and 4): user input is checked here, never with
``assert``; every error is one of :mod:`posthoc.errors`, whose message names what was
expected and what came. Functions take numpy arrays or torch tensors and return what
they were given (:func:`as_torch` / :func:`restore`); a torch result stays on the input's
device.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .errors import DTypeError, NonFiniteError, ShapeError, ValueRangeError

__all__ = [
    "as_float32",
    "as_torch",
    "check_finite",
    "check_float",
    "check_int",
    "check_labels",
    "check_ndim",
    "check_range",
    "check_same_hw",
    "check_tensor_type",
    "restore",
    "shape_str",
]


def shape_str(shape: Sequence[int]) -> str:
    """Format a shape as ``(2,19,512,1024)``."""
    return "(" + ",".join(str(int(s)) for s in shape) + ")"


def check_tensor_type(x: Any, name: str) -> None:
    """Raise DTypeError unless ``x`` is a numpy array or a torch tensor."""
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise DTypeError(f"{name} must be a numpy array or a torch tensor; got {type(x).__name__}")


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise NonFiniteError if a float tensor holds NaN or Inf (one reduction, no copy of x)."""
    if not x.is_floating_point() or not x.numel():
        return
    # fast path: one streaming reduction, no bool temporary. Any NaN/Inf makes the sum
    # non-finite, so a finite sum proves there are none (a huge finite sum that overflows
    # falls through to the exact check below).
    if bool(torch.isfinite(x.sum(dtype=torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None))):
        return
    if not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise NonFiniteError(
            f"{name} must be finite; got {n_nan} NaN and {n_inf} Inf values in a tensor of shape {shape_str(x.shape)}"
        )


def check_ndim(x: torch.Tensor, name: str, allowed: Sequence[int], layout: str) -> None:
    """Raise ShapeError unless ``x.ndim`` is one of ``allowed``; ``layout`` names the axes, e.g. '(B,C,H,W)'."""
    if x.ndim not in allowed:
        raise ShapeError(f"{name} must be {layout}; got {x.ndim} axes with shape {shape_str(x.shape)}")


def check_same_hw(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str, b_layout: str) -> None:
    """Raise ShapeError unless the last two axes and the batch axis of ``b`` match ``a``."""
    if a.shape[0] != b.shape[0] or a.shape[-2:] != b.shape[-2:]:
        which = "batch axis (0)" if a.shape[0] != b.shape[0] else "spatial axes (H,W)"
        raise ShapeError(
            f"{b_name} must be {b_layout} matching {a_name} {shape_str(a.shape)}; "
            f"got {shape_str(b.shape)} (mismatch in the {which})"
        )


def check_float(x: torch.Tensor, name: str) -> None:
    """Raise DTypeError unless ``x`` has a floating dtype."""
    if not x.is_floating_point():
        raise DTypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")


def check_int(x: torch.Tensor, name: str) -> None:
    """Raise DTypeError unless ``x`` has an integer dtype (bool is not accepted)."""
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise DTypeError(f"{name} must be an integer tensor (int32/int64, -1 = unassigned); got dtype {x.dtype}")


def check_labels(labels: torch.Tensor, name: str = "labels") -> int:
    """Check an integer label map with -1 for unassigned; return max label + 1 (0 when all are -1)."""
    check_int(labels, name)
    if labels.numel() == 0:
        return 0
    lo_t, hi_t = torch.aminmax(labels)  # one pass for both ends
    lo = int(lo_t)
    if lo < -1:
        raise ValueRangeError(f"{name} must be >= -1 (-1 = unassigned); got minimum {lo}")
    return int(hi_t) + 1


def check_range(x: torch.Tensor, name: str, lo: float, hi: float) -> None:
    """Raise ValueRangeError unless every value lies in [lo, hi] (and is finite)."""
    check_finite(x, name)
    if x.numel() == 0:
        return
    mn, mx = float(x.min()), float(x.max())
    if mn < lo or mx > hi:
        raise ValueRangeError(f"{name} must lie in [{lo:g},{hi:g}]; got values in [{mn:g},{mx:g}]")


def as_torch(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    """Return ``(tensor, was_numpy)``. numpy input is wrapped without a copy where possible."""
    check_tensor_type(x, name)
    if isinstance(x, np.ndarray):
        if x.dtype == np.float16:
            return torch.from_numpy(np.ascontiguousarray(x)), True
        return torch.from_numpy(np.ascontiguousarray(x)), True
    return x, False


def as_float32(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16/float64 -> float32 (a new tensor); float32 passes through unchanged."""
    return x if x.dtype == torch.float32 else x.float()


def restore(y: torch.Tensor, was_numpy: bool) -> Any:
    """Give back numpy if the caller gave numpy, else the tensor (on its device)."""
    if was_numpy:
        return y.detach().cpu().numpy()
    return y
