"""posthoc.kernels: every backend against an obviously correct float64 reference.

The reference is the per-region boolean-mask loop (CSL Eq. 2/3 written literally). Every
backend that can run here is compared with it on random labels with -1 regions, spatially
coherent labels, N=0, B=0, 1x1 images, int32/int64 labels and non-contiguous input; the
Triton kernels run in Triton's interpreter (a subprocess with TRITON_INTERPRET=1) and, where
a GPU exists, on CUDA.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from posthoc import kernels as K
from posthoc.errors import DTypeError, MissingExtraError, NonFiniteError, ShapeError, ValueRangeError

CPU_BACKENDS = [b for b in K.available_backends("cpu") if b != "triton"]
HAS_TRITON = __import__("importlib.util").util.find_spec("triton") is not None


# --------------------------------------------------------------------------- references
def ref_sums(values: np.ndarray, labels: np.ndarray, n: int):
    values = np.asarray(values, np.float64)
    B, C = values.shape[:2]
    sums = np.zeros((B, n, C))
    counts = np.zeros((B, n), np.int64)
    for b in range(B):
        for r in range(n):
            m = labels[b] == r
            counts[b, r] = m.sum()
            sums[b, r] = values[b][:, m].sum(1)
    return sums, counts


def ref_fuse(probs: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    p = np.asarray(probs, np.float64)
    out = p.copy()
    for b in range(p.shape[0]):
        for r in range(n):
            m = labels[b] == r
            if m.any():
                mean = p[b][:, m].mean(1)
                out[b][:, m] = mean[:, None] * p[b][:, m]
    return out


def ref_wargmax(r: np.ndarray, v: np.ndarray) -> np.ndarray:
    if r.shape[1] == 0:
        return np.full((r.shape[0], *r.shape[2:]), -1, np.int64)
    w = r.astype(np.float32) * v.astype(np.float32)[:, :, None, None]
    return w.argmax(1).astype(np.int64)  # np.argmax: first maximum = lowest n


def blobs(rng, B, H, W, n, unassigned=0.1):
    """Spatially coherent labels: nearest of n random seeds, plus a -1 stripe and a few -1 pixels."""
    lab = np.empty((B, H, W), np.int64)
    yy, xx = np.mgrid[0:H, 0:W]
    for b in range(B):
        pts = rng.uniform([0, 0], [H, W], size=(max(n, 1), 2))
        d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
        lab[b] = d.argmin(-1)
    if n == 0:
        lab[:] = -1
    lab[:, : max(1, H // 8)] = -1
    lab[rng.random(lab.shape) < unassigned] = -1
    return lab


def rand_labels(rng, B, H, W, n):
    return rng.integers(-1, n, size=(B, H, W)) if n else np.full((B, H, W), -1, np.int64)


CASES = [
    # (B, C, H, W, N, kind)
    (2, 3, 17, 45, 7, "random"),
    (2, 19, 40, 64, 12, "blobs"),
    (1, 1, 1, 1, 1, "random"),
    (3, 2, 1, 1, 4, "random"),
    (2, 3, 9, 11, 0, "random"),
    (0, 3, 9, 11, 5, "random"),
    (1, 4, 70, 130, 30, "blobs"),
    (2, 1, 0, 5, 3, "random"),
]


def make_case(rng, B, C, H, W, N, kind, dtype):
    probs = rng.random((B, C, H, W), dtype=np.float32)
    lab = (blobs if kind == "blobs" else rand_labels)(rng, B, H, W, N) if B * H * W else np.zeros((B, H, W))
    return probs, lab.astype(dtype)


# --------------------------------------------------------------------------- region_sums / region_fuse
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_sums_and_fuse_match_reference(backend, dtype, case, rng):
    probs, lab = make_case(rng, *case, dtype)
    N = case[4]
    p0, l0 = probs.copy(), lab.copy()
    sums, counts = K.region_sums(torch.from_numpy(probs), torch.from_numpy(lab), N, backend=backend)
    rs, rc = ref_sums(probs, lab, N)
    assert sums.dtype == torch.float32 and counts.dtype == torch.int64
    assert sums.shape == (case[0], N, case[1]) and counts.shape == (case[0], N)
    np.testing.assert_array_equal(counts.numpy(), rc)
    np.testing.assert_allclose(sums.numpy(), rs, rtol=1e-5, atol=1e-4)
    out = K.region_fuse(torch.from_numpy(probs), torch.from_numpy(lab), N, backend=backend)
    assert out.dtype == torch.float32 and out.shape == probs.shape
    np.testing.assert_allclose(out.numpy(), ref_fuse(probs, lab, N), rtol=1e-5, atol=1e-6)
    # unassigned pixels keep their score bit for bit
    un = np.broadcast_to((lab == -1)[:, None], probs.shape)
    np.testing.assert_array_equal(out.numpy()[un], probs[un])
    # input untouched
    np.testing.assert_array_equal(probs, p0)
    np.testing.assert_array_equal(lab, l0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fuse_numpy_in_numpy_out_and_out_param(backend, rng):
    probs, lab = make_case(rng, 2, 5, 33, 70, 9, "blobs", np.int32)
    want = ref_fuse(probs, lab, 9)
    res = K.region_fuse(probs, lab, 9, backend=backend)
    assert isinstance(res, np.ndarray) and res.dtype == np.float32
    np.testing.assert_allclose(res, want, rtol=1e-5, atol=1e-6)
    out = np.full_like(probs, np.nan)
    got = K.region_fuse(probs, lab, 9, backend=backend, out=out)
    assert got is out
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    # in place: out is probs
    pt = torch.from_numpy(probs.copy())
    got = K.region_fuse(pt, torch.from_numpy(lab), 9, backend=backend, out=pt)
    assert got is pt
    np.testing.assert_allclose(pt.numpy(), want, rtol=1e-5, atol=1e-6)
    # non-contiguous out
    big = torch.full((2, 5, 33, 140), float("nan"))
    view = big[..., ::2]
    got = K.region_fuse(torch.from_numpy(probs), torch.from_numpy(lab), 9, backend=backend, out=view)
    assert got is view
    np.testing.assert_allclose(view.numpy(), want, rtol=1e-5, atol=1e-6)
    assert torch.isnan(big[..., 1::2]).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_and_other_dtypes(backend, rng):
    probs, lab = make_case(rng, 2, 3, 24, 40, 6, "blobs", np.int64)
    want = ref_fuse(probs, lab, 6)
    # channels-last memory, transposed labels
    pt = torch.from_numpy(probs).to(memory_format=torch.channels_last)
    lt = torch.from_numpy(np.ascontiguousarray(lab.transpose(0, 2, 1))).transpose(1, 2)
    assert not pt.is_contiguous() and not lt.is_contiguous()
    np.testing.assert_allclose(K.region_fuse(pt, lt, 6, backend=backend).numpy(), want, rtol=1e-5, atol=1e-6)
    # float64 / float16 scores are computed in float32
    got = K.region_fuse(torch.from_numpy(probs.astype(np.float64)), lt, 6, backend=backend)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    p16 = probs.astype(np.float16)
    got = K.region_fuse(torch.from_numpy(p16), lt, 6, backend=backend)
    np.testing.assert_allclose(got.numpy(), ref_fuse(p16.astype(np.float32), lab, 6), rtol=1e-5, atol=1e-6)
    # other integer label dtypes are refused (one rule for every label map)
    lab8 = np.where(lab < 0, 0, lab).astype(np.uint8)
    with pytest.raises(DTypeError, match=r"labels must be an int32 or int64 label map .*uint8"):
        K.region_fuse(probs, lab8, 6, backend=backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_batched_equals_per_image(backend, rng):
    probs, lab = make_case(rng, 4, 3, 30, 50, 10, "blobs", np.int32)
    full = K.region_fuse(probs, lab, 10, backend=backend)
    s_full, c_full = K.region_sums(probs, lab, 10, backend=backend)
    for b in range(4):
        one = K.region_fuse(probs[b : b + 1], lab[b : b + 1], 10, backend=backend)
        np.testing.assert_array_equal(one, full[b : b + 1])
        s, c = K.region_sums(probs[b : b + 1], lab[b : b + 1], 10, backend=backend)
        np.testing.assert_allclose(s, s_full[b : b + 1], rtol=1e-6)
        np.testing.assert_array_equal(c, c_full[b : b + 1])


def test_numba_independent_of_thread_count(rng):
    if "numba" not in CPU_BACKENDS:
        pytest.skip("numba not installed")
    probs, lab = make_case(rng, 1, 3, 200, 300, 20, "blobs", np.int32)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = K.region_fuse(probs, lab, 20, backend="numba")
        s1, c1 = K.region_sums(probs, lab, 20, backend="numba")
    finally:
        torch.set_num_threads(old)
    many = K.region_fuse(probs, lab, 20, backend="numba")
    s2, c2 = K.region_sums(probs, lab, 20, backend="numba")
    np.testing.assert_allclose(one, many, rtol=1e-6)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)
    np.testing.assert_array_equal(c1, c2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_label_out_of_range_raises_without_writing(backend, rng):
    probs, lab = make_case(rng, 2, 3, 20, 30, 5, "random", np.int32)
    for bad, msg in ((5, r"\[-1,4\].*got values in \[-1,5\]"), (-2, r"got values in \[-2,4\]")):
        lab2 = lab.copy()
        lab2[1, 7, 9] = bad
        out = np.full_like(probs, 7.0)
        with pytest.raises(ValueRangeError, match=msg):
            K.region_fuse(probs, lab2, 5, backend=backend, out=out)
        assert (out == 7.0).all()
        with pytest.raises(ValueRangeError, match=msg):
            K.region_sums(probs, lab2, 5, backend=backend)
    with pytest.raises(ValueRangeError, match=r"num_regions=0"):
        K.region_fuse(probs, lab, 0, backend=backend)


def test_input_errors():
    p = torch.rand(2, 3, 4, 5)
    lab = torch.zeros(2, 4, 5, dtype=torch.int64)
    with pytest.raises(ShapeError, match=r"labels must be \(B,H,W\) matching probs \(2,3,4,5\); got \(2,5,4\)"):
        K.region_fuse(p, lab.transpose(1, 2), 1)
    with pytest.raises(ShapeError, match=r"probs must be \(B,C,H,W\); got 3 axes"):
        K.region_fuse(p[0], lab, 1)
    with pytest.raises(DTypeError, match="labels must be an int32 or int64 label map"):
        K.region_fuse(p, lab.float(), 1)
    with pytest.raises(DTypeError, match="probs must be a floating-point tensor"):
        K.region_fuse(p.long(), lab, 1)
    with pytest.raises(DTypeError, match="num_regions must be an int"):
        K.region_fuse(p, lab, 1.0)
    with pytest.raises(ValueRangeError, match="num_regions must be >= 0; got -1"):
        K.region_sums(p, lab, -1)
    with pytest.raises(DTypeError, match="values must be a numpy array or a torch tensor; got list"):
        K.region_sums([1, 2], lab, 1)
    with pytest.raises(ValueRangeError,
                       match=r"backend must be one of \['auto', 'numba', 'triton', 'torch'\]; got 'cuda'"):
        K.region_fuse(p, lab, 1, backend="cuda")
    with pytest.raises(ShapeError, match=r"out must be \(B,C,H,W\) = \(2,3,4,5\) like probs; got \(2,3,4\)"):
        K.region_fuse(p, lab, 1, out=torch.empty(2, 3, 4))
    with pytest.raises(DTypeError, match="out must be float32; got torch.float64"):
        K.region_fuse(p, lab, 1, out=torch.empty(2, 3, 4, 5, dtype=torch.float64))
    with pytest.raises(DTypeError, match="out must be a torch tensor like probs; got ndarray"):
        K.region_fuse(p, lab, 1, out=np.empty((2, 3, 4, 5), np.float32))
    r = torch.rand(2, 3, 4, 5)
    with pytest.raises(ShapeError, match=r"validity must be \(B,N\) = \(2,3\) matching region_scores"):
        K.weighted_argmax(r, torch.rand(2, 4))
    with pytest.raises(ShapeError, match=r"region_scores must be \(B,N,h,w\); got 3 axes"):
        K.weighted_argmax(r[0], torch.rand(2, 3))
    with pytest.raises(DTypeError, match="region_scores must be a floating-point tensor"):
        K.weighted_argmax(r.long(), torch.rand(2, 3))
    with pytest.raises(DTypeError, match="validity must be a floating-point tensor"):
        K.weighted_argmax(r, torch.ones(2, 3, dtype=torch.int64))


def test_backend_resolution():
    cpu = torch.device("cpu")
    assert K.resolve_backend("auto", cpu, 10) == "torch"
    big = K.resolve_backend("auto", cpu, K.SMALL)
    assert big == ("numba" if "numba" in CPU_BACKENDS else "torch")
    assert K.resolve_backend("torch", cpu, 10) == "torch"
    assert K.available_backends("cpu")[-1] == "torch"
    if HAS_TRITON and not os.environ.get("TRITON_INTERPRET"):
        with pytest.raises(ValueRangeError, match="backend='triton' runs on CUDA tensors"):
            K.resolve_backend("triton", cpu, 10)
    if "numba" in CPU_BACKENDS:
        with pytest.raises(ValueRangeError, match="backend='numba' runs on CPU tensors; got a tensor on cuda"):
            K.resolve_backend("numba", torch.device("cuda"), 10)


def test_missing_backend_names_the_install(monkeypatch):
    monkeypatch.setattr(K, "_has", lambda m: False)
    with pytest.raises(MissingExtraError, match="pip install numba"):
        K.resolve_backend("numba", torch.device("cpu"), 10)
    with pytest.raises(MissingExtraError, match="pip install triton"):
        K.resolve_backend("triton", torch.device("cpu"), 10)
    assert K.resolve_backend("auto", torch.device("cpu"), 10**8) == "torch"
    assert K.resolve_backend("auto", torch.device("cuda"), 10**8) == "torch"


def test_auto_matches_torch_on_large_input(rng):
    probs, lab = make_case(rng, 1, 2, 160, 256, 25, "blobs", np.int32)  # >= SMALL elements
    a = K.region_fuse(probs, lab, 25)
    t = K.region_fuse(probs, lab, 25, backend="torch")
    np.testing.assert_allclose(a, t, rtol=1e-5, atol=1e-6)


def test_torch_chunking_matches_unchunked(rng):
    from posthoc.kernels._torch import region_fuse_torch, region_sums_torch, weighted_argmax_torch

    probs, lab = make_case(rng, 3, 4, 20, 30, 8, "blobs", np.int64)
    p, lt = torch.from_numpy(probs), torch.from_numpy(lab)
    a = region_fuse_torch(p, lt, 8, chunk_elems=7)  # one channel of one image per step
    b = region_fuse_torch(p, lt, 8, chunk_elems=1 << 30)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    (sa, ca), (sb, cb) = region_sums_torch(p, lt, 8, chunk_elems=7), region_sums_torch(p, lt, 8)
    np.testing.assert_allclose(sa.numpy(), sb.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(ca.numpy(), cb.numpy())
    r, v = torch.rand(3, 8, 20, 30), torch.rand(3, 8)
    assert torch.equal(weighted_argmax_torch(r, v, chunk_elems=5), weighted_argmax_torch(r, v))


# --------------------------------------------------------------------------- fused value checks
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fused_value_range_check(backend, rng):
    probs, lab = make_case(rng, 2, 3, 40, 70, 6, "blobs", np.int32)
    want = ref_fuse(probs, lab, 6)
    got = K.region_fuse(probs, lab, 6, backend=backend, value_range=(0, 1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    s, _ = K.region_sums(probs, lab, 6, backend=backend, value_range=(0, 1))
    np.testing.assert_allclose(s, ref_sums(probs, lab, 6)[0], rtol=1e-5, atol=1e-4)
    for val, exc, msg in (
        (1.5, ValueRangeError, r"probs must lie in \[0,1\]; got values in \[.*,1\.5\]"),
        (-0.25, ValueRangeError, r"probs must lie in \[0,1\]; got values in \[-0\.25,"),
        (np.nan, NonFiniteError, r"probs must be finite; got 1 NaN and 0 Inf"),
        (np.inf, NonFiniteError, r"probs must be finite; got 0 NaN and 1 Inf"),
    ):
        bad = probs.copy()
        bad[1, 2, 30, 60] = val  # also inside an unassigned (-1) area or not: either way it is seen
        bad[0, 0, 0, 0] = 0.5  # row 0 is unassigned in blobs()
        out = np.full_like(probs, 3.0)
        with pytest.raises(exc, match=msg):
            K.region_fuse(bad, lab, 6, backend=backend, out=out, value_range=(0, 1))
        assert (out == 3.0).all()
        with pytest.raises(exc, match=msg.replace("probs", "values")):
            K.region_sums(bad, lab, 6, backend=backend, value_range=(0, 1))
        with pytest.raises(exc, match=msg.replace("probs", "x")):
            K.check_values(bad, 0, 1, backend="numba" if backend == "numba" else "torch")
    # a value in an unassigned pixel is checked too
    bad = probs.copy()
    bad[:, :, 0, 0] = 2.0
    with pytest.raises(ValueRangeError, match="model_logits must lie"):
        K.region_fuse(bad, lab, 6, backend=backend, value_range=(0, 1), name="model_logits")
    # only finiteness with infinite bounds
    big = probs * 1e6
    K.region_fuse(big, lab, 6, backend=backend, value_range=(-np.inf, np.inf))
    huge = np.full_like(probs, 3e38)  # finite, but any sum of two overflows: no false alarm
    K.check_values(huge, backend="numba" if backend == "numba" else "torch")
    K.region_sums(huge, lab, 6, backend=backend, value_range=(-np.inf, np.inf))
    # N == 0 and empty inputs go through the same check
    with pytest.raises(ValueRangeError):
        K.region_fuse(probs + 2, np.full_like(lab, -1), 0, backend=backend, value_range=(0, 1))
    K.region_fuse(probs[:0], lab[:0], 6, backend=backend, value_range=(0, 1))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_weighted_argmax_fused_value_check(backend, rng):
    r = rng.random((2, 7, 60, 90), dtype=np.float32)
    v = rng.random((2, 7), dtype=np.float32)
    np.testing.assert_array_equal(K.weighted_argmax(r, v, backend=backend, value_range=(0, 1)), ref_wargmax(r, v))
    for n in (0, 4):  # first row and a later row are checked
        for val, exc in ((1.01, ValueRangeError), (np.nan, NonFiniteError), (-np.inf, NonFiniteError)):
            bad = r.copy()
            bad[1, n, 59, 89] = val
            with pytest.raises(exc, match="region_scores must"):
                K.weighted_argmax(bad, v, backend=backend, value_range=(0, 1))


def test_check_values_and_bad_ranges(rng):
    x = rng.random((3, 200, 300), dtype=np.float32)
    for be in CPU_BACKENDS:
        K.check_values(x, 0, 1, backend=be)
        K.check_values(torch.from_numpy(x), backend=be)
        x2 = x.copy()
        x2[2, 199, 299] = np.nan
        x2[0, 0, 0] = np.inf
        with pytest.raises(NonFiniteError, match="scores must be finite; got 1 NaN and 1 Inf"):
            K.check_values(x2, name="scores", backend=be)
    K.check_values(np.arange(5), 0, 4)
    with pytest.raises(ValueRangeError, match=r"labels must lie in \[0,3\]; got values in \[0,4\]"):
        K.check_values(np.arange(5), 0, 3, name="labels")
    K.check_values(np.zeros((0, 3), np.float32), 0, 1)
    with pytest.raises(ValueRangeError, match=r"value_range must have lo <= hi; got \(1, 0\)"):
        K.region_fuse(x[None, :1], np.zeros((1, 200, 300), np.int32), 1, value_range=(1, 0))
    with pytest.raises(DTypeError, match="value_range must be None or a pair"):
        K.weighted_argmax(x[None], rng.random((1, 3), dtype=np.float32), value_range=0.5)


# --------------------------------------------------------------------------- weighted_argmax
WA_CASES = [(2, 7, 13, 29), (1, 1, 1, 1), (3, 4, 1, 1), (2, 0, 5, 6), (0, 3, 4, 4), (1, 100, 40, 130), (2, 5, 64, 70)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", WA_CASES, ids=lambda c: "x".join(map(str, c)))
def test_weighted_argmax_matches_reference(backend, case, rng):
    B, N, h, w = case
    r = rng.random((B, N, h, w), dtype=np.float32)
    v = rng.random((B, N), dtype=np.float32)
    r0 = r.copy()
    got = K.weighted_argmax(torch.from_numpy(r), torch.from_numpy(v), backend=backend)
    assert got.dtype == torch.int64 and got.shape == (B, h, w)
    np.testing.assert_array_equal(got.numpy(), ref_wargmax(r, v))
    np.testing.assert_array_equal(r, r0)
    # numpy in -> numpy out
    got_np = K.weighted_argmax(r, v, backend=backend)
    assert isinstance(got_np, np.ndarray)
    np.testing.assert_array_equal(got_np, ref_wargmax(r, v))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_weighted_argmax_ties_go_to_lowest_region(backend, rng):
    B, N, h, w = 2, 6, 50, 90
    r = rng.random((B, N, h, w), dtype=np.float32)
    r[:, 2] = r[:, 4]  # exact ties between 2 and 4 (same validity)
    r[:, 0] = 0.0
    v = np.ones((B, N), np.float32)
    v[:, 0] = 0.0  # region 0 contributes 0 everywhere: ties at 0 where everything is 0
    r[:, :, :5, :5] = 0.0
    got = K.weighted_argmax(r, v, backend=backend)
    np.testing.assert_array_equal(got, ref_wargmax(r, v))
    assert not (got == 4).any() and (got == 2).any()
    assert (got[:, :5, :5] == 0).all()
    # ties inside a group of four rows and across groups, N not a multiple of 4
    r = rng.random((1, 11, 40, 50), dtype=np.float32)
    r[:, 1] = r[:, 2] = r[:, 3] = r.max(1) + 0.1  # three-way tie for the maximum -> 1
    r[:, 6, :20] = r[:, 9, :20] = r[:, 10, :20] = 2.0  # tie across groups and the tail -> 6
    v = np.ones((1, 11), np.float32)
    got = K.weighted_argmax(r, v, backend=backend)
    np.testing.assert_array_equal(got, ref_wargmax(r, v))
    assert (got[:, :20] == 6).all() and (got[:, 20:] == 1).all()
    # huge finite values with only a finiteness check: no false alarm
    big = np.full((1, 5, 8, 9), 3e38, np.float32)
    K.weighted_argmax(big, np.ones((1, 5), np.float32), backend=backend, value_range=(-np.inf, np.inf))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_weighted_argmax_non_contiguous_and_float64(backend, rng):
    r = rng.random((2, 9, 30, 41)).astype(np.float64)
    v = rng.random((2, 9))
    rt = torch.from_numpy(r).permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    assert not rt.is_contiguous()
    want = ref_wargmax(r.astype(np.float32), v.astype(np.float32))
    np.testing.assert_array_equal(K.weighted_argmax(rt, torch.from_numpy(v), backend=backend).numpy(), want)


# --------------------------------------------------------------------------- Triton in the interpreter
_TRITON_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import numpy as np, torch
    sys.path.insert(0, os.environ["KTEST_DIR"])
    from test_kernels import ref_fuse, ref_sums, ref_wargmax, blobs, rand_labels
    from posthoc import kernels as K
    from posthoc.errors import ValueRangeError
    rng = np.random.default_rng(0)
    res = {"backends": K.available_backends("cpu")}
    for i, (B, C, H, W, N, kind, dt) in enumerate([
        (2, 3, 17, 45, 7, "random", np.int32), (1, 2, 40, 60, 9, "blobs", np.int64),
        (1, 1, 1, 1, 1, "random", np.int64), (2, 2, 5, 6, 0, "random", np.int32),
        (0, 2, 5, 6, 3, "random", np.int32),
    ]):
        p = rng.random((B, C, H, W), dtype=np.float32)
        lab = ((blobs if kind == "blobs" else rand_labels)(rng, B, H, W, N)).astype(dt)
        s, c = K.region_sums(torch.from_numpy(p), torch.from_numpy(lab), N, backend="triton")
        rs, rc = ref_sums(p, lab, N)
        o = K.region_fuse(torch.from_numpy(p), torch.from_numpy(lab), N, backend="triton")
        res[f"case{i}"] = {
            "sums": float(np.abs(s.numpy() - rs).max()) if rs.size else 0.0,
            "counts": bool((c.numpy() == rc).all()),
            "fuse": float(np.abs(o.numpy() - ref_fuse(p, lab, N)).max()) if p.size else 0.0,
        }
        r = rng.random((B, max(N, 1), H, W), dtype=np.float32)
        v = rng.random((B, max(N, 1)), dtype=np.float32)
        r[:, -1] = r[:, 0]
        res[f"case{i}"]["argmax"] = bool((K.weighted_argmax(r, v, backend="triton") == ref_wargmax(r, v)).all())
    lab = rand_labels(rng, 1, 8, 8, 4).astype(np.int32)
    lab[0, 3, 3] = 4
    try:
        K.region_fuse(rng.random((1, 2, 8, 8), dtype=np.float32), lab, 4, backend="triton")
        res["range_error"] = None
    except ValueRangeError as e:
        res["range_error"] = str(e)
    print("RESULT" + json.dumps(res))
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_triton_kernels_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", KTEST_DIR=os.path.dirname(__file__))
    proc = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], check=False, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1]
    res = json.loads(line[len("RESULT"):])
    assert "triton" in res["backends"]
    for key, val in res.items():
        if key.startswith("case"):
            assert val["counts"] and val["argmax"], (key, val)
            assert val["sums"] < 1e-4 and val["fuse"] < 1e-5, (key, val)
    assert res["range_error"] is not None and "got values in [-1,4]" in res["range_error"]


_TRITON_COMPILE_SCRIPT = textwrap.dedent(
    """
    import json
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from posthoc.kernels import _triton as T
    res = {}
    for name, fn, sig in [
        ("sums_i32", T._sums_kernel, {"d_ptr": "*fp32", "lab_ptr": "*i32", "acc_ptr": "*fp32", "cnt_ptr": "*i32",
                                      "mm_ptr": "*i32", "P": "i32", "C": "i32", "N": "i32", "BLOCK": "constexpr"}),
        ("sums_i64", T._sums_kernel, {"d_ptr": "*fp32", "lab_ptr": "*i64", "acc_ptr": "*fp32", "cnt_ptr": "*i32",
                                      "mm_ptr": "*i32", "P": "i32", "C": "i32", "N": "i32", "BLOCK": "constexpr"}),
        ("gather", T._gather_kernel, {"d_ptr": "*fp32", "lab_ptr": "*i64", "tab_ptr": "*fp32", "out_ptr": "*fp32",
                                      "P": "i32", "C": "i32", "N": "i32", "BLOCK": "constexpr"}),
        ("wargmax", T._wargmax_kernel, {"r_ptr": "*fp32", "v_ptr": "*fp32", "out_ptr": "*i64", "P": "i32", "N": "i32",
                                        "BLOCK": "constexpr"}),
    ]:
        src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index("BLOCK"),): T.BLOCK})
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32))
        res[name] = len(k.asm["ptx"])
    print("RESULT" + json.dumps(res))
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_triton_kernels_compile_for_a_gpu(tmp_path):
    """The real (not interpreted) Triton compiler accepts the kernels: PTX/cubin for sm_90, no GPU needed."""
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", _TRITON_COMPILE_SCRIPT], check=False, env=env, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("no ptxas available to finish the compile")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1][len("RESULT"):])
    assert set(res) == {"sums_i32", "sums_i64", "gather", "wargmax"} and min(res.values()) > 1000


# --------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_cuda_matches_reference(backend, dtype, rng):
    if backend not in K.available_backends("cuda"):
        pytest.skip(f"{backend} unavailable on cuda")
    for case in CASES + [(2, 19, 256, 512, 100, "blobs")]:
        probs, lab = make_case(rng, *case, dtype)
        N = case[4]
        pc, lc = torch.from_numpy(probs).cuda(), torch.from_numpy(lab).cuda()
        s, c = K.region_sums(pc, lc, N, backend=backend)
        rs, rc = ref_sums(probs, lab, N)
        np.testing.assert_array_equal(c.cpu().numpy(), rc)
        np.testing.assert_allclose(s.cpu().numpy(), rs, rtol=1e-5, atol=1e-3)
        o = K.region_fuse(pc, lc, N, backend=backend)
        assert o.device == pc.device
        np.testing.assert_allclose(o.cpu().numpy(), ref_fuse(probs, lab, N), rtol=1e-5, atol=1e-6)
    for B, N, h, w in WA_CASES:
        r = rng.random((B, N, h, w), dtype=np.float32)
        v = rng.random((B, N), dtype=np.float32)
        got = K.weighted_argmax(torch.from_numpy(r).cuda(), torch.from_numpy(v).cuda(), backend=backend)
        np.testing.assert_array_equal(got.cpu().numpy(), ref_wargmax(r, v))


@pytest.mark.gpu
def test_cuda_auto_uses_device_and_out(rng):
    probs, lab = make_case(rng, 2, 3, 64, 80, 10, "blobs", np.int32)
    pc, lc = torch.from_numpy(probs).cuda(), torch.from_numpy(lab).cuda()
    out = torch.empty_like(pc)
    got = K.region_fuse(pc, lc, 10, out=out)
    assert got is out
    np.testing.assert_allclose(out.cpu().numpy(), ref_fuse(probs, lab, 10), rtol=1e-5, atol=1e-6)
    bad = lc.clone()
    bad[0, 0, 0] = 10
    with pytest.raises(ValueRangeError, match=r"got values in \[-1,10\]"):
        K.region_fuse(pc, bad, 10)


@pytest.mark.gpu
def test_cuda_extra_memory_at_most_twice_the_input():
    from posthoc.bench.speed import measure_fuse_memory_cuda

    for shape in [(1, 19, 2160, 3840), (16, 19, 1024, 2048)]:
        rep = measure_fuse_memory_cuda(shape, num_regions=100, backend="auto")
        assert rep["extra_over_input"] <= 2.0, rep


# --------------------------------------------------------------------------- memory (slow)
@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 19, 2160, 3840), (16, 19, 1024, 2048)], ids=["4k", "batch16"])
def test_extra_memory_at_most_twice_the_input(shape):
    from posthoc.bench.speed import measure_fuse_memory

    rep = measure_fuse_memory(shape, num_regions=100, backend="auto")
    assert rep["extra_over_input"] <= 2.0, rep


def test_concurrent_calls_from_threads(rng):
    """Several Python threads may call the kernels at once (launches are serialized, results exact)."""
    from concurrent.futures import ThreadPoolExecutor

    probs, lab = make_case(rng, 1, 3, 200, 256, 15, "blobs", np.int32)
    r = rng.random((1, 6, 200, 256), dtype=np.float32)
    v = rng.random((1, 6), dtype=np.float32)
    want_f, want_a = ref_fuse(probs, lab, 15), ref_wargmax(r, v)

    def work(i):
        be = CPU_BACKENDS[i % len(CPU_BACKENDS)]
        return K.region_fuse(probs, lab, 15, backend=be, value_range=(0, 1)), K.weighted_argmax(r, v, backend=be)

    with ThreadPoolExecutor(4) as ex:
        for f, a in ex.map(work, range(8)):
            np.testing.assert_allclose(f, want_f, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(a, want_a)


# --------------------------------------------------------------------------- the speed benchmark
def test_speed_benchmark_small(tmp_path, capsys):
    from posthoc.bench import speed

    lab = speed.voronoi_labels(2, 96, 160, 30, seed=1)
    assert lab.dtype == np.int32 and lab.shape == (2, 96, 160)
    assert 20 <= len(np.unique(lab[0])) <= 30 and lab.min() == 0
    # spatial coherence: far fewer label changes along rows than pixels
    assert (np.diff(lab, axis=2) != 0).mean() < 0.1
    dev = torch.device("cpu")
    row = speed.bench_fuse((1, 2, 64, 128, 12), dev, repeats=2)
    assert row["max_abs_err_vs_torch"] < 1e-6
    for key in ("kernel", "checked", "e2e", "torch", "loop"):
        assert row["timings"][key]["median_ms"] > 0
    assert row["floor_ms"] > 0 and row["loop_over_ours"] > 0
    row = speed.bench_assign((1, 5, 32, 48), dev, repeats=2, loop_repeats=1)
    assert row["identical_to_torch"] and row["kernel_over_floor"] > 0
    out = tmp_path / "speed.json"
    monkey_cases = (speed.QUICK_FUSE_CASES, speed.QUICK_ASSIGN_CASE)
    try:
        speed.QUICK_FUSE_CASES, speed.QUICK_ASSIGN_CASE = [(1, 3, 32, 64, 8)], (1, 4, 32, 64)
        assert speed.main(["--quick", "--repeats", "1", "--out", str(out)]) == 0
    finally:
        speed.QUICK_FUSE_CASES, speed.QUICK_ASSIGN_CASE = monkey_cases
    text = capsys.readouterr().out
    assert "kern/fl" in text and "soft_assign" in text
    payload = json.loads(out.read_text())
    assert payload["device"] == "cpu" and payload["threads"] >= 1 and payload["versions"]["torch"]
    assert [r["op"] for r in payload["rows"]] == ["fuse", "soft_assign"]
    assert speed.main(["--repeats", "0"]) == 2
    if not torch.cuda.is_available():
        assert speed.main(["--device", "cuda"]) == 2


def test_large_fresh_outputs(rng):
    """Fresh outputs >= HUGE_MIN_BYTES live in a huge-page mapping: same values, usable like any tensor."""
    import gc

    from posthoc.bench.speed import voronoi_labels

    probs = torch.from_numpy(rng.random((1, 4, 1024, 2048), dtype=np.float32))
    assert probs.numel() * 4 >= K.HUGE_MIN_BYTES
    lab = torch.from_numpy(voronoi_labels(1, 1024, 2048, 40, seed=3))
    got = K.region_fuse(probs, lab, 40)
    want = K.region_fuse(probs, lab, 40, backend="torch", out=torch.empty_like(probs))
    gc.collect()
    assert got.shape == probs.shape and got.dtype == torch.float32 and got.is_contiguous()
    # regions of ~50k pixels: torch's float32 scatter_add drifts by ~1e-5 relative (numba sums in float64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    got_np = K.region_fuse(probs.numpy(), lab.numpy(), 40)
    gc.collect()
    np.testing.assert_array_equal(got_np, got.numpy())
    got += 1.0  # writable, and owns its memory
    assert float(got[0, 0, 0, 0]) == pytest.approx(float(want[0, 0, 0, 0]) + 1.0)
    r = torch.from_numpy(rng.random((1, 3, 1500, 1500), dtype=np.float32))
    v = torch.rand(1, 3)
    lab2 = K.weighted_argmax(r, v)  # (1,1500,1500) int64 = 18 MB: below the threshold, plain torch.empty
    assert torch.equal(lab2, K.weighted_argmax(r, v, backend="torch"))
    big = K._empty_cpu((3, 1 << 22), torch.int64)  # 96 MB
    big.fill_(7)
    assert big.sum().item() == 7 * 3 * (1 << 22)


# --------------------------------------------------------------------------- properties
try:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    HAS_HYPOTHESIS = True
except ImportError:  # pragma: no cover
    HAS_HYPOTHESIS = False


if HAS_HYPOTHESIS:

    @settings(max_examples=30, deadline=None)
    @given(
        b=st.integers(0, 3), c=st.integers(1, 4), h=st.integers(1, 40), w=st.integers(1, 90),
        n=st.integers(0, 12), coherent=st.booleans(), seed=st.integers(0, 2**16), i32=st.booleans(),
    )
    def test_property_every_backend_matches_reference(b, c, h, w, n, coherent, seed, i32):
        rng = np.random.default_rng(seed)
        probs = rng.random((b, c, h, w), dtype=np.float32)
        if n == 0:
            lab = np.full((b, h, w), -1, np.int64)
        elif coherent:
            lab = blobs(rng, b, h, w, n, unassigned=0.05)
        else:
            lab = rand_labels(rng, b, h, w, n)
        lab = lab.astype(np.int32 if i32 else np.int64)
        want = ref_fuse(probs, lab, n)
        rs, rc = ref_sums(probs, lab, n)
        r = rng.random((b, max(n, 1), h, w), dtype=np.float32)
        v = rng.random((b, max(n, 1)), dtype=np.float32)
        for be in CPU_BACKENDS:
            np.testing.assert_allclose(K.region_fuse(probs, lab, n, backend=be), want, rtol=1e-5, atol=1e-6)
            s, cnt = K.region_sums(probs, lab, n, backend=be)
            np.testing.assert_array_equal(cnt, rc)
            np.testing.assert_allclose(s, rs, rtol=1e-5, atol=1e-4)
            np.testing.assert_array_equal(K.weighted_argmax(r, v, backend=be), ref_wargmax(r, v))
