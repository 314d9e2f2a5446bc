import numpy as np
import pytest
import torch

import posthoc
from posthoc import DTypeError, NonFiniteError, ShapeError, ValueRangeError
from tests.reference import ops as ref

K = 19  # Cityscapes-like: suppress ids 2..10 by default


def _cls(rng, B, N, keep_classes):
    """Class logits whose top class is given per mask (None = no object), with high confidence."""
    c = rng.normal(size=(B, N, K + 1)).astype(np.float32)
    for b in range(B):
        for n, k in enumerate(keep_classes[b]):
            c[b, n, K if k is None else k] += 12.0
    return c


@pytest.fixture
def problem(rng):
    B, N, h, w = 2, 6, 7, 9
    ml = (rng.normal(size=(B, N, h, w)) * 3).astype(np.float32)
    cl = _cls(rng, B, N, [[3, 5, 0, None, 12, 8], [4, 1, 13, None, 15, 0]])
    return ml, cl


def test_refinement_mask_reference(problem):
    ml, cl = problem
    for size in (None, (14, 20)):
        R = posthoc.refinement_mask(ml, cl, size=size)
        hw = size or ml.shape[-2:]
        assert R.shape == (2, 1, *hw) and R.dtype == np.float32
        for b in range(2):
            expect = ref.refinement_mask(ml[b], cl[b], range(2, 11), 0.95, 0.5, 2, hw)
            np.testing.assert_array_equal(R[b, 0], expect)
    # image 0 keeps 3 masks (classes 3, 5, 8): non-trivial; image 1 keeps one (4): R = 0
    R = posthoc.refinement_mask(ml, cl)
    assert R[0].sum() > 0 and R[1].sum() == 0


def test_refinement_arguments(problem):
    ml, cl = problem
    R1 = posthoc.refinement_mask(ml, cl, min_masks=1)
    assert R1[1].sum() > 0  # one kept mask is enough now
    np.testing.assert_array_equal(R1[1, 0], ref.refinement_mask(ml[1], cl[1], range(2, 11), 0.95, 0.5, 1, (7, 9)))
    R = posthoc.refinement_mask(ml, cl, suppress_ids=[0, 12], min_masks=2)
    np.testing.assert_array_equal(R[0, 0], ref.refinement_mask(ml[0], cl[0], [0, 12], 0.95, 0.5, 2, (7, 9)))
    assert posthoc.refinement_mask(ml, cl, score_threshold=1.0).sum() == 0
    R = posthoc.refinement_mask(ml, cl, mask_threshold=0.0)
    np.testing.assert_array_equal(R[0], 1.0)


def test_refine_equals_anomaly_times_one_minus_r(rng, problem):
    ml, cl = problem
    a = rng.random((2, 1, 14, 18)).astype(np.float32)
    a0 = a.copy()
    out = posthoc.refine(a, ml, cl)
    np.testing.assert_array_equal(a, a0)
    R = posthoc.refinement_mask(ml, cl, size=(14, 18))
    np.testing.assert_array_equal(out, a * (1 - R))
    np.testing.assert_array_equal(posthoc.refine(a[:, 0], ml, cl), out[:, 0])
    np.testing.assert_array_equal(posthoc.refine(a[0, 0], ml[0], cl[0]), out[0, 0])
    t = posthoc.refine(torch.from_numpy(a), torch.from_numpy(ml), torch.from_numpy(cl))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_array_equal(t.numpy(), out)
    h = posthoc.refine(torch.from_numpy(a).half(), torch.from_numpy(ml).half(), torch.from_numpy(cl).half())
    assert h.dtype == torch.float32


def test_refine_with_label_map_hard_masks(rng):
    lab = np.array([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, -1, 3]]])
    cl = _cls(rng, 1, 4, [[4, 6, 0, 7]])  # region 2 has class 0 (not suppressed)
    a = rng.random((1, 1, 3, 4)).astype(np.float32)
    out = posthoc.refine(a, lab, cl)
    keep = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]], bool)
    np.testing.assert_array_equal(out[0, 0], np.where(keep, 0.0, a[0, 0]))
    # equals float masks with huge logits
    ml = np.where(lab[:, None] == np.arange(4)[None, :, None, None], 50.0, -50.0).astype(np.float32)
    np.testing.assert_array_equal(out, posthoc.refine(a, ml, cl))


def test_refine_edges(rng):
    a = rng.random((0, 1, 4, 4)).astype(np.float32)
    assert posthoc.refine(a, np.zeros((0, 3, 2, 2), np.float32), np.zeros((0, 3, K + 1), np.float32)).shape == a.shape
    a = rng.random((1, 1, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(posthoc.refine(a, np.zeros((1, 0, 2, 2), np.float32),
                                                 np.zeros((1, 0, K + 1), np.float32)), a)  # N = 0
    one = posthoc.refinement_mask(np.full((1, 2, 1, 1), 5.0, np.float32), _cls(rng, 1, 2, [[2, 3]]))
    np.testing.assert_array_equal(one, [[[[1.0]]]])


def test_refine_errors(rng, problem):
    ml, cl = problem
    a = rng.random((2, 1, 7, 9)).astype(np.float32)
    with pytest.raises(ValueRangeError, match=r"suppress_ids must be class indices in \[0,K\)=\[0,4\)"):
        posthoc.refinement_mask(ml, cl[..., 15:], suppress_ids=[1, 7])
    with pytest.raises(ShapeError, match=r"mismatch in the region axis N"):
        posthoc.refinement_mask(ml[:, :5], cl)
    with pytest.raises(ShapeError, match=r"mismatch in the batch axis \(0\)"):
        posthoc.refine(a[:1], ml, cl)
    with pytest.raises(ShapeError, match=r"class_logits must be \(B,N,K\+1\) or \(N,K\+1\); got 4 axes"):
        posthoc.refine(a, ml, cl[None])
    bad = ml.copy()
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(NonFiniteError, match="mask_logits must be finite"):
        posthoc.refine(a, bad, cl)
    with pytest.raises(DTypeError, match="mask_logits must be float mask logits"):
        posthoc.refine(a, ml > 0, cl)
    with pytest.raises(ValueRangeError, match=r"label map values must be < N=6"):
        posthoc.refine(a, np.full((2, 7, 9), 6), cl)
    with pytest.raises(ShapeError, match="label map must be"):
        posthoc.refine(a, np.zeros((2, 5, 9), np.int64), cl)
    with pytest.raises(ValueRangeError, match=r"score_threshold must be a number in \[0,1\]"):
        posthoc.refine(a, ml, cl, score_threshold=1.5)
    with pytest.raises(ValueRangeError, match="min_masks must be a non-negative int"):
        posthoc.refine(a, ml, cl, min_masks=-1)
    with pytest.raises(ShapeError, match=r"anomaly must be \(H,W\) when class_logits is unbatched"):
        posthoc.refine(a, ml[0], cl[0])


# ----------------------------------------------------------------------------- unknown instances


def test_mine_unknown_instances_reference(rng):
    N, h, w = 5, 12, 14
    stuff, thing = list(range(11)), list(range(11, 19))
    for seed in range(6):
        r = np.random.default_rng(seed)
        ml = (r.normal(size=(1, N, h, w)) * 4).astype(np.float32)
        cl = (r.normal(size=(1, N, K + 1)) * 2).astype(np.float32)
        out = posthoc.mine_unknown_instances(ml, cl, stuff, thing, 0.5)
        np.testing.assert_array_equal(out[0], ref.mine_unknown_instances(ml[0], cl[0], stuff, thing, 0.5, 0.5))


def test_mine_constructed_case(rng):
    # two known masks cover the left and right thirds; the middle is uncovered -> one candidate
    # component; the mask overlapping it is confused among stuff classes -> unknown instance
    H, W = 6, 9
    ml = np.full((1, 3, H, W), -20.0, np.float32)
    ml[0, 0, :, :3] = 20
    ml[0, 1, :, 6:] = 20
    ml[0, 2, 1:5, 2:7] = 20  # a "no object" mask over the middle
    cl = np.full((1, 3, K + 1), -10.0, np.float32)
    cl[0, 0, 0] = 10
    cl[0, 1, 13] = 10
    cl[0, 2, K] = 10  # no object: not known
    cl[0, 2, 0:11] = 9.0  # high stuff entropy
    out = posthoc.mine_unknown_instances(ml, cl, range(11), range(11, 19))
    expect = np.full((H, W), -1)
    expect[:, 3:6] = 0
    np.testing.assert_array_equal(out[0], expect)
    # flipping which entropy is larger removes the instance
    cl2 = cl.copy()
    cl2[0, 2, 0:11] = -10
    cl2[0, 2, 11:19] = 9.0
    assert (posthoc.mine_unknown_instances(ml, cl2, range(11), range(11, 19)) == -1).all()
    # known="all" also counts the no-object mask as known: its top known-class probability
    # (~0.073) lowers B in rows 1..4 to ~0.927, below threshold 0.95; the two leftover strips
    # (rows 0 and 5) overlap no mask, so nothing is mined
    out_nv = posthoc.mine_unknown_instances(ml, cl, range(11), range(11, 19), 0.95)
    np.testing.assert_array_equal(out_nv[0], expect)
    out_all = posthoc.mine_unknown_instances(ml, cl, range(11), range(11, 19), 0.95, known="all")
    assert (out_all == -1).all()
    # label-map masks give the same result as the equivalent hard float masks
    lab = np.full((1, H, W), -1)
    lab[0, :, :3] = 0
    lab[0, :, 6:] = 1
    ml_hard = np.where(lab[:, None] == np.arange(2)[None, :, None, None], 50.0, -50.0).astype(np.float32)
    np.testing.assert_array_equal(
        posthoc.mine_unknown_instances(lab, cl[:, :2], range(11), range(11, 19)),
        posthoc.mine_unknown_instances(ml_hard, cl[:, :2], range(11), range(11, 19)),
    )


def test_mine_options_and_errors(rng):
    ml = (rng.normal(size=(2, 4, 8, 8)) * 3).astype(np.float32)
    cl = rng.normal(size=(2, 4, K + 1)).astype(np.float32)
    out = posthoc.mine_unknown_instances(torch.from_numpy(ml), torch.from_numpy(cl), range(11), range(11, 19),
                                         size=(16, 16), entropy_mode="renormalized", weighting="iou",
                                         overlap_with="known", min_area=3, connectivity=4)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 16, 16) and out.dtype == torch.int64
    assert posthoc.mine_unknown_instances(ml[0], cl[0], range(11), range(11, 19)).shape == (8, 8)
    with pytest.raises(ValueRangeError, match=r"stuff_ids and thing_ids must be disjoint; got \[3\]"):
        posthoc.mine_unknown_instances(ml, cl, [1, 3], [3, 12])
    with pytest.raises(ValueRangeError, match="entropy_mode must be one of"):
        posthoc.mine_unknown_instances(ml, cl, [1], [12], entropy_mode="full")
    with pytest.raises(ValueRangeError, match=r"thing_ids must be class indices in \[0,K\)=\[0,19\)"):
        posthoc.mine_unknown_instances(ml, cl, [1], [19])
    with pytest.raises(ValueRangeError, match=r"threshold must be a number in \[0,1\]"):
        posthoc.mine_unknown_instances(ml, cl, [1], [12], threshold=2)


def test_refine_is_the_function_after_importing_its_module(problem, rng):
    """The ops live in ``posthoc.mask2anomaly``; importing it never shadows ``posthoc.refine``."""
    import importlib
    import types

    mod = importlib.import_module("posthoc.mask2anomaly")
    assert not isinstance(posthoc.refine, types.ModuleType)
    ml, cl = problem
    a = rng.random((2, 1, 7, 9)).astype(np.float32)
    np.testing.assert_array_equal(posthoc.refine(a, ml, cl), mod.refine(a, ml, cl))


@pytest.mark.gpu
def test_refine_and_mine_cpu_equals_cuda(problem, rng):
    ml, cl = (torch.from_numpy(v) for v in problem)
    a = torch.from_numpy(rng.random((2, 1, 14, 18)).astype(np.float32))
    cpu = posthoc.refine(a, ml, cl)
    gpu = posthoc.refine(a.cuda(), ml.cuda(), cl.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)
    m_cpu = posthoc.mine_unknown_instances(ml, cl, range(11), range(11, 19))
    m_gpu = posthoc.mine_unknown_instances(ml.cuda(), cl.cuda(), range(11), range(11, 19))
    assert torch.equal(m_gpu.cpu(), m_cpu)


def test_default_suppress_ids_on_small_models(problem, caplog):
    ml, cl = problem
    small = cl[..., 12:]  # K = 7 classes + no object
    R = posthoc.refinement_mask(ml, small)
    np.testing.assert_array_equal(R, posthoc.refinement_mask(ml, small, suppress_ids=range(2, 7)))
    assert "Cityscapes trainIds 2..10) on a model with K=7" in caplog.text
