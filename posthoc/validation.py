"""Input checks and numpy/torch plumbing shared by every public entry point.

Convention (docs/architecture.md, "Conventions" 1 and 4): user input is checked here, never with
``assert``; every error is one of :mod:`posthoc.errors`, whose message names what was
expected and what came. Functions take numpy arrays or torch tensors and return what
they were given (:func:`as_torch` / :func:`restore`); a torch result stays on the input's
device.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .errors import DeviceError, DTypeError, NonFiniteError, OverlapError, ShapeError, ValueRangeError

__all__ = [
    "LABEL_DTYPES",
    "as_float32",
    "as_int_labels",
    "as_label_map",
    "as_scores_4d",
    "as_torch",
    "check_device",
    "check_finite",
    "check_float",
    "check_int",
    "check_label_dtype",
    "check_label_range",
    "check_labels",
    "check_ndim",
    "check_range",
    "check_same_hw",
    "check_size",
    "check_tensor_type",
    "compact_labels",
    "finite_range",
    "label_check_memo",
    "label_range_error",
    "masks_to_labels",
    "range_error",
    "restore",
    "shape_str",
    "to_device",
]


def shape_str(shape: Sequence[int]) -> str:
    """Format a shape as ``(2,19,512,1024)``."""
    return "(" + ",".join(str(int(s)) for s in shape) + ")"


def check_tensor_type(x: Any, name: str) -> None:
    """Raise DTypeError unless ``x`` is a numpy array or a torch tensor; DeviceError for a meta
    tensor (it has a shape but no data, so no op can compute on it)."""
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise DTypeError(f"{name} must be a numpy array or a torch tensor; got {type(x).__name__}")
    if isinstance(x, torch.Tensor) and x.is_meta:
        raise DeviceError(
            f"{name} is a meta tensor (shape {shape_str(x.shape)}, no data); pass a tensor on a real device "
            "(cpu or cuda), e.g. after materialising the model's outputs"
        )


def finite_range(x: torch.Tensor, name: str) -> tuple[float, float] | None:
    """``(min, max)`` of a float tensor in one pass; raise NonFiniteError on NaN or Inf.

    ``torch.aminmax`` propagates NaN and exposes +-Inf in a single streaming read with no
    temporary (about 50x faster on CPU than ``torch.isfinite(x).all()``); the counting pass
    only runs to word the error. Returns None for non-float or empty tensors.

    >>> finite_range(torch.tensor([0.5, -2.0, 3.0]), "x")
    (-2.0, 3.0)
    >>> finite_range(torch.tensor([1.0, float("nan")]), "x")
    Traceback (most recent call last):
    ...
    posthoc.errors.NonFiniteError: x must be finite; got 1 NaN and 0 Inf values in a tensor of shape (2)
    """
    if not x.is_floating_point() or x.numel() == 0:
        return None
    mn_t, mx_t = torch.aminmax(x.reshape(-1))
    mn, mx = float(mn_t), float(mx_t)
    if math.isfinite(mn) and math.isfinite(mx):
        return mn, mx
    n_nan = int(torch.isnan(x).sum())
    n_inf = int(torch.isinf(x).sum())
    raise NonFiniteError(
        f"{name} must be finite; got {n_nan} NaN and {n_inf} Inf values in a tensor of shape {shape_str(x.shape)}"
    )


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise NonFiniteError if a float tensor holds NaN or Inf (one ``aminmax`` pass, no copy of x).

    Non-float and empty tensors pass.
    """
    finite_range(x, name)


def range_error(name: str, lo: float, hi: float, mn: float | None = None, mx: float | None = None) -> ValueRangeError:
    """The error for values outside [lo, hi], with the observed range [mn, mx] when known.

    The one wording of the range message: :func:`check_range` and the kernels' fused
    checks (:func:`posthoc.kernels.check_values`) raise what this returns.

    >>> str(range_error("probs", 0, 1, -0.25, 1.0))
    'probs must lie in [0,1]; got values in [-0.25,1]'
    """
    msg = f"{name} must lie in [{lo:g},{hi:g}]"
    if mn is not None and mx is not None:
        msg += f"; got values in [{mn:g},{mx:g}]"
    return ValueRangeError(msg)


def check_range(x: torch.Tensor, name: str, lo: float, hi: float) -> None:
    """Raise unless every value lies in [lo, hi] and is finite; one ``aminmax`` pass.

    Raises:
        NonFiniteError: NaN or Inf in a float tensor (with their counts).
        ValueRangeError: values outside [lo, hi] (with the observed range), for float and
            integer tensors alike.

    >>> check_range(torch.tensor([0.0, 0.5, 1.0]), "p", 0.0, 1.0)
    >>> check_range(torch.tensor([0.0, 1.5]), "p", 0.0, 1.0)
    Traceback (most recent call last):
    ...
    posthoc.errors.ValueRangeError: p must lie in [0,1]; got values in [0,1.5]
    """
    if x.numel() == 0:
        return
    fr = finite_range(x, name) if x.is_floating_point() else None
    if fr is not None:
        mn, mx = fr
    else:
        t = x.reshape(-1)
        mn_t, mx_t = torch.aminmax(t.to(torch.uint8) if t.dtype == torch.bool else t)
        mn, mx = float(mn_t), float(mx_t)
    if mn < lo or mx > hi:
        raise range_error(name, lo, hi, mn, mx)


def check_device(x: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    """Raise DeviceError unless ``x`` lives on the device of ``ref``."""
    if x.device != ref.device:
        raise DeviceError(f"{name} must be on the device of {ref_name} ({ref.device}); got {x.device}")


def to_device(x: torch.Tensor, was_numpy: bool, ref: torch.Tensor, name: str, ref_name: str) -> torch.Tensor:
    """Move a numpy-born tensor to ``ref``'s device; refuse a torch tensor on another device.

    A caller's torch tensor is never moved silently (docs/architecture.md, Conventions 1): it raises
    DeviceError instead.
    """
    if x.device == ref.device:
        return x
    if was_numpy:
        return x.to(ref.device)
    check_device(x, name, ref, ref_name)
    return x  # pragma: no cover - check_device raised


def check_size(size: Any, hw: tuple[int, int]) -> tuple[int, int]:
    """Validate an optional output ``size=(H,W)`` argument; None gives ``hw``.

    Raises:
        ShapeError: anything but a pair of positive ints (bools and fractions included).

    >>> check_size(None, (4, 5)), check_size((8, 10), (4, 5))
    ((4, 5), (8, 10))
    """
    if size is None:
        return hw
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ShapeError(f"size must be a pair (H,W) of positive ints or None; got {size!r}") from None
    if h <= 0 or w <= 0 or any(isinstance(s, bool) for s in size) or any(float(s) != int(s) for s in size):
        raise ShapeError(f"size must be a pair (H,W) of positive ints or None; got {size!r}")
    return h, w


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


#: the label dtypes every op accepts (one rule for every label map; see :func:`check_label_dtype`)
LABEL_DTYPES = (torch.int32, torch.int64)


def check_label_dtype(labels: torch.Tensor, name: str = "labels") -> None:
    """Raise DTypeError unless a label map is int32 or int64.

    This is the one rule for label maps: -1 = unassigned needs a signed type, and a uint8
    map's 255 is ambiguous (a region, or the "ignore" value of PNG label files?), so other
    integer dtypes are refused rather than read one way silently. Convert explicitly, e.g.
    ``lab.astype(np.int32)``, after mapping 255 to -1 where 255 means "no region".
    """
    if labels.dtype in LABEL_DTYPES:
        return
    hint = ""
    if labels.dtype == torch.uint8:
        hint = (" (uint8 maps are refused because 255 would be read as region 255: map the value that "
                "means 'no region' to -1 and convert, e.g. np.where(lab == 255, -1, lab).astype(np.int32))")
    elif not (labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool):
        hint = " (convert with .astype(np.int32) / .to(torch.int32))"
    raise DTypeError(
        f"{name} must be an int32 or int64 label map (-1 = unassigned); got dtype {labels.dtype}{hint}"
    )


#: label tensors already checked inside a :func:`label_check_memo` block: id -> (tensor, version, max + 1)
_CHECKED_LABELS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("posthoc_checked_labels", default=None)


def _version(t: torch.Tensor) -> int:
    try:
        return int(t._version)
    except RuntimeError:  # inference tensors keep no version counter (and cannot change outside inference mode)
        return -1


@contextlib.contextmanager
def label_check_memo() -> Iterator[None]:
    """Within the block, :func:`check_labels` reads a given label tensor once.

    :class:`posthoc.Pipeline` hands the same label map to several ops (``fuse``,
    ``region_class_logits``, ``refine``), and each checks it with a full pass. Inside this
    block the first check's result is kept for that tensor object (and its version counter,
    so an in-place change is checked again) and reused by the later ones. The block is
    private to one call of the chain, whose ops never modify their inputs; outside it every
    check reads the labels.
    """
    token = _CHECKED_LABELS.set({})
    try:
        yield
    finally:
        _CHECKED_LABELS.reset(token)


def check_labels(labels: torch.Tensor, name: str = "labels") -> int:
    """Check an int32/int64 label map with -1 for unassigned; return max label + 1 (0 when all are -1).

    One ``aminmax`` pass gives both the check (minimum >= -1) and the number of regions
    (none inside :func:`label_check_memo` for a tensor checked there before).

    >>> check_labels(torch.tensor([[-1, 0], [2, 2]]))
    3
    """
    check_label_dtype(labels, name)
    if labels.numel() == 0:
        return 0
    memo = _CHECKED_LABELS.get()
    if memo is not None:
        hit = memo.get(id(labels))
        if hit is not None and hit[0] is labels and hit[1] == _version(labels):
            return hit[2]
    lo_t, hi_t = torch.aminmax(labels.reshape(-1))  # one pass for both ends
    lo = int(lo_t)
    if lo < -1:
        raise ValueRangeError(f"{name} must be >= -1 (-1 = unassigned); got minimum {lo}")
    n = int(hi_t) + 1
    if memo is not None:
        memo[id(labels)] = (labels, _version(labels), n)
    return n


def compact_labels(labels: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    """Renumber sparse label ids densely when their range exceeds the frame size.

    The kernels keep one accumulator per region id up to the largest id, so an id of 2**40 on
    one pixel (or RGB-encoded panoptic ids up to 16.7M) would ask for memory far beyond the
    frame's. When ``n`` (max id + 1) is larger than the number of pixels of one image, the ids
    are replaced by their rank among the distinct ids (``torch.unique``; order kept, -1 stays
    -1), which bounds the memory by the frame size. Dense maps pass through untouched (no
    copy). The result of every op that only groups pixels by region (fuse, split, offsets) is
    unchanged by the renumbering.

    Args:
        labels: (..., H, W) int32/int64 labels >= -1, already checked.
        n: max label + 1 (from :func:`check_labels`).

    Returns:
        ``(labels, n)``: the input itself when it is dense enough, else a new int64 map and the
        number of distinct ids.

    >>> lab, n = compact_labels(torch.tensor([[-1, 2**40], [7, 7]]), 2**40 + 1)
    >>> lab.tolist(), n
    ([[-1, 1], [0, 0]], 2)
    """
    hw = labels.shape[-2] * labels.shape[-1] if labels.ndim >= 2 else labels.numel()
    if n <= max(hw, 1):
        return labels, n
    uniq, inv = torch.unique(labels, sorted=True, return_inverse=True)
    has_unassigned = uniq.numel() > 0 and int(uniq[0]) == -1
    if has_unassigned:
        inv = inv - 1  # -1 keeps rank 0 -> -1, the regions start at 0
    n_new = int(uniq.numel()) - int(has_unassigned)
    return inv.reshape(labels.shape).to(torch.int64), n_new


def label_range_error(name: str, num_regions: int, lo: int, hi: int) -> ValueRangeError:
    """The error for labels outside [-1, num_regions) (the kernels' bound), with the observed range."""
    return ValueRangeError(
        f"{name} must lie in [-1,{num_regions - 1}] (-1 = unassigned, num_regions={num_regions}); "
        f"got values in [{lo},{hi}]"
    )


def check_label_range(labels: torch.Tensor, num_regions: int, name: str = "labels") -> None:
    """Raise ValueRangeError unless every label lies in [-1, num_regions); one ``aminmax`` pass."""
    if labels.numel() == 0:
        return
    lo_t, hi_t = torch.aminmax(labels.reshape(-1))
    lo, hi = int(lo_t), int(hi_t)
    if lo < -1 or hi >= num_regions:
        raise label_range_error(name, num_regions, lo, hi)


def as_torch(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    """Return ``(tensor, was_numpy)``. numpy input is wrapped without a copy where possible."""
    check_tensor_type(x, name)
    if isinstance(x, np.ndarray):
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


def as_int_labels(lab: torch.Tensor) -> torch.Tensor:
    """int32/int64 labels pass through; other integer dtypes (uint8, int16, ...) become int64 (a copy)."""
    if lab.dtype in (torch.int32, torch.int64):
        return lab
    return lab.long()


def as_scores_4d(x: Any, name: str, check: bool = True) -> tuple[torch.Tensor, bool, tuple]:
    """(B,C,H,W), (C,H,W) or (H,W) float scores -> a float32 (B,C,H,W) view or copy.

    Args:
        x: float scores (any float dtype; computed in float32).
        name: the argument's name in error messages.
        check: also check that the scores are finite (leave it to a later fused check with False).

    Returns:
        ``(scores4d, was_numpy, original_shape)``.

    >>> t, was_numpy, shape = as_scores_4d(np.zeros((3, 4), np.float64), "scores")
    >>> tuple(t.shape), t.dtype, was_numpy, shape
    ((1, 1, 3, 4), torch.float32, True, (3, 4))
    """
    t, was_numpy = as_torch(x, name)
    check_float(t, name)
    check_ndim(t, name, (2, 3, 4), "(B,C,H,W), (C,H,W) or (H,W)")
    shape = tuple(t.shape)
    t = as_float32(t)
    if check:
        check_finite(t, name)
    if t.ndim == 2:
        t = t.reshape(1, 1, *shape)
    elif t.ndim == 3:
        t = t.unsqueeze(0)
    return t, was_numpy, shape


def masks_to_labels(masks: torch.Tensor, name: str = "masks") -> torch.Tensor:
    """(B,N,H,W) bool non-overlapping masks -> (B,H,W) int64 labels, -1 where no mask is set.

    Raises:
        OverlapError: a pixel is covered by two or more masks.

    >>> masks_to_labels(torch.tensor([[[[True, False, False]], [[False, True, False]]]])).tolist()
    [[[0, 1, -1]]]
    """
    B, N, H, W = masks.shape
    if N == 0:
        return torch.full((B, H, W), -1, dtype=torch.int64, device=masks.device)
    cover = masks.sum(dim=1, dtype=torch.int32)
    n_over = int((cover > 1).sum())
    if n_over:
        raise OverlapError(
            f"boolean {name} masks must not overlap (a partition of the image, -1 where uncovered); "
            f"got {n_over} pixels covered by 2 or more masks. For overlapping soft proposals use "
            f"posthoc.soft_assign(region_scores, validity) (CSL Eq. 2) to obtain a label map"
        )
    idx = masks.to(torch.uint8).argmax(dim=1)
    return torch.where(cover > 0, idx, torch.full_like(idx, -1)).long()


def as_label_map(
    proposals: Any,
    scores: torch.Tensor,
    batched: bool,
    scores_name: str = "scores",
    return_n: bool = False,
    arg_name: str = "labels",
) -> Any:
    """A label map, non-overlapping boolean masks or a Proposals -> checked (B,H,W) int labels.

    This is the one check of a label map on its way to the kernels: dtype, shape against
    ``scores``, device, and one ``aminmax`` pass for the range (labels >= -1) that also
    gives the number of regions, so the kernels need not read the labels to check them again.

    Args:
        proposals: (B,H,W) — (H,W) when not ``batched`` — integer labels, -1 = unassigned;
            (B,N,H,W) / (N,H,W) boolean masks that must not overlap; or a
            :class:`posthoc.Proposals` (its ``labels``).
        scores: the (B,C,H,W) tensor the labels must match (and whose device they take).
        batched: whether the caller's scores had a batch axis.
        scores_name, arg_name: the names of the two arguments in error messages.
        return_n: also return N (max label + 1, or the number of masks).

    Returns:
        (B,H,W) int32/int64 labels on the device of ``scores`` (and N with ``return_n``).

    Raises:
        DTypeError, ShapeError, DeviceError, ValueRangeError, OverlapError: see the message.

    >>> lab, n = as_label_map(np.array([[0, 0, 1]]), torch.zeros(1, 2, 1, 3), batched=False, return_n=True)
    >>> lab.tolist(), n
    ([[[0, 0, 1]]], 2)
    """
    # a posthoc.Proposals, recognised by its labels (types imports this module, not the reverse)
    if not isinstance(proposals, (np.ndarray, torch.Tensor)) and hasattr(proposals, "labels"):
        name = f"{arg_name}.labels"
        lab, was_np = as_torch(proposals.labels, name)
    else:
        check_tensor_type(proposals, arg_name)
        lab, was_np = as_torch(proposals, arg_name)
        name = arg_name
    lab = to_device(lab, was_np, scores, name, scores_name)
    B, _, H, W = scores.shape
    want_lab = f"(B,H,W)=({B},{H},{W})" if batched else f"(H,W)=({H},{W})"
    if lab.dtype == torch.bool:
        want = f"(B,N,H,W) with B={B}, H={H}, W={W}" if batched else f"(N,H,W) with H={H}, W={W}"
        if (batched and lab.ndim != 4) or (not batched and lab.ndim != 3):
            raise ShapeError(f"boolean {name} masks must be {want}; got shape {shape_str(lab.shape)}")
        masks = lab if batched else lab.unsqueeze(0)
        if masks.shape[0] != B or masks.shape[-2:] != (H, W):
            axis = "batch axis (0)" if masks.shape[0] != B else "spatial axes (H,W)"
            raise ShapeError(
                f"boolean {name} masks must be {want} matching {scores_name}; got {shape_str(lab.shape)} "
                f"(mismatch in the {axis})"
            )
        lab = masks_to_labels(masks, name)
        return (lab, masks.shape[1]) if return_n else lab
    check_int(lab, name)
    if batched:
        if lab.ndim != 3:
            raise ShapeError(f"{name} must be an integer label map {want_lab}; got shape {shape_str(lab.shape)}")
    else:
        if lab.ndim == 3 and lab.shape[0] == 1:
            pass
        elif lab.ndim == 2:
            lab = lab.unsqueeze(0)
        else:
            raise ShapeError(f"{name} must be an integer label map {want_lab}; got shape {shape_str(lab.shape)}")
    if lab.shape[0] != B or lab.shape[-2:] != (H, W):
        axis = "batch axis (0)" if lab.shape[0] != B else "spatial axes (H,W)"
        raise ShapeError(
            f"{name} must be {want_lab} matching {scores_name} {shape_str(scores.shape)}; "
            f"got {shape_str(lab.shape)} (mismatch in the {axis})"
        )
    n = check_labels(lab, name)
    lab, n = compact_labels(lab, n)
    return (lab, n) if return_n else lab
