
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import posthoc
from posthoc import DTypeError, ShapeError, ValueRangeError
from tests.reference import ops as ref

HYP = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def label_maps(draw):
    B = draw(st.integers(1, 2))
    H = draw(st.integers(1, 9))
    W = draw(st.integers(1, 9))
    n = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    return rng.integers(-1, n, size=(B, H, W))


@HYP
@given(label_maps(), st.sampled_from([4, 8]), st.sampled_from([0, 1, 2, 4]))
def test_split_matches_reference(lab, conn, min_size):
    out = posthoc.split_components(lab, connectivity=conn, min_size=min_size)
    assert out.dtype == np.int64 and out.shape == lab.shape
    np.testing.assert_array_equal(out, ref.split_components(lab, conn, min_size))


@HYP
@given(label_maps(), st.integers(0, 2**31 - 1))
def test_split_label_permutation_invariant_and_batched(lab, seed):
    perm = np.random.default_rng(seed).permutation(10)
    lab2 = np.where(lab >= 0, perm[np.maximum(lab, 0)], -1)
    out = posthoc.split_components(lab)
    np.testing.assert_array_equal(out, posthoc.split_components(lab2))
    for b in range(lab.shape[0]):
        np.testing.assert_array_equal(out[b], posthoc.split_components(lab[b]))


def test_touching_regions_never_merge_and_diagonals():
    lab = np.array([[0, 0, 1, 1],
                    [0, 0, 1, 1],
                    [2, -1, -1, 2],
                    [-1, 2, 2, -1]])
    # 8-connectivity joins the diagonal 2s into one component; 4-connectivity does not
    np.testing.assert_array_equal(
        posthoc.split_components(lab),
        [[0, 0, 1, 1], [0, 0, 1, 1], [2, -1, -1, 2], [-1, 2, 2, -1]],
    )
    np.testing.assert_array_equal(
        posthoc.split_components(lab, connectivity=4),
        [[0, 0, 1, 1], [0, 0, 1, 1], [2, -1, -1, 3], [-1, 4, 4, -1]],
    )
    np.testing.assert_array_equal(
        posthoc.split_components(lab, connectivity=4, min_size=2),
        [[0, 0, 1, 1], [0, 0, 1, 1], [-1, -1, -1, -1], [-1, 2, 2, -1]],
    )


def test_u_shape_needs_union_find():
    # the two arms meet only at the bottom: a single-pass labeller without merging would split them
    lab = np.array([[0, 1, 0, 1, 0],
                    [0, 1, 0, 1, 0],
                    [0, 0, 0, 1, 0],
                    [1, 1, 1, 1, 0],
                    [0, 0, 0, 0, 0]])
    out = posthoc.split_components(lab, connectivity=4)
    np.testing.assert_array_equal(out, ref.split_components(lab[None], 4)[0])
    # {left U of zeros}, {top of column 1}, {column 3 + row 3 ones}, {right column + bottom row zeros}
    assert out.max() == 3


def test_torch_dtypes_edges_and_unchanged(rng):
    lab = rng.integers(-1, 3, size=(2, 6, 7))
    t = torch.from_numpy(lab.astype(np.int32))
    t0 = t.clone()
    out = posthoc.split_components(t)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64
    assert torch.equal(t, t0)
    np.testing.assert_array_equal(out.numpy(), posthoc.split_components(lab))
    # one rule for every label map: int32/int64 only (a uint8 map's 255 is ambiguous)
    with pytest.raises(DTypeError, match=r"int32 or int64 label map .*got dtype torch.uint8.*255"):
        posthoc.split_components(lab.clip(0).astype(np.uint8))
    assert posthoc.split_components(np.zeros((0, 4, 4), np.int64)).shape == (0, 4, 4)
    np.testing.assert_array_equal(posthoc.split_components(np.full((1, 3, 3), -1)), -1)
    np.testing.assert_array_equal(posthoc.split_components(np.array([[[5]]])), [[[0]]])
    assert posthoc.split_components(np.zeros((1, 0, 0), np.int64)).shape == (1, 0, 0)


def test_errors():
    with pytest.raises(DTypeError, match=r"labels must be an integer tensor.*got dtype torch.float32"):
        posthoc.split_components(np.zeros((1, 2, 2), np.float32))
    with pytest.raises(ValueRangeError, match=r"labels must be >= -1.*got minimum -3"):
        posthoc.split_components(np.full((1, 2, 2), -3))
    with pytest.raises(ShapeError, match=r"labels must be \(B,H,W\) or \(H,W\); got 4 axes"):
        posthoc.split_components(np.zeros((1, 1, 2, 2), np.int64))
    with pytest.raises(ValueRangeError, match="connectivity must be 4 or 8; got 6"):
        posthoc.split_components(np.zeros((1, 2, 2), np.int64), connectivity=6)
    with pytest.raises(ValueRangeError, match="min_size must be a non-negative int; got -1"):
        posthoc.split_components(np.zeros((1, 2, 2), np.int64), min_size=-1)


def test_full_hd_100_regions_matches_scipy():
    """1024x2048 with ~100 blocky regions: same partition as scipy's per-region 8-connected labelling.

    (Speed is shown by benchmarks, not by timed unit tests.)
    """
    from scipy import ndimage

    rng = np.random.default_rng(0)
    small = rng.integers(0, 100, size=(16, 32))
    lab = np.kron(small, np.ones((64, 64), np.int64))
    out = posthoc.split_components(lab[None])[0]
    n_ref = sum(ndimage.label(lab == v, structure=np.ones((3, 3)))[1] for v in np.unique(lab))
    assert out.max() + 1 == n_ref
    # every component lies inside one region, and each (region, component) pair is one label
    pairs = np.unique(np.stack([lab.ravel(), out.ravel()]), axis=1)
    assert pairs.shape[1] == n_ref


@pytest.mark.gpu
def test_cuda_device_kept(rng):
    lab = torch.from_numpy(rng.integers(-1, 4, size=(2, 9, 9))).cuda()
    out = posthoc.split_components(lab)
    assert out.device.type == "cuda"
    assert torch.equal(out.cpu(), posthoc.split_components(lab.cpu()))
