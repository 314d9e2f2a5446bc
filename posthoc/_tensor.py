"""numpy <-> torch plumbing: functions take either and return what they were given.

Convention 1 of DESIGN.md: every functional entry point accepts numpy arrays or
torch tensors and returns the same kind; a torch result stays on the input's device.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._checks import check_tensor_type

__all__ = ["as_float32", "as_torch", "restore"]


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
