"""A hypothesis fuzz of the public ops' argument checks.

Random shapes, dtypes, devices (cpu and meta) and value ranges (including NaN, Inf and huge
values) go into every public op. Each call must either return a finite result of the
expected shape or raise a :mod:`posthoc.errors` error; a raw ``RuntimeError``,
``IndexError``, allocator error or a NaN in the output fails the test.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import posthoc  # noqa: E402
from posthoc.errors import PosthocError  # noqa: E402

DTYPES = (torch.float16, torch.float32, torch.float64, torch.int32, torch.int64, torch.uint8, torch.bool)
VALUES = ("unit", "normal", "labels", "nan", "inf", "huge", "negative")


@st.composite
def tensors(draw, ndim=None):
    nd = draw(st.integers(0, 5)) if ndim is None else ndim
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=nd, max_size=nd)))
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(VALUES))
    as_numpy = draw(st.booleans())
    meta = draw(st.integers(0, 9)) == 0
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    base = {
        "unit": lambda: torch.rand(shape, generator=g, dtype=torch.float64),
        "normal": lambda: torch.randn(shape, generator=g, dtype=torch.float64) * 3,
        "labels": lambda: torch.randint(-1, 4, shape, generator=g).double(),
        "nan": lambda: torch.full(shape, float("nan"), dtype=torch.float64),
        "inf": lambda: torch.full(shape, float("inf"), dtype=torch.float64),
        "huge": lambda: torch.full(shape, 2.0**40, dtype=torch.float64),
        "negative": lambda: -torch.rand(shape, generator=g, dtype=torch.float64) - 2,
    }[kind]()
    if dtype == torch.bool:
        t = base > 0.5
    elif dtype.is_floating_point:
        t = base.to(dtype)
    else:
        if kind in ("nan", "inf"):
            base = torch.zeros(shape, dtype=torch.float64)
        t = base.clamp(-2**62, 2**62).to(torch.int64).to(dtype)
    if meta:
        return t.to("meta")
    return t.numpy() if as_numpy else t


def _arrays(out):
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in _arrays(o)]
    if isinstance(out, (np.ndarray, torch.Tensor)):
        return [out]
    return []


def _check_result(out, shape=None):
    for a in _arrays(out):
        t = torch.as_tensor(a) if isinstance(a, np.ndarray) else a
        if t.is_floating_point():
            assert torch.isfinite(t).all(), "a result holds NaN or Inf"
    if shape is not None:
        first = _arrays(out)[0]
        assert tuple(first.shape) == tuple(shape), f"result shape {tuple(first.shape)}, expected {tuple(shape)}"


def _call(fn, *args, shape=None, **kw):
    try:
        out = fn(*args, **kw)
    except PosthocError:
        return
    _check_result(out, shape)


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@FUZZ
@given(tensors(), tensors())
def test_fuse(x, lab):
    _call(posthoc.fuse, x, lab, shape=getattr(x, "shape", None))


@FUZZ
@given(tensors(), tensors(), st.sampled_from([None, (3, 5), (0, 2), (1, 1)]))
def test_soft_and_hard_assign(r, v, size):
    _call(posthoc.soft_assign, r, v, size=size)
    _call(posthoc.hard_assign, r, v)
    _call(posthoc.assign_labels, r, v, size=size)


@FUZZ
@given(tensors(), st.sampled_from([4, 8, 6]), st.sampled_from([0, 3, -1]))
def test_split_components(lab, connectivity, min_size):
    _call(posthoc.split_components, lab, connectivity=connectivity, min_size=min_size,
          shape=getattr(lab, "shape", None))


@FUZZ
@given(tensors(), tensors(), tensors(), st.sampled_from(["pixels", "normalized", "furlongs"]))
def test_offset_resample(s, o, c, units):
    _call(posthoc.offset_resample, s, o, c, units=units, shape=getattr(s, "shape", None))


@FUZZ
@given(tensors(), st.sampled_from([0.0, 4.0, -1.0, float("nan")]))
def test_offsets_from_proposals(lab, max_offset):
    _call(posthoc.offsets_from_proposals, lab, max_offset=max_offset)


@FUZZ
@given(tensors(), tensors())
def test_region_means(x, lab):
    _call(posthoc.region_means, x, lab)


@FUZZ
@given(tensors(), tensors(), tensors())
def test_refine(anomaly, class_logits, mask_logits):
    _call(posthoc.refine, anomaly, class_logits, mask_logits)


# ------------------------------------------------------------------ shapes that fit, contents that may not


@st.composite
def fitting(draw):
    """(B,C,H,W) scores, (B,H,W) labels, (B,N,h,w) region scores, (B,N) validity, (B,2,H,W)
    offsets with consistent sizes, each with a random dtype and random contents."""
    b, c, h, w, n = (draw(st.integers(0 if i == 0 else 1, 4)) for i in range(5))

    def t(shape, kinds=VALUES):
        return draw(tensors_of(shape, kinds))
    return {
        "x": t((b, c, h, w)), "lab": t((b, h, w), ("labels", "huge", "negative")), "r": t((b, n, h, w)),
        "v": t((b, n)), "off": t((b, 2, h, w)), "conf": t((b, 1, h, w)), "b": b, "c": c, "h": h, "w": w,
    }


@st.composite
def tensors_of(draw, shape, kinds):
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(kinds))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    base = {"unit": torch.rand(shape, generator=g, dtype=torch.float64),
            "normal": torch.randn(shape, generator=g, dtype=torch.float64) * 3,
            "labels": torch.randint(-1, 6, shape, generator=g).double(),
            "nan": torch.full(shape, float("nan"), dtype=torch.float64),
            "inf": torch.full(shape, float("inf"), dtype=torch.float64),
            "huge": torch.randint(0, 3, shape, generator=g).double() * 2.0**40,
            "negative": torch.randint(-3, 2, shape, generator=g).double()}[kind]
    if dtype == torch.bool:
        return base > 0.5
    if dtype.is_floating_point:
        return base.to(dtype)
    return torch.nan_to_num(base, nan=0.0, posinf=0.0).to(torch.int64).to(dtype)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(fitting())
def test_chain_ops_with_fitting_shapes(d):
    _call(posthoc.fuse, d["x"], d["lab"], shape=d["x"].shape)
    _call(posthoc.split_components, d["lab"], shape=d["lab"].shape)
    _call(posthoc.offsets_from_proposals, d["lab"], shape=(d["b"], 2, d["h"], d["w"]))
    _call(posthoc.soft_assign, d["r"], d["v"], shape=(d["b"], d["h"], d["w"]))
    _call(posthoc.soft_assign, d["r"], d["v"], size=(2 * d["h"], d["w"] + 1), shape=(d["b"], 2 * d["h"], d["w"] + 1))
    _call(posthoc.offset_resample, d["x"], d["off"], d["conf"], shape=d["x"].shape)
    _call(posthoc.region_means, d["x"], d["lab"])
