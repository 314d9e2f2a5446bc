"""The compiled chain kernels (issue 10) against the code they replaced, which stays as the
``backend="torch"`` / ``method=...`` path: results must be identical (1e-6 at most)."""
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import posthoc
from posthoc import NonFiniteError, ValueRangeError
from posthoc.assign import _Grid, _soft_assign_dense
from posthoc.bench.speed import voronoi_labels
from posthoc.bench.speed_chain import blob_masks
from posthoc.components import connected_components
from posthoc.kernels import _numba_offsets as nbo
from posthoc.offsets import _boundary_map

HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- offset_resample
@st.composite
def resample_inputs(draw):
    B, C = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    H, W = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    s = (rng.normal(size=(B, C, H, W)) * 5).astype(np.float32)
    o = (rng.normal(size=(B, 2, H, W)) * draw(st.sampled_from([0.5, 3.0, 30.0]))).astype(np.float32)
    o[rng.random(o.shape) < 0.3] = 0.0  # identity pixels
    m = rng.random(o.shape) < 0.2
    o[m] = np.round(o[m])  # integral targets
    f = rng.random((B, 1, H, W)).astype(np.float32)
    f[rng.random(f.shape) < 0.2] = 1.0
    return s, o, f


@HYP
@given(resample_inputs(), st.sampled_from(["pixels", "normalized"]))
def test_offset_resample_numba_equals_torch(p, units):
    s, o, f = p
    a = posthoc.offset_resample(s, o, f, units, backend="numba")
    b = posthoc.offset_resample(s, o, f, units, backend="torch")
    np.testing.assert_array_equal(a, b)


def test_offset_resample_numba_identity_and_kinds():
    rng = np.random.default_rng(0)
    s = torch.from_numpy(rng.normal(size=(2, 3, 40, 50)).astype(np.float32))
    out = posthoc.offset_resample(s, torch.zeros(2, 2, 40, 50), torch.rand(2, 1, 40, 50), backend="numba")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and torch.equal(out, s)
    s2 = s[0].double().numpy()  # unbatched float64 numpy
    out2 = posthoc.offset_resample(s2, np.ones((2, 40, 50)), np.full((40, 50), 0.5), backend="numba")
    ref = posthoc.offset_resample(s2, np.ones((2, 40, 50)), np.full((40, 50), 0.5), backend="torch")
    assert isinstance(out2, np.ndarray) and out2.shape == (3, 40, 50)
    np.testing.assert_array_equal(out2, ref)


def test_offset_resample_numba_dense_and_sparse_rows():
    """Rows where most pixels move take the dense loop, the others copy + fix the movers: both equal
    torch, and a pixel that does not move keeps its score bit for bit (-0.0 included) in either."""
    rng = np.random.default_rng(3)
    B, C, H, W = 2, 3, 24, 40
    s = rng.normal(size=(B, C, H, W)).astype(np.float32)
    s[rng.random(s.shape) < 0.1] = -0.0
    o = (rng.normal(size=(B, 2, H, W)) * 2).astype(np.float32)
    o[:, :, 8:16] *= rng.random((B, 1, 8, W)) < 0.1  # sparse rows: ~10% of the pixels move
    o[:, :, 16:, ::7] = 0.0  # dense rows with a few fixed pixels
    o[:, 0, 20, :] = -1e3  # a row clamped to the left border
    f = rng.random((B, 1, H, W)).astype(np.float32)
    a = posthoc.offset_resample(s, o, f, backend="numba")
    b = posthoc.offset_resample(s, o, f, backend="torch")
    np.testing.assert_array_equal(a, b)
    still = np.broadcast_to(((o[:, 0] == 0) & (o[:, 1] == 0))[:, None], s.shape)
    assert np.array_equal(np.signbit(a[still]), np.signbit(s[still])) and np.array_equal(a[still], s[still])


@pytest.mark.parametrize("what", ["scores_nan", "offsets_inf", "conf_high", "conf_nan"])
def test_offset_resample_numba_value_errors_match_torch(what):
    s = np.zeros((1, 2, 8, 9), np.float32)
    o = np.zeros((1, 2, 8, 9), np.float32)
    f = np.full((1, 1, 8, 9), 0.5, np.float32)
    {"scores_nan": lambda: s.__setitem__((0, 1, 3, 3), np.nan),
     "offsets_inf": lambda: o.__setitem__((0, 0, 2, 2), np.inf),
     "conf_high": lambda: f.__setitem__((0, 0, 1, 1), 1.5),
     "conf_nan": lambda: f.__setitem__((0, 0, 1, 1), np.nan)}[what]()
    errs = []
    for backend in ("numba", "torch"):
        with pytest.raises(ValueRangeError) as e:
            posthoc.offset_resample(s, o, f, backend=backend)
        errs.append((type(e.value), str(e.value)))
    assert errs[0] == errs[1]
    if what != "conf_high":
        assert issubclass(errs[0][0], NonFiniteError)


def test_offset_resample_auto_uses_numba_for_large_inputs():
    rng = np.random.default_rng(1)
    s = rng.random((1, 1, 256, 512)).astype(np.float32)
    o = (rng.normal(size=(1, 2, 256, 512)) * 2).astype(np.float32)
    f = rng.random((1, 1, 256, 512)).astype(np.float32)
    np.testing.assert_array_equal(posthoc.offset_resample(s, o, f), posthoc.offset_resample(s, o, f, backend="torch"))


def test_offset_resample_bad_backend():
    with pytest.raises(ValueRangeError, match="backend must be one of"):
        posthoc.offset_resample(np.zeros((2, 2), np.float32), np.zeros((2, 2, 2), np.float32),
                                np.zeros((2, 2), np.float32), backend="nope")


# ----------------------------------------------------------------------------- offsets_from_proposals
@st.composite
def label_maps(draw):
    B, H, W = draw(st.integers(1, 2)), draw(st.integers(1, 24)), draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        lab = voronoi_labels(B, H, W, max(1, min(8, H * W)), seed=seed % 1000).astype(np.int64)
    else:
        lab = rng.integers(0, draw(st.integers(1, 4)), (B, H, W))
    lab[rng.random(lab.shape) < draw(st.sampled_from([0.0, 0.1]))] = -1
    return lab.astype(draw(st.sampled_from([np.int32, np.int64])))


@HYP
@given(label_maps(), st.sampled_from([(4.0, 3.0, 1.0), (2.0, 1.5, 0.0), (6.0, 0.7, 2.0), (0.0, 3.0, 1.0)]),
       st.booleans())
def test_offsets_from_proposals_numba_equals_numpy(lab, params, with_teacher):
    mo, bw, sm = params
    kw = dict(max_offset=mo, boundary_width=bw, smooth=sm)
    if with_teacher:
        rng = np.random.default_rng(lab.size)
        kw["teacher"] = rng.random((lab.shape[0], 2) + lab.shape[1:]).astype(np.float32)
    a_off, a_conf = posthoc.offsets_from_proposals(lab, backend="numba", **kw)
    b_off, b_conf = posthoc.offsets_from_proposals(lab, backend="torch", **kw)
    np.testing.assert_array_equal(a_off, b_off)  # -0.0 == 0.0: only the sign of a zero may differ
    np.testing.assert_allclose(a_conf, b_conf, rtol=0, atol=1e-6)
    assert a_off.dtype == np.float32 and a_conf.dtype == np.float32


def test_offsets_from_proposals_numba_on_large_voronoi():
    lab = voronoi_labels(1, 192, 256, 30, seed=3)
    a = posthoc.offsets_from_proposals(torch.from_numpy(lab))
    b = posthoc.offsets_from_proposals(torch.from_numpy(lab), backend="torch")
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-6)


def test_edt_equals_scipy():
    rng = np.random.default_rng(5)
    for shape, p in (((1, 1), 1.0), ((7, 1), 0.3), ((1, 9), 0.2), ((37, 53), 0.01), ((64, 64), 0.2), ((50, 3), 0.05)):
        lab = (rng.random(shape) < p).astype(np.int64).cumsum(axis=1)  # boundaries where the count steps
        n2 = nbo.boundary_edt_np(lab)
        bd = _boundary_map(lab)
        if not bd.any():
            assert n2 is None
            continue
        np.testing.assert_array_equal(nbo.distances_np(n2), ndi.distance_transform_edt(~bd).astype(np.float32))



def test_edt_row_pass_equals_brute_force():
    """The division-free lower envelope gives min_i (x-i)^2 + g(i)^2 exactly (brute force over i)."""
    rng = np.random.default_rng(11)
    maps = [voronoi_labels(1, 96, 160, 12, seed=2)[0], rng.integers(0, 2, (41, 67)).astype(np.int32),
            (rng.random((53, 97)) < 0.002).astype(np.int64).cumsum(axis=1), np.zeros((9, 13), np.int64)]
    maps[-1][:, -1] = 1  # one boundary column at the right edge: long envelopes
    for lab in maps:
        H, W = lab.shape
        g = np.empty((H, W), np.int32)
        nb = nbo._edt_columns(lab, g, np.int32(H + W + 1), 1)
        for blocks in (2, 3, 7):  # column blocks (one per thread): the same map and count
            g2 = np.empty((H, W), np.int32)
            assert nbo._edt_columns(lab, g2, np.int32(H + W + 1), blocks) == nb
            np.testing.assert_array_equal(g2, g)
        a = g.copy()
        nbo._edt_rows(g, a)
        i = np.arange(W)
        brute = ((i[None, :, None] - i[None, None, :]) ** 2 + g.astype(np.int64)[:, None, :] ** 2).min(-1)
        np.testing.assert_array_equal(a, brute)
        bd = _boundary_map(lab)
        np.testing.assert_array_equal(nbo.distances_np(a), ndi.distance_transform_edt(~bd).astype(np.float32))
    g = rng.integers(0, 40, (30, 50)).astype(np.int32)  # any column distances, ties included
    a = g.copy()
    nbo._edt_rows(a, a)  # in place is allowed: a row is read before it is written
    i = np.arange(50)
    brute = ((i[None, :, None] - i[None, None, :]) ** 2 + g.astype(np.int64)[:, None, :] ** 2).min(-1)
    np.testing.assert_array_equal(a, brute)


# ----------------------------------------------------------------------------- split_components
@HYP
@given(label_maps(), st.sampled_from([4, 8]), st.sampled_from([0, 1, 3, 10]))
def test_run_labelling_equals_pixel_union_find(lab, conn, min_size):
    a, na = connected_components(lab, conn, min_size, method="runs")
    b, nb = connected_components(lab, conn, min_size, method="pixels")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(na, nb)


def test_run_labelling_diagonal_and_empty():
    lab = np.array([[[0, 0, 0, 1, 1], [1, 1, 1, 0, 0]]])  # runs ending in the same column
    a, _ = connected_components(lab, 8, 0, method="runs")
    b, _ = connected_components(lab, 8, 0, method="pixels")
    np.testing.assert_array_equal(a, b)
    assert a.max() == 1  # both labels are one 8-connected component each
    out, counts = connected_components(np.zeros((2, 0, 5), np.int64))
    assert out.shape == (2, 0, 5) and counts.tolist() == [0, 0]
    out, counts = connected_components(np.full((1, 3, 3), -1))
    assert (out == -1).all() and counts.tolist() == [0]


# ----------------------------------------------------------------------------- soft_assign(size=)
@pytest.mark.parametrize("case", [(1, 3, 5, 7, 13, 17), (2, 8, 16, 20, 64, 80), (1, 5, 9, 9, 4, 5),
                                  (1, 4, 8, 8, 8, 30), (1, 1, 3, 3, 9, 9), (1, 6, 1, 1, 5, 4)])
def test_soft_assign_numba_equals_dense(case):
    B, N, h, w, H, W = case
    R, V = blob_masks(B, N, h, w, seed=h * w)
    R[:, :, : max(1, h // 3), : max(1, w // 3)] = 0.0  # cells where all regions are 0 (ties -> n=0)
    if N > 1:
        V[:, -1] = V[:, 0]  # equal validities: ties between regions
        R[:, -1] = R[:, 0]
    a = posthoc.soft_assign(R, V, size=(H, W), backend="numba")
    b = _soft_assign_dense(R, V, _Grid(h, w, H, W, R.device), 4, "torch")
    assert torch.equal(a, b.long())
    assert torch.equal(posthoc.soft_assign(R, V, size=(H, W), backend="torch"), a)


def test_soft_assign_numba_unbatched_numpy():
    R, V = blob_masks(1, 5, 16, 24, seed=2)
    a = posthoc.soft_assign(R[0].numpy(), V[0].numpy(), size=(50, 70), backend="numba")
    b = posthoc.soft_assign(R[0].numpy(), V[0].numpy(), size=(50, 70), method="dense")
    assert isinstance(a, np.ndarray) and a.shape == (50, 70)
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- CUDA (not run without a GPU)
@pytest.mark.gpu
def test_chain_ops_on_cuda_match_cpu():
    dev = torch.device("cuda")
    lab = torch.from_numpy(voronoi_labels(1, 128, 256, 20, seed=1))
    off, conf = posthoc.offsets_from_proposals(lab)
    off_g, conf_g = posthoc.offsets_from_proposals(lab.to(dev))
    assert off_g.device.type == "cuda" and conf_g.device.type == "cuda"
    torch.testing.assert_close(off_g.cpu(), off, rtol=0, atol=0)
    s = torch.rand(1, 3, 128, 256)
    out = posthoc.offset_resample(s, off, conf)
    out_g = posthoc.offset_resample(s.to(dev), off_g, conf_g)
    assert out_g.device.type == "cuda"
    torch.testing.assert_close(out_g.cpu(), out, rtol=1e-6, atol=1e-6)
    R, V = blob_masks(1, 8, 32, 64, seed=0)
    a = posthoc.soft_assign(R, V, size=(128, 256))
    a_g = posthoc.soft_assign(R.to(dev), V.to(dev), size=(128, 256))
    assert a_g.device.type == "cuda" and torch.equal(a_g.cpu(), a)
    comp_g = posthoc.split_components(lab.to(dev))
    assert comp_g.device.type == "cuda" and torch.equal(comp_g.cpu(), posthoc.split_components(lab))


@pytest.mark.parametrize("bad", [np.nan, 1.5, -0.1, np.inf])
def test_soft_assign_numba_range_error_matches_torch(bad):
    R, V = blob_masks(1, 4, 8, 8, seed=0)
    R[0, 2, 3, 5] = bad
    errs = []
    for backend in ("numba", "torch"):
        with pytest.raises(ValueRangeError) as e:
            posthoc.soft_assign(R, V, size=(20, 20), backend=backend)
        errs.append((type(e.value), str(e.value)))
    assert errs[0] == errs[1]
