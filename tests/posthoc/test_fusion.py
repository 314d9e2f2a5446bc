import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import posthoc
from posthoc import (
    DTypeError,
    NonFiniteError,
    OverlapError,
    Proposals,
    ShapeError,
    ValueRangeError,
)
from tests.reference import ops as ref

HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _softmax(x, axis=1):
    return ref.softmax(x.astype(np.float64), axis)


def _labels(rng, B, H, W, n, p_void=0.2):
    lab = rng.integers(0, max(n, 1), size=(B, H, W))
    lab[rng.random((B, H, W)) < p_void] = -1
    return lab


@st.composite
def problems(draw, max_c=3):
    B = draw(st.integers(1, 3))
    C = draw(st.integers(1, max_c))
    H = draw(st.integers(1, 7))
    W = draw(st.integers(1, 7))
    n = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if C == 1:
        x = rng.random((B, C, H, W)).astype(np.float32)
    else:
        x = (rng.normal(size=(B, C, H, W)) * 3).astype(np.float32)
    lab = _labels(rng, B, H, W, n)
    return x, lab


def _norm(x):
    return x.astype(np.float64) if x.shape[1] == 1 else _softmax(x)


# ----------------------------------------------------------------------------- reference equality


def test_fuse_matches_reference_numpy(rng):
    x = (rng.normal(size=(2, 4, 13, 17)) * 2).astype(np.float32)
    lab = _labels(rng, 2, 13, 17, 6)
    out = posthoc.fuse(x, lab)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, ref.fuse(_softmax(x), lab), rtol=1e-5, atol=1e-6)


def test_fuse_anomaly_map_c1_used_as_is(rng):
    x = rng.random((1, 1, 9, 11)).astype(np.float32)
    lab = _labels(rng, 1, 9, 11, 3)
    np.testing.assert_allclose(posthoc.fuse(x, lab), ref.fuse(x, lab), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("normalize", ["softmax", "sigmoid", "none"])
def test_fuse_normalize_choices(rng, normalize):
    x = rng.random((2, 3, 6, 5)).astype(np.float32)
    lab = _labels(rng, 2, 6, 5, 3)
    if normalize == "softmax":
        p = _softmax(x)
    elif normalize == "sigmoid":
        p = 1 / (1 + np.exp(-x.astype(np.float64)))
    else:
        p = x.astype(np.float64)
    np.testing.assert_allclose(posthoc.fuse(x, lab, normalize=normalize), ref.fuse(p, lab), rtol=1e-5, atol=1e-6)


def test_fuse_sigmoid_for_c1_logits(rng):
    x = (rng.normal(size=(1, 1, 5, 5)) * 4).astype(np.float32)
    lab = _labels(rng, 1, 5, 5, 2)
    with pytest.raises(ValueRangeError, match=r"normalize='sigmoid'"):
        posthoc.fuse(x, lab)
    p = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(posthoc.fuse(x, lab, normalize="sigmoid"), ref.fuse(p, lab), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- properties


@HYP
@given(problems())
def test_one_region_gives_d_times_mean(prob):
    x, _ = prob
    lab = np.zeros((x.shape[0],) + x.shape[2:], np.int64)
    d = _norm(x)
    expect = d * d.mean(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(posthoc.fuse(x, lab), expect, rtol=2e-5, atol=1e-6)


@HYP
@given(problems(), st.integers(0, 2**31 - 1))
def test_label_permutation_invariance(prob, seed):
    x, lab = prob
    n = lab.max() + 1
    perm = np.random.default_rng(seed).permutation(n + 3)  # also maps onto non-contiguous ids
    lab2 = np.where(lab >= 0, perm[np.maximum(lab, 0)], -1)
    np.testing.assert_allclose(posthoc.fuse(x, lab), posthoc.fuse(x, lab2), rtol=1e-6, atol=1e-7)


@HYP
@given(problems())
def test_batch_equals_per_image(prob):
    x, lab = prob
    full = posthoc.fuse(x, lab)
    for b in range(x.shape[0]):
        np.testing.assert_allclose(full[b : b + 1], posthoc.fuse(x[b : b + 1], lab[b : b + 1]), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(full[b], posthoc.fuse(x[b], lab[b]), rtol=1e-6, atol=1e-7)


@HYP
@given(problems())
def test_all_unassigned_is_identity(prob):
    x, lab = prob
    lab = np.full_like(lab, -1)
    np.testing.assert_allclose(posthoc.fuse(x, lab), _norm(x), rtol=1e-6, atol=1e-7)


@HYP
@given(problems())
def test_matches_reference_property(prob):
    x, lab = prob
    np.testing.assert_allclose(posthoc.fuse(x, lab), ref.fuse(_norm(x), lab), rtol=2e-5, atol=1e-6)


# ----------------------------------------------------------------------------- input kinds


def test_shapes_2d_3d_4d(rng):
    x = rng.random((3, 6, 7)).astype(np.float32)
    lab = _labels(rng, 1, 6, 7, 3)
    out3 = posthoc.fuse(x, lab[0])
    assert out3.shape == (3, 6, 7)
    np.testing.assert_allclose(out3, posthoc.fuse(x[None], lab)[0])
    np.testing.assert_allclose(posthoc.fuse(x, lab), out3)  # (1,H,W) labels accepted for (C,H,W)
    a = rng.random((6, 7)).astype(np.float32)
    out2 = posthoc.fuse(a, lab[0])
    assert out2.shape == (6, 7)
    np.testing.assert_allclose(out2, ref.fuse(a[None, None], lab)[0, 0], rtol=1e-5)


def test_bool_masks_equal_label_map(rng):
    lab = _labels(rng, 2, 8, 9, 4)
    masks = np.stack([lab == n for n in range(4)], axis=1)
    x = rng.normal(size=(2, 3, 8, 9)).astype(np.float32)
    np.testing.assert_array_equal(posthoc.fuse(x, masks), posthoc.fuse(x, lab))
    np.testing.assert_array_equal(posthoc.fuse(x[0], masks[0]), posthoc.fuse(x[0], lab[0]))


def test_proposals_object(rng):
    lab = _labels(rng, 2, 5, 6, 3)
    x = rng.random((2, 1, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(posthoc.fuse(x, Proposals(labels=lab)), posthoc.fuse(x, lab))


def test_numpy_vs_torch(rng):
    x = rng.normal(size=(2, 3, 8, 9)).astype(np.float32)
    lab = _labels(rng, 2, 8, 9, 4)
    out_t = posthoc.fuse(torch.from_numpy(x), torch.from_numpy(lab))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_array_equal(out_t.numpy(), posthoc.fuse(x, lab))
    # mixed: torch scores with numpy labels
    np.testing.assert_array_equal(posthoc.fuse(torch.from_numpy(x), lab).numpy(), out_t.numpy())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_precision_input_computed_in_float32(rng, dtype):
    x = torch.from_numpy(rng.normal(size=(1, 3, 6, 6)).astype(np.float32)).to(dtype)
    lab = torch.from_numpy(_labels(rng, 1, 6, 6, 3))
    out = posthoc.fuse(x, lab)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, posthoc.fuse(x.float(), lab))
    out_np = posthoc.fuse(np.asarray(x.float().numpy(), dtype=np.float16), lab.numpy())
    assert out_np.dtype == np.float32


@pytest.mark.parametrize("ldtype", [np.int32, np.int16, np.uint8])
def test_label_dtypes(rng, ldtype):
    x = rng.random((1, 2, 5, 5)).astype(np.float32)
    lab = rng.integers(0, 3, (1, 5, 5))
    if ldtype is np.int32:
        np.testing.assert_allclose(posthoc.fuse(x, lab.astype(ldtype)), posthoc.fuse(x, lab))
    else:  # one rule for every label map: int32/int64 only
        with pytest.raises(DTypeError, match=r"proposals must be an int32 or int64 label map"):
            posthoc.fuse(x, lab.astype(ldtype))


def test_input_unchanged(rng):
    x = rng.normal(size=(2, 3, 6, 7)).astype(np.float32)
    lab = _labels(rng, 2, 6, 7, 3)
    x0, lab0 = x.copy(), lab.copy()
    posthoc.fuse(x, lab)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(lab, lab0)
    a = torch.rand(1, 1, 6, 7)
    a0 = a.clone()
    out = posthoc.fuse(a, torch.from_numpy(lab[:1]), normalize="none")
    assert torch.equal(a, a0) and out.data_ptr() != a.data_ptr()


# ----------------------------------------------------------------------------- edge sizes


def test_edge_sizes(rng):
    out = posthoc.fuse(np.zeros((0, 3, 4, 5), np.float32), np.zeros((0, 4, 5), np.int64))
    assert out.shape == (0, 3, 4, 5)
    x = rng.random((2, 1, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(posthoc.fuse(x, np.full((2, 4, 5), -1)), x)  # N = 0
    np.testing.assert_array_equal(posthoc.fuse(x, np.zeros((2, 0, 4, 5), bool)), x)  # N = 0 masks
    one = np.array([[[[0.25]]]], np.float32)
    np.testing.assert_allclose(posthoc.fuse(one, np.zeros((1, 1, 1), np.int64)), one * one)
    assert posthoc.fuse(np.zeros((1, 2, 0, 0), np.float32), np.zeros((1, 0, 0), np.int64)).shape == (1, 2, 0, 0)


# ----------------------------------------------------------------------------- errors


def test_errors(rng):
    x = rng.random((2, 1, 4, 5)).astype(np.float32)
    lab = np.zeros((2, 4, 5), np.int64)
    bad = x.copy()
    bad[0, 0, 1, 1] = np.nan
    with pytest.raises(NonFiniteError, match=r"model_logits must be finite; got 1 NaN"):
        posthoc.fuse(bad, lab)
    bad[0, 0, 1, 1] = np.inf
    with pytest.raises(NonFiniteError, match="1 Inf"):
        posthoc.fuse(bad, lab)
    with pytest.raises(ShapeError, match=r"got \(2,4,6\) \(mismatch in the spatial axes \(H,W\)\)"):
        posthoc.fuse(x, np.zeros((2, 4, 6), np.int64))
    with pytest.raises(ShapeError, match=r"mismatch in the batch axis \(0\)"):
        posthoc.fuse(x, np.zeros((3, 4, 5), np.int64))
    with pytest.raises(ShapeError, match=r"must be an integer label map \(B,H,W\)=\(2,4,5\); got shape \(4,5\)"):
        posthoc.fuse(x, np.zeros((4, 5), np.int64))
    with pytest.raises(ShapeError, match=r"\(B,C,H,W\), \(C,H,W\) or \(H,W\); got 5 axes"):
        posthoc.fuse(x[None], lab)
    low = lab.copy()
    low[0, 0, 0] = -2
    with pytest.raises(ValueRangeError, match=r">= -1 .*got minimum -2"):
        posthoc.fuse(x, low)
    with pytest.raises(DTypeError, match=r"integer tensor .*got dtype torch.float32"):
        posthoc.fuse(x, lab.astype(np.float32))
    with pytest.raises(DTypeError, match=r"floating-point tensor; got dtype torch.int64"):
        posthoc.fuse(lab[:, None], lab)
    with pytest.raises(DTypeError, match="numpy array or a torch tensor; got list"):
        posthoc.fuse(x.tolist(), lab)
    with pytest.raises(DTypeError, match="proposals must be a numpy array or a torch tensor; got dict"):
        posthoc.fuse(x, {"labels": lab})
    with pytest.raises(ValueRangeError, match=r"normalize must be one of"):
        posthoc.fuse(x, lab, normalize="minmax")
    with pytest.raises(ValueRangeError, match=r"probabilities in \[0,1\]; got values in"):
        posthoc.fuse(x * 3, lab, normalize="none")


def test_overlapping_masks_point_to_soft_assign():
    masks = np.zeros((1, 2, 3, 3), bool)
    masks[0, 0, :2] = True
    masks[0, 1, 1:] = True
    with pytest.raises(OverlapError, match=r"3 pixels covered by 2 or more masks.*soft_assign"):
        posthoc.fuse(np.zeros((1, 1, 3, 3), np.float32), masks)
    with pytest.raises(ShapeError, match=r"boolean proposals masks must be \(B,N,H,W\)"):
        posthoc.fuse(np.zeros((1, 1, 3, 3), np.float32), masks[0])


# ----------------------------------------------------------------------------- region statistics


def test_region_means_reference(rng):
    x = rng.normal(size=(2, 3, 7, 8)).astype(np.float32)
    lab = _labels(rng, 2, 7, 8, 5)
    means, counts = posthoc.region_means(x, lab, num_regions=7, return_counts=True)
    assert means.shape == (2, 7, 3) and counts.shape == (2, 7)
    np.testing.assert_allclose(means, ref.region_means(x, lab, 7), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(counts[:, 5:], 0)
    assert posthoc.region_means(x[0], lab[0]).shape == (int(lab[0].max()) + 1, 3)
    with pytest.raises(ValueRangeError, match="num_regions must exceed the largest label"):
        posthoc.region_means(x, lab, num_regions=2)


def test_region_class_logits(rng):
    x = rng.normal(size=(2, 4, 6, 6)).astype(np.float32)
    lab = _labels(rng, 2, 6, 6, 3)
    cl = posthoc.region_class_logits(x, lab, num_regions=5)
    assert cl.shape == (2, 5, 5) and cl.dtype == np.float32
    np.testing.assert_allclose(cl[..., :4], np.where(np.arange(5)[None, :, None] < 3,
                                                     ref.region_means(x, lab, 5), -1e4)[..., :4], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cl[:, :3, 4], -1e4)  # "no object" never wins for a real region
    np.testing.assert_array_equal(cl[:, 3:, 4], 0.0)  # empty regions are "no object"
    t = posthoc.region_class_logits(torch.from_numpy(x), torch.from_numpy(lab))
    assert isinstance(t, torch.Tensor) and t.shape == (2, int(lab.max()) + 1, 5)


@pytest.mark.gpu
def test_cpu_equals_cuda(rng):
    x = torch.from_numpy(rng.normal(size=(2, 5, 33, 47)).astype(np.float32))
    lab = torch.from_numpy(_labels(rng, 2, 33, 47, 20))
    cpu = posthoc.fuse(x, lab)
    gpu = posthoc.fuse(x.cuda(), lab.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)


def test_device_mismatch_is_a_clear_error(rng):
    x = torch.rand(1, 1, 3, 3)
    lab = torch.zeros(1, 3, 3, dtype=torch.int64, device="meta")
    from posthoc.errors import DeviceError

    with pytest.raises(DeviceError, match=r"proposals is a meta tensor \(shape \(1,3,3\), no data\)"):
        posthoc.fuse(x, lab)
    with pytest.raises(DeviceError, match=r"proposals must be on the device of model_logits \(cpu\); got meta"):
        posthoc.validation.to_device(lab, False, x, "proposals", "model_logits")


def test_fuse_out_writes_into_a_preallocated_result(rng):
    d = rng.random((2, 1, 6, 7)).astype(np.float32)
    lab = rng.integers(-1, 4, size=(2, 6, 7))
    want = posthoc.fuse(d, lab)
    buf = np.full_like(d, -5.0)
    got = posthoc.fuse(d, lab, out=buf)
    assert got is buf
    np.testing.assert_array_equal(buf, want)
    logits = torch.from_numpy(rng.normal(size=(1, 3, 6, 7)).astype(np.float32))
    tbuf = torch.empty_like(logits)
    assert posthoc.fuse(logits, torch.from_numpy(lab[:1]), out=tbuf) is tbuf
    torch.testing.assert_close(tbuf, posthoc.fuse(logits, torch.from_numpy(lab[:1])))
    inplace = d.copy()  # out may be the input itself
    posthoc.fuse(inplace, lab, out=inplace)
    np.testing.assert_array_equal(inplace, want)


def test_fuse_out_errors(rng):
    d = rng.random((1, 1, 4, 5)).astype(np.float32)
    lab = np.zeros((1, 4, 5), np.int64)
    with pytest.raises(DTypeError, match="out must be a numpy array like model_logits; got Tensor"):
        posthoc.fuse(d, lab, out=torch.empty(1, 1, 4, 5))
    with pytest.raises(DTypeError, match="out must be float32; got torch.float64"):
        posthoc.fuse(d, lab, out=np.empty((1, 1, 4, 5)))
    with pytest.raises(ShapeError, match=r"out must have the shape of model_logits \(1,1,4,5\); got \(1,1,5,4\)"):
        posthoc.fuse(d, lab, out=np.empty((1, 1, 5, 4), np.float32))
    with pytest.raises(ShapeError, match="C-contiguous"):
        posthoc.fuse(d, lab, out=np.empty((1, 1, 5, 4), np.float32).transpose(0, 1, 3, 2))


def test_region_ops_name_their_labels_argument():
    with pytest.raises(ShapeError, match=r"^labels must be \(B,H,W\)=\(1,8,8\) matching semantic_logits"):
        posthoc.region_class_logits(np.zeros((1, 3, 8, 8), np.float32), np.zeros((1, 8, 7), np.int64))
    with pytest.raises(ShapeError, match=r"^labels must be \(B,H,W\)=\(1,8,8\) matching values"):
        posthoc.region_means(np.zeros((1, 3, 8, 8), np.float32), np.zeros((1, 8, 7), np.int64))
