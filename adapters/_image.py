"""Image batch plumbing shared by teachers and proposal sources.

Every adapter is called on a batch of RGB images in one of two layouts
(docs/architecture.md, "Data flow"; ``adapters.base.Teacher``):

* ``(B,H,W,3)`` ``uint8`` numpy array or torch tensor, values 0..255;
* ``(B,3,H,W)`` floating-point torch tensor (or numpy array), values in [0,1].

:func:`to_float_batch` turns either into one ``(B,3,H,W)`` float32 tensor in [0,1]
(a new tensor: the caller's input is never modified), :func:`normalize` applies a
model's mean/std and channel order, and :func:`resize` / :func:`resize_to` move a
batch to the size a model runs at and back. PROPOSALS' sources use the same helpers.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from posthoc.errors import DTypeError, ShapeError, ValueRangeError
from posthoc.validation import check_finite, check_tensor_type, shape_str

log = logging.getLogger(__name__)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "check_mean_std",
    "image_size",
    "normalize",
    "parse_size",
    "resize",
    "resize_to",
    "to_float_batch",
]

#: ImageNet statistics for images in [0,1] (torchvision's convention).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_LAYOUTS = "(B,H,W,3) uint8 or (B,3,H,W) float in [0,1]"


def to_float_batch(images: Any, name: str = "images", *, device: Any | None = None) -> torch.Tensor:
    """Convert a batch of RGB images to a (B,3,H,W) float32 tensor in [0,1].

    Args:
        images: (B,H,W,3) uint8 numpy array or torch tensor (0..255), or (B,3,H,W)
            floating-point numpy array or torch tensor with values in [0,1].
        name: what to call the input in error messages.
        device: optional torch device to move the result to (default: the input's
            device; numpy input lands on the CPU).

    Returns:
        (B,3,H,W) float32 tensor, values in [0,1]. Always a new tensor, never a view
        of ``images``, so callers may modify it in place.

    Raises:
        DTypeError: not an array/tensor, or a dtype that fits neither layout
            (e.g. (B,H,W,3) float, (B,3,H,W) uint8, int16).
        ShapeError: not 4 axes, or no axis of size 3 where the layout needs it.
        ValueRangeError: float input outside [0,1] (likely 0..255 floats), or NaN/Inf.
    """
    check_tensor_type(images, name)
    x = torch.from_numpy(np.asarray(images)) if isinstance(images, np.ndarray) else images
    if x.ndim != 4:
        hint = " (add a batch axis, e.g. images[None])" if x.ndim == 3 else ""
        raise ShapeError(f"{name} must be a batch {_LAYOUTS}; got {x.ndim} axes with shape {shape_str(x.shape)}{hint}")
    if x.dtype == torch.uint8:
        if x.shape[-1] != 3:
            raise ShapeError(
                f"uint8 {name} must be (B,H,W,3) RGB (channels last); got shape {shape_str(x.shape)}"
            )
        x = x.to(device=device if device is not None else x.device)
        b, h, w, _ = x.shape
        out = torch.empty((b, 3, h, w), dtype=torch.float32, device=x.device)
        out.copy_(x.permute(0, 3, 1, 2))  # one pass: layout change and uint8 -> float32 together
        return out.div_(255.0)
    if x.is_floating_point():
        if x.shape[1] != 3:
            raise ShapeError(
                f"float {name} must be (B,3,H,W) RGB (channels first) in [0,1]; got shape {shape_str(x.shape)}"
                + (" (channels-last floats: pass uint8 or permute to (B,3,H,W))" if x.shape[-1] == 3 else "")
            )
        if x.numel():
            lo_t, hi_t = torch.aminmax(x)  # one pass; NaN/Inf show up in the extremes
            lo, hi = float(lo_t), float(hi_t)
            if not (np.isfinite(lo) and np.isfinite(hi)):
                check_finite(x, name)
            if lo < 0.0 or hi > 1.0:
                raise ValueRangeError(
                    f"float {name} must lie in [0,1]; got values in [{lo:g},{hi:g}]"
                    + (" (0..255 images: pass them as uint8)" if hi > 1.0 else "")
                )
        out = x.to(device=device if device is not None else x.device, dtype=torch.float32, copy=True)
        return out.contiguous()
    raise DTypeError(f"{name} must be uint8 (B,H,W,3) or floating point (B,3,H,W); got dtype {x.dtype}")


def image_size(images: Any) -> tuple[int, int]:
    """(H, W) of a batch in either layout (no conversion, no checks beyond the rank)."""
    x = images
    if x.ndim != 4:
        raise ShapeError(f"images must be a batch {_LAYOUTS}; got shape {shape_str(x.shape)}")
    if (isinstance(x, np.ndarray) and x.dtype == np.uint8) or (isinstance(x, torch.Tensor) and x.dtype == torch.uint8):
        return int(x.shape[1]), int(x.shape[2])
    return int(x.shape[2]), int(x.shape[3])


def check_mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Validate a per-channel mean/std pair (3 finite values each, std > 0)."""
    try:
        m = tuple(float(v) for v in mean)
        s = tuple(float(v) for v in std)
    except TypeError as e:
        raise DTypeError(f"mean and std must be sequences of 3 numbers; got {mean!r} and {std!r}") from e
    if len(m) != 3 or len(s) != 3:
        raise ShapeError(f"mean and std must have 3 entries (one per RGB channel); got {len(m)} and {len(s)}")
    if not all(np.isfinite(m)) or not all(np.isfinite(s)) or min(s) <= 0:
        raise ValueRangeError(f"mean must be finite and std finite and > 0; got mean={m}, std={s}")
    return m, s


def normalize(
    x: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    channel_order: str = "RGB",
    pixel_scale: float | None = None,
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """Apply a model's input normalization: ``(x * pixel_scale - mean) / std``, channel-wise.

    Args:
        x: (B,3,H,W) float32 RGB in [0,1] (the output of :func:`to_float_batch`).
        mean, std: per-channel statistics in the model's channel order and pixel scale,
            e.g. ImageNet (0.485,0.456,0.406)/(0.229,0.224,0.225) for [0,1] input, or
            mmseg's (123.675,116.28,103.53)/(58.395,57.12,57.375) for 0..255 input.
        channel_order: "RGB" or "BGR"; "BGR" flips the channel axis before normalizing.
        pixel_scale: 1.0 (model expects [0,1]) or 255.0 (model expects 0..255). None
            infers it from the mean: 255 if any mean value exceeds 1, else 1.

        inplace: overwrite ``x`` (which must then be a float32 tensor you own, e.g. the
            output of :func:`to_float_batch`) instead of allocating the result.

    Returns:
        (B,3,H,W) float32 on x's device: a new tensor, or ``x`` itself with ``inplace``.
        Computed in one pass as ``x * (pixel_scale/std) - mean/std``.
    """
    m, s = check_mean_std(mean, std)
    order = str(channel_order).upper()
    if order not in ("RGB", "BGR"):
        raise ValueRangeError(f"channel_order must be 'RGB' or 'BGR'; got {channel_order!r}")
    if pixel_scale is None:
        pixel_scale = 255.0 if max(m) > 1.0 else 1.0
    if order == "BGR":
        x = x.flip(1)  # a new tensor: safe to overwrite below
        inplace = True
    gain = torch.tensor([float(pixel_scale) / v for v in s], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    bias = torch.tensor([-a / b for a, b in zip(m, s, strict=False)], dtype=torch.float32,
                        device=x.device).view(1, 3, 1, 1)
    if inplace:
        return x.mul_(gain).add_(bias)
    return torch.addcmul(bias, x, gain)


def parse_size(size: Any, name: str = "input_size") -> tuple[int, int] | None:
    """Parse an (H, W) size: None, an int (square) or a pair of positive ints."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError) as e:
        raise DTypeError(f"{name} must be None, an int or a pair (H, W) of ints; got {size!r}") from e
    if h <= 0 or w <= 0:
        raise ValueRangeError(f"{name} must be positive (H, W); got {(h, w)}")
    return h, w


def resize(x: torch.Tensor, size: Sequence[int] | None, mode: str = "bilinear") -> torch.Tensor:
    """Resize a (B,C,H,W) float tensor to ``size`` = (H', W'); a no-op when it already has that size.

    Bilinear with ``align_corners=False`` (the convention of torchvision, mmseg and the
    official SML/ObsNet code when they upsample logits). ``mode="nearest"`` for labels
    cast to float. Returns x itself when no resize is needed.
    """
    if size is None:
        return x
    h, w = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (h, w):
        return x
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(x, size=(h, w), mode=mode, align_corners=False)
    return F.interpolate(x, size=(h, w), mode=mode)


def resize_to(x: torch.Tensor, like_hw: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """Resize (B,C,h,w) back to the input resolution ``like_hw`` = (H, W)."""
    return resize(x, (int(like_hw[0]), int(like_hw[1])), mode=mode)
