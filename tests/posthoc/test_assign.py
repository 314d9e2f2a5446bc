import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import posthoc
from posthoc import DTypeError, NonFiniteError, ShapeError, ValueRangeError
from tests.reference import ops as ref

HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def soft(draw):
    B = draw(st.integers(1, 2))
    N = draw(st.integers(1, 5))
    h = draw(st.integers(1, 6))
    w = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    # quantized scores make ties frequent, which exercises the lowest-n rule
    r = (rng.integers(0, 4, size=(B, N, h, w)) / 4).astype(np.float32)
    v = (rng.integers(1, 5, size=(B, N)) / 4).astype(np.float32)
    return r, v


@HYP
@given(soft())
def test_soft_assign_reference_with_ties(p):
    r, v = p
    out = posthoc.soft_assign(r, v)
    assert out.dtype == np.int64 and out.shape == (r.shape[0],) + r.shape[2:]
    np.testing.assert_array_equal(out, ref.soft_assign(r, v))
    assert (out >= 0).all()  # every pixel gets a region


@HYP
@given(soft())
def test_soft_assign_batch_equals_per_image(p):
    r, v = p
    full = posthoc.soft_assign(r, v)
    for b in range(r.shape[0]):
        np.testing.assert_array_equal(full[b], posthoc.soft_assign(r[b], v[b]))


def _near_tie_ok(r, v, size, out):
    """Labels equal the float64 reference (bilinear resize, then argmax R*V) except at near-ties."""
    B, N = r.shape[:2]
    up = np.stack([[ref.bilinear_resize(r[b, n], *size) for n in range(N)] for b in range(B)])
    w = up * v[:, :, None, None].astype(np.float64)
    expect = w.argmax(axis=1)
    got_w = np.take_along_axis(w, out[:, None], axis=1)[:, 0]
    best = w.max(axis=1)
    assert np.all((out == expect) | (best - got_w <= 1e-6)), "labels differ from the reference beyond rounding"


@pytest.mark.parametrize("chunk", [1, 2, 16])
def test_soft_assign_size_matches_resize_then_argmax(rng, chunk):
    r = rng.random((2, 5, 4, 6)).astype(np.float32)
    v = rng.random((2, 5)).astype(np.float32)
    out = posthoc.soft_assign(r, v, size=(9, 13), chunk_regions=chunk)
    _near_tie_ok(r, v, (9, 13), out)
    np.testing.assert_array_equal(out, posthoc.soft_assign(r, v, size=(9, 13), chunk_regions=chunk, method="dense"))
    # the sampling positions are F.interpolate's (align_corners=False): same labels up to rounding ties
    up = F.interpolate(torch.from_numpy(r), size=(9, 13), mode="bilinear", align_corners=False).numpy()
    assert (out == ref.soft_assign(up, v)).mean() > 0.99


@HYP
@given(soft(), st.integers(1, 17), st.integers(1, 17), st.integers(1, 3))
def test_pruned_equals_dense(p, H, W, chunk):
    r, v = p
    dense = posthoc.soft_assign(r, v, size=(H, W), method="dense", chunk_regions=chunk)
    np.testing.assert_array_equal(posthoc.soft_assign(r, v, size=(H, W), method="pruned"), dense)
    _near_tie_ok(r, v, (H, W), dense)


def test_pruned_on_blobs_and_zeros(rng):
    """Smooth blobs (the realistic case: most cells have one candidate), exact zeros, and heavy overlap."""
    h, w, N = 12, 16, 6
    yy, xx = np.mgrid[0:h, 0:w]
    pts = rng.integers(0, [h, w], (N, 2))
    d = np.sqrt((yy[None] - pts[:, 0, None, None]) ** 2 + (xx[None] - pts[:, 1, None, None]) ** 2)
    r = (1 / (1 + np.exp((d - 3) / 0.7)))[None].astype(np.float32)
    r[r < 1e-3] = 0.0  # exact-zero background: ties everywhere -> region 0
    v = rng.random((1, N)).astype(np.float32)
    for size in ((48, 64), (40, 70), (7, 9)):
        out = posthoc.soft_assign(r, v, size=size)
        np.testing.assert_array_equal(out, posthoc.soft_assign(r, v, size=size, method="dense"))
        _near_tie_ok(r, v, size, out)
    noise = rng.random((1, 8, 5, 5)).astype(np.float32)  # everything overlaps: falls back to dense
    np.testing.assert_array_equal(posthoc.soft_assign(noise, v[:, :1].repeat(8, 1), size=(20, 20)),
                                  posthoc.soft_assign(noise, v[:, :1].repeat(8, 1), size=(20, 20), method="dense"))
    with pytest.raises(ValueRangeError, match="method must be 'auto', 'pruned' or 'dense'"):
        posthoc.soft_assign(r, v, size=(4, 4), method="sparse")


def test_soft_assign_torch_and_dtypes(rng):
    r = rng.random((1, 3, 5, 5)).astype(np.float32)
    v = rng.random((1, 3)).astype(np.float32)
    t = posthoc.soft_assign(torch.from_numpy(r), torch.from_numpy(v))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64
    np.testing.assert_array_equal(t.numpy(), posthoc.soft_assign(r, v))
    h = posthoc.soft_assign(torch.from_numpy(r).half(), torch.from_numpy(v).half())
    np.testing.assert_array_equal(h.numpy(), ref.soft_assign(r.astype(np.float16).astype(np.float32),
                                                             v.astype(np.float16).astype(np.float32)))


def test_soft_assign_edges(rng):
    assert posthoc.soft_assign(np.zeros((0, 3, 4, 4), np.float32), np.zeros((0, 3), np.float32)).shape == (0, 4, 4)
    out = posthoc.soft_assign(np.zeros((2, 0, 4, 4), np.float32), np.zeros((2, 0), np.float32))
    np.testing.assert_array_equal(out, -1)
    out = posthoc.soft_assign(np.zeros((1, 0, 2, 2), np.float32), np.zeros((1, 0), np.float32), size=(5, 5))
    assert out.shape == (1, 5, 5) and (out == -1).all()
    one = posthoc.soft_assign(np.array([[[[0.3]], [[0.9]]]], np.float32), np.array([[1.0, 0.5]], np.float32))
    np.testing.assert_array_equal(one, [[[1]]])
    r = np.full((1, 3, 2, 2), 0.5, np.float32)
    np.testing.assert_array_equal(posthoc.soft_assign(r, np.ones((1, 3), np.float32)), 0)  # all tie -> n=0


def test_soft_assign_input_unchanged(rng):
    r = rng.random((1, 3, 4, 4)).astype(np.float32)
    v = rng.random((1, 3)).astype(np.float32)
    r0, v0 = r.copy(), v.copy()
    posthoc.soft_assign(r, v, size=(8, 8))
    np.testing.assert_array_equal(r, r0)
    np.testing.assert_array_equal(v, v0)


def test_soft_assign_errors(rng):
    r = rng.random((2, 3, 4, 4)).astype(np.float32)
    v = rng.random((2, 3)).astype(np.float32)
    with pytest.raises(ValueRangeError, match=r"validity must lie in \[0,1\]; got values in \[.*,1.5\]"):
        posthoc.soft_assign(r, np.full((2, 3), 1.5, np.float32))
    with pytest.raises(ValueRangeError, match=r"region_scores must lie in \[0,1\]"):
        posthoc.soft_assign(r - 1, v)
    bad = r.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="region_scores must be finite; got 1 NaN"):
        posthoc.soft_assign(bad, v)
    with pytest.raises(ShapeError, match=r"mismatch in the region axis N"):
        posthoc.soft_assign(r, v[:, :2])
    with pytest.raises(ShapeError, match=r"mismatch in the batch axis \(0\)"):
        posthoc.soft_assign(r, v[:1])
    with pytest.raises(ShapeError, match=r"validity must be \(B,N\)"):
        posthoc.soft_assign(r, v[0])
    with pytest.raises(ShapeError, match=r"region_scores must be \(B,N,h,w\) or \(N,h,w\); got 2 axes"):
        posthoc.soft_assign(r[0, 0], v)
    with pytest.raises(DTypeError, match="region_scores must be a floating-point tensor"):
        posthoc.soft_assign((r > 0.5), v)
    with pytest.raises(ShapeError, match="size must be a pair"):
        posthoc.soft_assign(r, v, size=(0, 3))
    with pytest.raises(ValueRangeError, match="chunk_regions must be a positive int"):
        posthoc.soft_assign(r, v, size=(8, 8), chunk_regions=0)


# ----------------------------------------------------------------------------- hard assign


@HYP
@given(soft(), st.sampled_from([0.0, 0.25, 0.5]), st.sampled_from([0.0, 0.3, 0.8]))
def test_hard_assign_reference(p, mt, vt):
    r, v = p
    out = posthoc.hard_assign(r, v, mt, vt)
    np.testing.assert_array_equal(out, ref.hard_assign(r, v, mt, vt))


def test_hard_assign_paint_order_and_unpainted():
    r = np.zeros((1, 3, 1, 4), np.float32)
    r[0, 0, 0, :3] = 0.9
    r[0, 1, 0, 1:3] = 0.9
    r[0, 2, 0, 2] = 0.9
    v = np.array([[0.95, 0.99, 0.5]], np.float32)  # region 2 is dropped (validity <= 0.8)
    np.testing.assert_array_equal(posthoc.hard_assign(r, v), [[[0, 1, 1, -1]]])
    np.testing.assert_array_equal(posthoc.hard_assign(r, v, validity_threshold=0.1), [[[0, 1, 1, -1]]])
    v2 = np.array([[0.95, 0.95, 0.5]], np.float32)  # equal validity: the lowest n wins
    np.testing.assert_array_equal(posthoc.hard_assign(r, v2), [[[0, 0, 0, -1]]])


def test_hard_assign_size_and_errors(rng):
    r = rng.random((1, 4, 3, 3)).astype(np.float32)
    v = rng.random((1, 4)).astype(np.float32)
    out = posthoc.hard_assign(torch.from_numpy(r), torch.from_numpy(v), 0.5, 0.2, size=(7, 5))
    up = F.interpolate(torch.from_numpy(r), size=(7, 5), mode="bilinear", align_corners=False).numpy()
    np.testing.assert_array_equal(out.numpy(), ref.hard_assign(up, v, 0.5, 0.2))
    assert posthoc.hard_assign(np.zeros((1, 0, 2, 2), np.float32), np.zeros((1, 0), np.float32)).min() == -1
    with pytest.raises(ValueRangeError, match=r"mask_threshold must be a number in \[0,1\]; got 2"):
        posthoc.hard_assign(r, v, mask_threshold=2)
    with pytest.raises(ValueRangeError, match=r"validity_threshold must be a number in \[0,1\]"):
        posthoc.hard_assign(r, v, validity_threshold=-0.1)


@pytest.mark.gpu
def test_assign_cpu_equals_cuda(rng):
    r = torch.from_numpy(rng.random((2, 7, 9, 11)).astype(np.float32))
    v = torch.from_numpy(rng.random((2, 7)).astype(np.float32))
    for method in ("pruned", "dense"):
        assert torch.equal(posthoc.soft_assign(r.cuda(), v.cuda(), size=(20, 30), method=method).cpu(),
                           posthoc.soft_assign(r, v, size=(20, 30), method=method))
    assert torch.equal(posthoc.hard_assign(r.cuda(), v.cuda(), 0.5, 0.3).cpu(), posthoc.hard_assign(r, v, 0.5, 0.3))
