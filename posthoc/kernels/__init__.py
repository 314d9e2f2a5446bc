"""Kernels behind ``posthoc.fuse`` and ``posthoc.soft_assign``, at the memory-bandwidth floor.

Three entry points, each with a ``backend=`` keyword:

* ``region_sums(values, labels, num_regions)`` -> (sums (B,N,C) float32, counts (B,N) int64)
* ``region_fuse(probs, labels, num_regions, out=None)`` -> CSL Eq. 3 on normalized scores
* ``weighted_argmax(region_scores, validity)`` -> CSL Eq. 2 labels

Backends:

* ``"numba"`` -- CPU: parallel fused two-pass run-length kernels (:mod:`._numba`).
* ``"triton"`` -- CUDA: Triton kernels with a segmented scan per block, so only one atomic
  per run of equal labels reaches global memory (:mod:`._triton`).
* ``"torch"`` -- any device: ``scatter_add_`` + ``gather``, chunked (:mod:`._torch`); the
  semantics reference.
* ``"auto"`` (default) -- CUDA tensors use triton if it imports, else torch; CPU tensors use
  numba if it imports, else torch. Inputs smaller than ``SMALL`` elements go to torch on
  the CPU (no thread start-up, no numba import for tiny test inputs).

Inputs may be numpy arrays or torch tensors; the result is of the same kind (on the input's
device). The public ops (``posthoc.fuse`` ...) validate their input with
:mod:`posthoc.validation`; the kernels only check shapes, dtypes, devices and the label
range, so that a bad label never writes out of bounds. The numba and triton backends check
the labels for free while scanning them; the torch backend needs one extra read, which a
caller that has already checked the labels (``posthoc.fuse`` with
:func:`posthoc.validation.as_label_map`) skips with ``labels_checked=True``. Value checks
(``value_range=``) are fused into the kernels' pass; their errors are worded by
:func:`posthoc.validation.check_range`. Inputs are never modified, except ``out`` (which may be ``probs``
itself for an in-place fusion).

The other ops of the chain have their numba kernels in sibling modules, loaded lazily
(:func:`_numba_offsets_mod`, :func:`_numba_assign_mod`, :func:`_numba_peers_mod`;
``posthoc.components`` imports :mod:`._numba_cc`): ``_numba_offsets`` (offset_resample,
offsets_from_proposals), ``_numba_assign`` (soft_assign with resizing), ``_numba_peers``
(Objectomaly), ``_numba_cc`` (split_components). They use
:func:`resolve_backend` and :func:`_empty_cpu` from here.

Threads: the numba path uses ``min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)``
threads, so ``torch.set_num_threads`` is the single knob for both.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import mmap
import os
import sys
from typing import Any

import numpy as np
import torch

from ..errors import DTypeError, MissingExtraError, ShapeError, ValueRangeError
from ..validation import (
    as_float32,
    as_torch,
    check_device,
    check_float,
    check_label_dtype,
    check_label_range,
    check_ndim,
    check_range,
    check_tensor_type,
    range_error,
    restore,
    shape_str,
)
from ._torch import region_fuse_torch, region_sums_torch, weighted_argmax_torch

__all__ = [
    "SMALL",
    "available_backends",
    "check_values",
    "region_fuse",
    "region_sums",
    "resolve_backend",
    "weighted_argmax",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "numba", "triton", "torch")

#: CPU inputs with fewer elements than this go to torch under backend="auto"
SMALL = 1 << 16


@functools.cache
def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@functools.cache
def _numba_mod():
    try:
        return importlib.import_module("posthoc.kernels._numba")
    except ImportError as e:  # numba missing or broken
        log.debug("numba backend unavailable: %s", e)
        return None


@functools.cache
def _numba_offsets_mod():
    """The numba kernels of the offset ops (:mod:`._numba_offsets`); None without numba."""
    try:
        return importlib.import_module("posthoc.kernels._numba_offsets")
    except ImportError as e:
        log.debug("numba offset kernels unavailable: %s", e)
        return None


@functools.cache
def _numba_assign_mod():
    """The numba kernel of the resizing soft assignment (:mod:`._numba_assign`); None without numba."""
    try:
        return importlib.import_module("posthoc.kernels._numba_assign")
    except ImportError as e:
        log.debug("numba assign kernel unavailable: %s", e)
        return None


@functools.cache
def _numba_peers_mod():
    """The numba kernels of the peers (:mod:`._numba_peers`, Objectomaly); None without numba."""
    try:
        return importlib.import_module("posthoc.kernels._numba_peers")
    except ImportError as e:
        log.debug("numba peer kernels unavailable: %s", e)
        return None


@functools.cache
def _triton_mod():
    try:
        return importlib.import_module("posthoc.kernels._triton")
    except ImportError as e:
        log.debug("triton backend unavailable: %s", e)
        return None


def _interpret() -> bool:
    """True when Triton runs in interpreter mode (TRITON_INTERPRET=1): kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available_backends(device: Any = "cpu") -> list[str]:
    """Backends that can run on ``device`` here, fastest first (``"torch"`` always last).

    Args:
        device: a torch device or its name ("cpu", "cuda", "cuda:1").
    """
    dev = torch.device(device)
    found = []
    if dev.type == "cpu" and _has("numba") and _numba_mod() is not None:
        found.append("numba")
    if (dev.type == "cuda" or _interpret()) and _has("triton") and _triton_mod() is not None:
        found.append("triton")
    found.append("torch")
    return found


def resolve_backend(backend: str, device: torch.device, numel: int) -> str:
    """The backend that ``backend`` means for a tensor of ``numel`` elements on ``device``.

    Raises:
        ValueRangeError: an unknown backend name.
        MissingExtraError: a named backend whose package is not installed.
        ValueRangeError: a named backend that cannot run on ``device``.
    """
    if backend not in BACKENDS:
        raise ValueRangeError(f"backend must be one of {list(BACKENDS)}; got {backend!r}")
    dev = torch.device(device)
    if backend == "auto":
        if dev.type == "cuda":
            return "triton" if _has("triton") and _triton_mod() is not None else "torch"
        if dev.type == "cpu" and numel >= SMALL and _has("numba") and _numba_mod() is not None:
            return "numba"
        return "torch"
    if backend == "numba":
        if not _has("numba") or _numba_mod() is None:
            raise MissingExtraError("backend='numba' needs numba; install it with `pip install numba`")
        if dev.type != "cpu":
            raise ValueRangeError(f"backend='numba' runs on CPU tensors; got a tensor on {dev}")
    elif backend == "triton":
        if not _has("triton") or _triton_mod() is None:
            raise MissingExtraError(
                "backend='triton' needs triton (shipped with the CUDA builds of torch); "
                "install it with `pip install triton`"
            )
        if dev.type != "cuda" and not (_interpret() and dev.type == "cpu"):
            raise ValueRangeError(
                f"backend='triton' runs on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1); "
                f"got a tensor on {dev}"
            )
    return backend


def _labels_tensor(labels: Any, name: str) -> tuple[torch.Tensor, bool]:
    lab, was_np = as_torch(labels, name)
    check_label_dtype(lab, name)  # int32/int64 only: one rule for every label map
    return lab, was_np


def _num_regions(num_regions: Any) -> int:
    if isinstance(num_regions, bool) or not isinstance(num_regions, (int, np.integer)):
        raise DTypeError(f"num_regions must be an int >= 0; got {type(num_regions).__name__}")
    if num_regions < 0:
        raise ValueRangeError(f"num_regions must be >= 0; got {int(num_regions)}")
    return int(num_regions)


def _check_scores_labels(x: torch.Tensor, xname: str, lab: torch.Tensor) -> None:
    check_ndim(x, xname, (4,), "(B,C,H,W)")
    check_float(x, xname)
    want = (x.shape[0], x.shape[2], x.shape[3])
    if tuple(lab.shape) != want:
        raise ShapeError(f"labels must be (B,H,W) matching {xname} {shape_str(x.shape)}; got {shape_str(lab.shape)}")
    check_device(lab, "labels", x, xname)


def _range_error(labels: torch.Tensor, n: int) -> ValueRangeError:
    check_label_range(labels, n)  # raises with the observed range
    return ValueRangeError(f"labels must lie in [-1,{n - 1}]")  # pragma: no cover - defensive


def _value_range(value_range: Any) -> tuple[float, float] | None:
    if value_range is None:
        return None
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise DTypeError(f"value_range must be None or a pair (lo, hi) of floats; got {value_range!r}") from None
    if not lo <= hi:
        raise ValueRangeError(f"value_range must have lo <= hi; got ({lo:g}, {hi:g})")
    return lo, hi


def _raise_values(x: torch.Tensor, name: str, vr: tuple[float, float] | None) -> None:
    """Slow path after a failed fused check: raise with the exact counts / range (posthoc.validation).

    A kernel reports bad values only when it was given a range, so ``vr`` is set here.
    """
    if vr is None:  # pragma: no cover - defensive
        raise TypeError("_raise_values needs the value range the kernel checked")
    lo, hi = vr
    check_range(x, name, lo, hi)
    raise range_error(name, lo, hi)  # pragma: no cover - defensive


def _torch_values(x: torch.Tensor, name: str, vr: tuple[float, float] | None) -> None:
    """The value check on the torch/triton paths: :func:`posthoc.validation.check_range` (one pass)."""
    if vr is not None:
        check_range(x, name, *vr)


def check_values(x: Any, lo: float = float("-inf"), hi: float = float("inf"), name: str = "x", *,
                 backend: str = "auto") -> None:
    """Raise unless every value of ``x`` is finite and lies in [lo, hi]; one pass, no temporaries.

    The same test as ``posthoc.validation.check_range`` (and ``check_finite`` with the default
    bounds) and the same messages; on a CPU tensor the numba backend reads ``x`` once with a
    parallel compiled loop, and only a failure runs the (counting) check that words the error.

    Args:
        x: float (or integer) array/tensor of any shape.
        lo, hi: inclusive bounds (default: only finiteness is checked).
        name: the name used in the error message.
        backend: "auto", "numba" or "torch".

    Raises:
        NonFiniteError: NaN or Inf values (with their counts).
        ValueRangeError: values outside [lo, hi] (with the observed range).
    """
    t, _ = as_torch(x, name)
    vr = _value_range((lo, hi))
    assert vr is not None  # a pair always gives a range
    if not t.is_floating_point() or t.numel() == 0:
        check_range(t, name, *vr)
        return
    be = resolve_backend(backend if backend != "triton" else "torch", t.device, t.numel())
    if be == "numba":
        _numba_threads()
        xf = as_float32(t.detach()).contiguous()
        if _numba_mod().value_violations(xf.numpy(), *vr) != 0.0:
            _raise_values(t, name, vr)
        return
    _torch_values(t, name, vr)


#: fresh CPU outputs at least this large are backed by transparent huge pages (see _empty_cpu);
#: smaller ones come from malloc, whose heap reuses freed blocks below glibc's 32 MiB mmap ceiling
HUGE_MIN_BYTES = 32 << 20


def _empty_cpu(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized CPU tensor; large ones in an anonymous mapping advised MADV_HUGEPAGE.

    Writing a freshly allocated large output costs a page fault per 4 KiB page: on the 2-core
    development machine filling a new 159 MB tensor took ~80 ms against 12 ms for a reused
    one, and ~25 ms when the memory is advised for 2 MiB transparent huge pages (Linux
    ``madvise`` mode). The tensor owns the mapping (``torch.frombuffer`` keeps it alive).
    Below ``HUGE_MIN_BYTES`` (32 MiB) plain ``torch.empty`` is faster in a loop: glibc raises its
    mmap threshold to the size of a freed block (up to 32 MiB), so a same-size output is served
    from already-mapped heap memory (filling 8 MB: ~0.3 ms, against ~1-4 ms for a fresh
    huge-page mapping). Falls back to ``torch.empty`` where huge pages cannot be requested.
    """
    numel = 1
    for s in shape:
        numel *= int(s)
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if nbytes < HUGE_MIN_BYTES or not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=dtype)
    try:
        m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        m.madvise(mmap.MADV_HUGEPAGE)
        return torch.frombuffer(m, dtype=dtype, count=numel).view(shape)
    except (OSError, ValueError, AttributeError):  # pragma: no cover - platform without THP
        return torch.empty(shape, dtype=dtype)


def _numba_threads():
    nb = importlib.import_module("numba")
    want = max(1, min(torch.get_num_threads(), nb.config.NUMBA_NUM_THREADS))
    if nb.get_num_threads() != want:
        nb.set_num_threads(want)


def region_sums(values: Any, labels: Any, num_regions: int, *, backend: str = "auto",
                value_range: Any = None, name: str = "values", labels_checked: bool = False):
    """Per-region sums and pixel counts (the segment reduction shared by fusion and region means).

    Args:
        values: (B,C,H,W) float (any float dtype; computed in float32), any finite range.
        labels: (B,H,W) integer region index in [-1, num_regions), -1 = skipped. int32 and int64
            are read as they are; other integer dtypes are converted to int32.
        num_regions: N >= 0.
        backend: "auto", "numba", "triton" or "torch".
        value_range: optional (lo, hi): also check that every value is finite and in [lo, hi]
            (fused into the reduction pass on CPU, so it costs no extra read).
        name: how ``values`` is called in error messages.
        labels_checked: the caller has already checked that every label lies in
            [-1, num_regions) (e.g. with :func:`posthoc.validation.as_label_map`): the torch
            backend then skips its own pass over the labels (numba and triton check them
            for free while scanning and always do).

    Returns:
        sums (B,N,C) float32 and counts (B,N) int64, numpy if ``values`` was numpy.

    Raises:
        ShapeError, DTypeError: wrong layouts or dtypes.
        DeviceError: labels on another device than ``values``.
        ValueRangeError: a label outside [-1, num_regions), or an unknown/unusable backend.
        NonFiniteError, ValueRangeError: with ``value_range``, non-finite or out-of-range values.
    """
    x, was_np = as_torch(values, name)
    lab, _ = _labels_tensor(labels, "labels")
    n = _num_regions(num_regions)
    _check_scores_labels(x, name, lab)
    vr = _value_range(value_range)
    be = resolve_backend(backend, x.device, x.numel())
    x = as_float32(x.detach()).contiguous()
    lab = lab.contiguous()
    B, C, H, W = x.shape
    if be == "numba":
        _numba_threads()
        nbm = _numba_mod()
        s, c, status = nbm.region_sums_np(x.numpy().reshape(B, C, H * W), lab.numpy().reshape(B, H * W), n, vr)
        if status == nbm.BAD_LABELS:
            raise _range_error(lab, n)
        if status == nbm.BAD_VALUES:
            _raise_values(x, name, vr)
        sums, counts = torch.from_numpy(s), torch.from_numpy(c)
    else:
        _torch_values(x, name, vr)
        if be == "triton":
            sums, counts = _triton_mod().region_sums_triton(x, lab, n)
        else:
            sums, counts = region_sums_torch(x, lab, n, check=not labels_checked)
    return restore(sums, was_np), restore(counts, was_np)


def region_fuse(probs: Any, labels: Any, num_regions: int, *, backend: str = "auto", out: Any = None,
                value_range: Any = None, name: str = "probs", labels_checked: bool = False):
    """Structure-constrained fusion, CSL Eq. 3 (Zhang et al., AAAI 2024), on normalized scores.

    H[b,c,p] = (mean over q in region(p) of probs[b,c,q]) * probs[b,c,p]; pixels with label -1
    keep probs[b,c,p] exactly. Normalization (softmax over C for logits) is the caller's job
    (``posthoc.fuse`` does it).

    Args:
        probs: (B,C,H,W) float scores, probabilities in [0,1] (any finite values are accepted);
            float16/float64 are computed in float32.
        labels: (B,H,W) integer region index in [-1, num_regions), -1 = unassigned; int32 or
            int64 (int32 halves the label traffic).
        num_regions: N >= 0; with N == 0 every label must be -1 and the output equals probs.
        backend: "auto", "numba", "triton" or "torch".
        out: optional (B,C,H,W) float32 array/tensor of the same kind and device to write into
            (preallocate it: a fresh large output pays page faults on every call). It may be
            ``probs`` itself.
        value_range: optional (lo, hi), e.g. (0, 1): also check that every score is finite and
            in [lo, hi]. On CPU the test is fused into the first pass (no extra read); on
            failure nothing is written.
        name: how ``probs`` is called in error messages.
        labels_checked: as in :func:`region_sums`.

    Returns:
        (B,C,H,W) float32 fused scores (``out`` when given), numpy if ``probs`` was numpy.

    Raises:
        ShapeError, DTypeError: wrong layouts or dtypes, or an ``out`` that does not match.
        DeviceError: labels or ``out`` on another device than ``probs``.
        ValueRangeError: a label outside [-1, num_regions), or an unknown/unusable backend.
        NonFiniteError, ValueRangeError: with ``value_range``, non-finite or out-of-range scores.
    """
    x, was_np = as_torch(probs, name)
    lab, _ = _labels_tensor(labels, "labels")
    n = _num_regions(num_regions)
    _check_scores_labels(x, name, lab)
    vr = _value_range(value_range)
    be = resolve_backend(backend, x.device, x.numel())
    out_t = None
    if out is not None:
        check_tensor_type(out, "out")
        if isinstance(out, np.ndarray) != was_np:
            raise DTypeError(f"out must be a {'numpy array' if was_np else 'torch tensor'} like probs; "
                             f"got {type(out).__name__}")
        out_t = torch.from_numpy(out) if isinstance(out, np.ndarray) else out
        if tuple(out_t.shape) != tuple(x.shape):
            raise ShapeError(f"out must be (B,C,H,W) = {shape_str(x.shape)} like probs; got {shape_str(out_t.shape)}")
        if out_t.dtype != torch.float32:
            raise DTypeError(f"out must be float32; got {out_t.dtype}")
        check_device(out_t, "out", x, "probs")
    x = as_float32(x.detach()).contiguous()
    lab = lab.contiguous()
    if be != "numba":
        _torch_values(x, name, vr)
    if be == "torch":
        if out_t is None and x.device.type == "cpu":
            out_t = _empty_cpu(tuple(x.shape), torch.float32)
        res = region_fuse_torch(x, lab, n, out=out_t, check=not labels_checked)
    else:
        if out_t is not None and out_t.is_contiguous():
            dst = out_t
        elif x.device.type == "cpu":
            dst = _empty_cpu(tuple(x.shape), torch.float32)
        else:
            dst = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        if be == "numba":
            _numba_threads()
            B, C, H, W = x.shape
            nbm = _numba_mod()
            status = nbm.region_fuse_np(
                x.numpy().reshape(B, C, H * W), lab.numpy().reshape(B, H * W), n,
                dst.detach().numpy().reshape(B, C, H * W), vr,
            )
            if status == nbm.BAD_LABELS:
                raise _range_error(lab, n)
            if status == nbm.BAD_VALUES:
                _raise_values(x, name, vr)
        else:
            _triton_mod().region_fuse_triton(x, lab, n, dst)
        if out_t is not None and dst is not out_t:
            out_t.copy_(dst)
            dst = out_t
        res = dst
    if was_np:
        return out if out is not None else res.numpy()
    return res


def weighted_argmax(region_scores: Any, validity: Any, *, backend: str = "auto", value_range: Any = None,
                    name: str = "region_scores"):
    """Soft assignment, CSL Eq. 2: label[b,p] = argmax_n region_scores[b,n,p] * validity[b,n].

    Ties go to the lowest n; the product is formed in float32 as in the torch reference, so
    every backend returns the identical map. The region scores are read exactly once.

    Args:
        region_scores: (B,N,h,w) float soft region scores, probabilities in [0,1].
        validity: (B,N) float region validity, probabilities in [0,1].
        backend: "auto", "numba", "triton" or "torch".
        value_range: optional (lo, hi), e.g. (0, 1): also check that every region score is
            finite and in [lo, hi] -- on CPU inside the same single pass over R. (The small
            ``validity`` is not checked here.)
        name: how ``region_scores`` is called in error messages.

    Returns:
        (B,h,w) int64 region index in [0,N); all -1 when N == 0. numpy if region_scores was numpy.

    Raises:
        ShapeError, DTypeError: wrong layouts or dtypes.
        DeviceError: ``validity`` on another device than ``region_scores``.
        ValueRangeError: an unknown/unusable backend.
        NonFiniteError, ValueRangeError: with ``value_range``, non-finite or out-of-range scores.
    """
    r, was_np = as_torch(region_scores, name)
    v, _ = as_torch(validity, "validity")
    check_ndim(r, name, (4,), "(B,N,h,w)")
    check_float(r, name)
    check_float(v, "validity")
    if tuple(v.shape) != tuple(r.shape[:2]):
        raise ShapeError(f"validity must be (B,N) = {shape_str(r.shape[:2])} matching {name} "
                         f"{shape_str(r.shape)}; got {shape_str(v.shape)}")
    check_device(v, "validity", r, name)
    vr = _value_range(value_range)
    be = resolve_backend(backend, r.device, r.numel())
    B, N, h, w = r.shape
    if N == 0 or be != "numba":
        _torch_values(r, name, vr)
    if N == 0 or be == "torch":
        res = weighted_argmax_torch(r, v)
    else:
        r = as_float32(r.detach()).contiguous()
        v = as_float32(v.detach()).contiguous()
        if be == "numba":
            _numba_threads()
            res = _empty_cpu((B, h, w), torch.int64)
            nbm = _numba_mod()
            status = nbm.weighted_argmax_np(r.numpy().reshape(B, N, h * w), v.numpy(),
                                            res.numpy().reshape(B, h * w), vr)
            if status == nbm.BAD_VALUES:
                _raise_values(r, name, vr)
        else:
            res = _triton_mod().weighted_argmax_triton(r, v)
    return restore(res, was_np)
