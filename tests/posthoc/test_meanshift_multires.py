"""posthoc.meanshift_multires / posthoc.multires.merge_levels: Dille et al. §4.1 segment merging across resolutions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import posthoc
from posthoc.errors import DTypeError, NonFiniteError, ShapeError, ValueRangeError
from posthoc.multires import meanshift_multires, merge_levels
from tests.reference import meanshift as ref_ms


def _lines(q, F=8, noise=0.02, seed=0):
    """(1,F,h,w) features: entity k of the map q points along e_k, with noise and a random sign per pixel."""
    g = torch.Generator().manual_seed(seed)
    f = torch.eye(F)[q].permute(2, 0, 1).unsqueeze(0)
    f = f + noise * torch.randn(f.shape, generator=g)
    return f * torch.where(torch.rand(1, 1, *q.shape, generator=g) < 0.5, -1.0, 1.0)


def _partition_equal(a, b):
    """Same partition: the label pairs are a bijection."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_boundary_moves_and_contained_segment_subdivides():
    """The issue's reference test: a coarse two-segment map and a fine three-segment map whose boundary moved."""
    coarse_q = torch.zeros(8, 8, dtype=torch.long)
    coarse_q[:, 4:] = 1  # boundary at fine column 8
    fine_q = torch.zeros(16, 16, dtype=torch.long)
    fine_q[:, 9:] = 1  # the boundary moved one fine pixel to the right ...
    fine_q[2:6, 11:15] = 2  # ... and a smaller object inside the right segment appears
    coarse, fine = _lines(coarse_q, seed=1), _lines(fine_q, seed=2)
    lab, per_level = meanshift_multires([coarse, fine], n_seeds=64, return_levels=True)
    assert lab.shape == (1, 16, 16) and lab.dtype == torch.int64
    assert int(per_level[0].max()) == 1 and int(per_level[1].max()) == 2  # mean-shift found 2 and 3 segments
    assert _partition_equal(lab[0], fine_q)
    assert sorted(torch.unique(lab).tolist()) == [0, 1, 2]
    # the same merge on the ground-truth maps, and the loop reference, agree
    assert torch.equal(merge_levels([coarse_q[None], fine_q[None]]), lab)
    assert np.array_equal(ref_ms.merge_levels([coarse_q.numpy(), fine_q.numpy()]), lab[0].numpy())


def test_components_of_one_cluster_are_matched_on_their_own():
    # one fine cluster (id 4) is two blobs, one inside each coarse segment: as a cluster it is contained in
    # neither and is ignored; as components each blob subdivides the segment it lies in
    coarse = torch.zeros(1, 3, 6, dtype=torch.long)
    coarse[..., 3:] = 1
    fine = coarse.clone()
    fine[0, 1, 1] = fine[0, 1, 4] = 4
    # the backgrounds replace (IoU 8/9); cluster 4 has half its pixels in each coarse segment
    assert torch.equal(merge_levels([coarse, fine], iou_threshold=0.85), coarse)
    out = merge_levels([coarse, fine], iou_threshold=0.85, connectivity=8)
    want = coarse.clone()
    want[0, 1, 1], want[0, 1, 4] = 2, 3
    assert torch.equal(out, want)


def test_straddling_segment_is_ignored_and_remnants_keep_their_id():
    coarse = torch.tensor([[0, 0, 1, 1]])  # (1,4) -> upsampled to (1,8): 0 0 0 0 1 1 1 1
    fine = torch.tensor([[5, 5, 5, 9, 9, 7, 7, 7]])  # 9 straddles the boundary: neither a match nor contained
    out = merge_levels([coarse[None], fine[None]], iou_threshold=0.7, contain_threshold=0.9)
    # IoU(5, 0) = 3/4 and IoU(7, 1) = 3/4 replace; 9 is ignored, so its pixels keep the coarse ids
    assert out.tolist() == [[[0, 0, 0, 0, 1, 1, 1, 1]]]
    # with a higher IoU threshold nothing is replaced, and 5 and 7 (contained) subdivide
    out = merge_levels([coarse[None], fine[None]], iou_threshold=0.8, contain_threshold=0.9)
    assert out.tolist() == [[[2, 2, 2, 0, 1, 3, 3, 3]]]
    # min_size drops small finer segments
    out = merge_levels([coarse[None], fine[None]], iou_threshold=0.8, min_size=4)
    assert out.tolist() == [[[0, 0, 0, 0, 1, 1, 1, 1]]]


def _random_levels(rng, B=2):
    """Blocky coarse map, then finer maps made of moved copies of it plus random rectangles and -1 holes."""
    levels = []
    for h, w in ((3, 4), (6, 8), (12, 16)):
        base = rng.integers(0, 4, (B, 3, 4))
        lab = np.repeat(np.repeat(base, h // 3, axis=1), w // 4, axis=2)
        if levels:
            lab = np.roll(lab, rng.integers(-1, 2), axis=2)
            for b in range(B):
                for _ in range(rng.integers(0, 4)):
                    y, x = rng.integers(0, h - 1), rng.integers(0, w - 1)
                    lab[b, y:y + rng.integers(1, h // 2), x:x + rng.integers(1, w // 2)] = rng.integers(4, 12)
                if rng.random() < 0.3:
                    lab[b, rng.integers(0, h), :] = -1
        levels.append(lab)
    return levels


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("thr", [(0.8, 0.9, 0), (0.6, 0.6, 3), (1.0, 1.0, 0)])
def test_merge_levels_matches_loop_reference(seed, thr):
    levels = _random_levels(np.random.default_rng(seed))
    iou, contain, min_size = thr
    out = merge_levels(levels, iou_threshold=iou, contain_threshold=contain, min_size=min_size)
    assert isinstance(out, np.ndarray) and out.dtype == np.int64 and out.shape == (2, 12, 16)
    for b in range(2):
        ref = ref_ms.merge_levels([lv[b] for lv in levels], iou, contain, min_size)
        np.testing.assert_array_equal(out[b], ref)
    # sparse, huge ids (the unique-based path) give the same map
    sparse = [np.where(lv >= 0, lv * 1_000_003 + 17, -1) for lv in levels]
    np.testing.assert_array_equal(
        merge_levels(sparse, iou_threshold=iou, contain_threshold=contain, min_size=min_size), out)
    # connectivity=8 is the merge of the levels' connected components
    comps = merge_levels(levels, iou_threshold=iou, contain_threshold=contain, min_size=min_size, connectivity=8)
    for b in range(2):
        ref = ref_ms.merge_levels([posthoc.split_components(lv[b], connectivity=8) for lv in levels], iou, contain,
                                  min_size)
        np.testing.assert_array_equal(comps[b], ref)
    # batched equals per image
    single = merge_levels([lv[1:2] for lv in levels], iou_threshold=iou, contain_threshold=contain,
                          min_size=min_size)
    np.testing.assert_array_equal(single[0], out[1])


def test_single_level_and_edge_sizes():
    lab = torch.tensor([[[7, 7, 3], [3, -1, 9]]])
    assert merge_levels([lab]).tolist() == [[[1, 1, 0], [0, -1, 2]]]  # consecutive ids, -1 kept
    assert merge_levels([torch.zeros(0, 2, 2, dtype=torch.long), torch.zeros(0, 4, 4, dtype=torch.long)]).shape == (
        0, 4, 4)
    assert merge_levels([torch.zeros(1, 0, 3, dtype=torch.long)]).shape == (1, 0, 3)
    one = meanshift_multires([torch.randn(2, 4, 1, 1), torch.randn(2, 4, 2, 2)], n_seeds=8)
    assert one.shape == (2, 2, 2) and int(one.min()) >= 0
    # one level is meanshift_sphere
    f = _lines(torch.tensor([[0, 0, 1], [2, 2, 1]]))
    assert torch.equal(meanshift_multires([f], n_seeds=8), posthoc.meanshift_sphere(f, n_seeds=8))


def test_numpy_in_numpy_out_and_public_name():
    q = torch.zeros(8, 8, dtype=torch.long)
    q[4:] = 1
    f = _lines(q)
    out = posthoc.meanshift_multires([f[..., ::2, ::2].numpy(), f.numpy()], n_seeds=16)
    assert isinstance(out, np.ndarray) and out.shape == (1, 8, 8) and _partition_equal(out[0], q)


def test_errors():
    f = torch.randn(1, 3, 4, 4)
    with pytest.raises(ShapeError, match="non-empty list"):
        meanshift_multires(f)
    with pytest.raises(ShapeError, match="non-empty list"):
        meanshift_multires([])
    with pytest.raises(ShapeError, match=r"features_by_level\[1\] must be \(B,F,h,w\)"):
        meanshift_multires([f, torch.randn(3, 4, 4)])
    with pytest.raises(ShapeError, match="batch size B=1"):
        meanshift_multires([f, torch.randn(2, 3, 8, 8)])
    with pytest.raises(ShapeError, match="coarse to fine"):
        meanshift_multires([torch.randn(1, 3, 8, 8), f])
    with pytest.raises(ValueRangeError, match=r"iou_threshold must be a number in \(0.5,1\]"):
        meanshift_multires([f], iou_threshold=0.5)
    with pytest.raises(ValueRangeError, match="contain_threshold"):
        merge_levels([torch.zeros(1, 2, 2, dtype=torch.long)], contain_threshold=1.5)
    with pytest.raises(ValueRangeError, match="min_size"):
        merge_levels([torch.zeros(1, 2, 2, dtype=torch.long)], min_size=-1)
    with pytest.raises(ValueRangeError, match="connectivity must be None, 4 or 8"):
        meanshift_multires([f], connectivity=6)
    with pytest.raises(DTypeError, match="integer label map"):
        merge_levels([torch.zeros(1, 2, 2)])
    with pytest.raises(ValueRangeError, match=">= -1"):
        merge_levels([torch.full((1, 2, 2), -2)])
    bad = f.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        meanshift_multires([bad])
    with pytest.raises(ValueRangeError, match="below 90 degrees"):
        meanshift_multires([f], angle_deg=95.0)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    q = torch.zeros(8, 8, dtype=torch.long)
    q[:, 5:] = 1
    levels = [_lines(q[::2, ::2]), _lines(q)]
    cpu = meanshift_multires(levels, n_seeds=16)
    gpu = meanshift_multires([lv.cuda() for lv in levels], n_seeds=16)
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)


def test_module_examples_run():
    import doctest

    import posthoc.multires

    res = doctest.testmod(posthoc.multires)
    assert res.attempted > 0 and res.failed == 0
