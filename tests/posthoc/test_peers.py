"""posthoc.peers against the slow transcriptions of the peers' official code (tests/reference/peers.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from posthoc.errors import DTypeError, ShapeError, ValueRangeError
from posthoc.peers import farthest_point_sample, mask_nms, maskomaly, objectomaly, ugains, ugains_fuse, ugains_prompts
from tests.reference import peers as ref


def _blobs(rng, b=2, h=20, w=28, n=5):
    lab = np.full((b, h, w), -1, np.int64)
    for i in range(b):
        for k in range(n):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            lab[i, y:y + rng.integers(3, 10), x:x + rng.integers(3, 12)] = k
    return lab


@pytest.mark.parametrize("sharpen", [True, False])
def test_objectomaly_matches_official_loops(sharpen):
    rng = np.random.default_rng(0)
    lab = _blobs(rng)
    # scores on a 1/8 grid: means of few values stay exact, so the Laplacian's zero test is exact in both
    a = (rng.integers(0, 9, (2, 1, 20, 28)) / 8).astype(np.float32)
    got = objectomaly(a, lab, sharpen=sharpen)
    assert got.shape == a.shape and got.dtype == np.float32
    for i in range(2):
        masks = [lab[i] == k for k in range(lab[i].max() + 1)]
        np.testing.assert_allclose(got[i, 0], ref.objectomaly(a[i, 0], masks, sharpen), atol=1e-5)


def test_objectomaly_overlapping_masks_ascending_area():
    rng = np.random.default_rng(1)
    a = (rng.integers(0, 5, (1, 1, 16, 16)) / 4).astype(np.float32)
    m = np.zeros((1, 3, 16, 16), bool)
    m[0, 0, 2:12, 2:12] = True
    m[0, 1, 4:8, 4:8] = True  # inside mask 0: overwritten by the larger mask
    m[0, 2, 10:15, 0:6] = True
    got = objectomaly(torch.from_numpy(a), None, masks=torch.from_numpy(m))
    want = ref.objectomaly(a[0, 0], list(m[0]))
    np.testing.assert_allclose(got[0, 0].numpy(), want, atol=1e-5)
    assert isinstance(got, torch.Tensor)


def test_objectomaly_no_regions_is_blur_only_and_range():
    a = np.random.default_rng(2).random((1, 1, 9, 9)).astype(np.float32)
    out = objectomaly(a, np.full((1, 9, 9), -1), sharpen=False)
    np.testing.assert_array_equal(out, a)
    out = objectomaly(a, np.zeros((1, 9, 9), np.int64))
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(out, a.mean(), atol=1e-6)  # one region: constant map stays constant


def test_objectomaly_errors():
    a = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ShapeError, match=r"\(B,1,H,W\)"):
        objectomaly(np.zeros((1, 2, 4, 4), np.float32), np.zeros((1, 4, 4), np.int64))
    with pytest.raises(ValueRangeError, match=r"\[0"):
        objectomaly(a + 2, np.zeros((1, 4, 4), np.int64))
    with pytest.raises(ValueRangeError, match="non-finite|NaN|finite"):
        objectomaly(a * np.nan, np.zeros((1, 4, 4), np.int64))
    with pytest.raises(ShapeError, match=r"\(B,H,W\)"):
        objectomaly(a, np.zeros((1, 4, 5), np.int64))
    with pytest.raises(DTypeError, match="integer"):
        objectomaly(a, np.zeros((1, 4, 4), np.float32))
    with pytest.raises(ValueRangeError, match=">= -1"):
        objectomaly(a, np.full((1, 4, 4), -2))
    with pytest.raises(ValueRangeError, match="odd"):
        objectomaly(a, np.zeros((1, 4, 4), np.int64), ksize=4)
    with pytest.raises(ValueRangeError, match="neither"):
        objectomaly(a, None)
    with pytest.raises(DTypeError, match="bool"):
        objectomaly(a, None, masks=np.zeros((1, 1, 4, 4), np.int64))


def test_fps_matches_reference():
    pts = torch.from_numpy(np.random.default_rng(3).integers(0, 50, (40, 2)).astype(np.float32))
    got = farthest_point_sample(pts, 7).tolist()
    assert got == ref.fps(pts.numpy().astype(np.float64), 7)
    assert farthest_point_sample(pts[:3], 10).tolist() == ref.fps(pts[:3].numpy().astype(np.float64), 10)
    assert farthest_point_sample(torch.zeros(0, 2), 3).numel() == 0
    with pytest.raises(ValueRangeError):
        farthest_point_sample(pts, 0)


def test_prompts_use_uncertain_pixels_and_fall_back_to_all():
    a = torch.zeros(10, 12)
    a[2:4, 5:9] = 0.9
    p = ugains_prompts(a, 0.5, 4)
    assert p.shape == (4, 2)
    assert all(a[int(y), int(x)] >= 0.5 for x, y in p.tolist())
    assert p[0].tolist() == [5.0, 2.0]  # FPS starts at the first candidate in raster order (x, y)
    assert ugains_prompts(torch.zeros(3, 3), 0.5, 20).shape == (9, 2)
    with pytest.raises(ValueRangeError):
        ugains_prompts(a, 1.5)


def test_mask_nms_matches_official():
    rng = np.random.default_rng(4)
    m = np.zeros((6, 10, 10), bool)
    for q in range(6):
        y, x = rng.integers(0, 4, 2)
        m[q, y:y + 6, x:x + 6] = True
    s = rng.random(6)
    got = mask_nms(torch.from_numpy(m), torch.from_numpy(s), 0.5)
    assert sorted(got) == ref.mask_nms(m, s, 0.5)
    assert got == sorted(got, key=lambda q: -s[q])


def test_ugains_fuse_matches_official():
    rng = np.random.default_rng(5)
    a = rng.random((2, 1, 12, 14)).astype(np.float32)
    m = np.zeros((2, 5, 12, 14), bool)
    for i in range(2):
        for q in range(4):  # row 4 stays empty (padding)
            y, x = rng.integers(0, 6, 2)
            m[i, q, y:y + rng.integers(2, 7), x:x + rng.integers(2, 8)] = True
    got = ugains_fuse(a, m, num_points=5, nms_threshold=0.7)
    for i in range(2):
        np.testing.assert_allclose(got[i, 0], ref.ugains_fuse(a[i, 0].astype(np.float64), m[i], 5), atol=1e-6)
    assert got.min() >= 0 and got.max() <= 1
    with pytest.raises(ValueRangeError, match="num_points"):
        ugains_fuse(a, m, num_points=3)
    with pytest.raises(DTypeError):
        ugains_fuse(a, m.astype(np.uint8))


def test_ugains_with_a_fake_predictor_and_bad_predictor():
    a = torch.zeros(1, 1, 8, 8)
    a[0, 0, 2:5, 2:5] = 0.8

    def predict(i, pts):  # each prompt's 3 candidate masks: a box around it, with IoU favouring the 2nd
        q = pts.shape[0]
        m = torch.zeros(q, 3, 8, 8, dtype=torch.bool)
        for k, (x, y) in enumerate(pts.long().tolist()):
            m[k, 1, max(0, y - 1):y + 2, max(0, x - 1):x + 2] = True
        return m, torch.tensor([[0.1, 0.9, 0.2]]).repeat(q, 1)

    out = ugains(a, predict, threshold=0.5, num_points=4)
    assert out.shape == a.shape and float(out[0, 0, 3, 3]) > float(out[0, 0, 7, 7])
    with pytest.raises(ShapeError, match="predict must return"):
        ugains(a, lambda i, p: (torch.zeros(p.shape[0], 8, 8, dtype=torch.bool), torch.zeros(p.shape[0])))
    with pytest.raises(DTypeError):
        ugains(a, None)


def test_ugains_with_a_tiny_sam():
    pytest.importorskip("segment_anything")
    from posthoc.adapters.proposals_sam import sam_point_predictor
    from tests.adapters.test_proposals import _tiny_sam

    sam = _tiny_sam()
    img = np.random.default_rng(6).integers(0, 255, (2, 32, 48, 3), dtype=np.uint8)
    a = torch.from_numpy(np.random.default_rng(7).random((2, 1, 32, 48)).astype(np.float32))
    pred = sam_point_predictor(sam, img)
    m, iou = pred(0, torch.tensor([[5.0, 6.0], [30.0, 20.0]]))
    assert m.shape == (2, 3, 32, 48) and m.dtype == torch.bool and iou.shape == (2, 3)
    out = ugains(a, sam_point_predictor(sam, img), threshold=0.9, num_points=6)
    assert out.shape == a.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    # the same as fusing the best masks by hand
    masks = torch.zeros(2, 6, 32, 48, dtype=torch.bool)
    p2 = sam_point_predictor(sam, img)
    for i in range(2):
        pts = ugains_prompts(a[i, 0], 0.9, 6)
        mk, io = p2(i, pts)
        masks[i, : len(pts)] = mk[torch.arange(len(pts)), io.argmax(1)]
    torch.testing.assert_close(out, ugains_fuse(a, masks, num_points=6))


def test_maskomaly_matches_official():
    rng = np.random.default_rng(8)
    n, k = 7, 4
    mp = rng.random((2, n, 10, 12)).astype(np.float32) ** 3
    logits = rng.normal(0, 3, (2, n, k + 1))
    cp = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    got = maskomaly(mp, cp.astype(np.float32), anomaly_queries=[1, 4], ground_queries=[2])
    for i in range(2):
        np.testing.assert_allclose(got[i, 0], ref.maskomaly(mp[i], cp[i].astype(np.float32), [1, 4], [2]), atol=1e-6)
    up = maskomaly(torch.from_numpy(mp), torch.from_numpy(cp).float(), size=(20, 24))
    assert up.shape == (2, 1, 20, 24)
    with pytest.raises(ValueRangeError, match="anomaly_queries"):
        maskomaly(mp, cp, anomaly_queries=[n])
    with pytest.raises(ShapeError):
        maskomaly(mp, cp[:, :3])
    with pytest.raises(ValueRangeError):
        maskomaly(mp * 3, cp)
