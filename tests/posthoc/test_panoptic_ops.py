"""posthoc.panoptic: thing instances, Mask2Former-style fusion, semantic-guided clustering."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import label as nd_label

from posthoc.errors import DTypeError, NonFiniteError, ShapeError, ValueRangeError
from posthoc.panoptic import panoptic_fusion, semantic_guided_clustering, thing_instances


def _fusion_reference(masks, scores, classes, things, overlap=0.8, obj=0.0, mthr=0.5):
    """Mask2Former's panoptic_inference loop, literally (per pixel argmax of score*mask)."""
    n, h, w = masks.shape
    pan = np.zeros((h, w), np.int64)
    keep = [k for k in range(n) if scores[k] > obj]
    info, stuff, cur = [], {}, 0
    if not keep:
        return pan, info
    prob = np.stack([scores[k] * masks[k] for k in keep])
    ids = prob.argmax(0)
    for j, k in enumerate(keep):
        cls = int(classes[k])
        mask_area = (ids == j).sum()
        original = (masks[k] >= mthr).sum()
        mask = (ids == j) & (masks[k] >= mthr)
        if mask_area > 0 and original > 0 and mask.sum() > 0:
            if mask_area / original < overlap:
                continue
            if cls not in things:
                if cls in stuff:
                    pan[mask] = stuff[cls]
                    continue
                stuff[cls] = cur + 1
            cur += 1
            pan[mask] = cur
            info.append(cls)
    return pan, info


@pytest.mark.parametrize("seed", range(8))
def test_fusion_matches_mask2former_loop(seed):
    rng = np.random.default_rng(seed)
    n, h, w = int(rng.integers(0, 7)), 9, 11
    masks = rng.random((n, h, w)) * (rng.random((n, h, w)) < 0.6)
    scores = rng.random(n)
    classes = rng.integers(0, 4, n)
    sem, seg, segs = panoptic_fusion(masks, scores, classes, [2, 3], overlap_threshold=0.5)
    pan, info = _fusion_reference(masks, scores, classes, {2, 3}, overlap=0.5)
    assert np.array_equal(seg, pan)
    assert [d["category_id"] for d in segs] == info
    assert all(d["area"] == int((seg == d["id"]).sum()) for d in segs)
    lut = np.array([255] + info, np.int64)
    assert np.array_equal(sem, lut[seg])


def test_fusion_min_area_and_errors():
    masks = np.zeros((2, 4, 4))
    masks[0, :, :3] = 1
    masks[1, :, 3] = 1
    sem, seg, segs = panoptic_fusion(masks, [0.9, 0.9], [0, 1], [1], min_area=5)
    assert [d["category_id"] for d in segs] == [0] and (sem[:, 3] == 255).all() and seg.max() == 1
    with pytest.raises(ValueRangeError):
        panoptic_fusion(masks * 2, [1, 1], [0, 1], [1])
    with pytest.raises(ShapeError):
        panoptic_fusion(masks, [1], [0, 1], [1])
    with pytest.raises(DTypeError):
        panoptic_fusion(masks > 0, [1, 1], [0, 1], [1])
    with pytest.raises(NonFiniteError):
        panoptic_fusion(masks, [np.nan, 1], [0, 1], [1])
    with pytest.raises(ValueRangeError):
        panoptic_fusion(masks, [1, 1], [0, 255], [1])


@pytest.mark.parametrize("seed", range(5))
def test_thing_instances_match_scipy(seed):
    rng = np.random.default_rng(seed)
    sem = rng.integers(0, 4, (2, 12, 13))
    out = thing_instances(sem, [1, 3])
    for b in range(2):
        n_ref = 0
        for c in (1, 3):
            lab, n = nd_label(sem[b] == c, structure=np.ones((3, 3)))
            n_ref += n
            for i in range(1, n + 1):  # every scipy component is exactly one of ours
                ids = np.unique(out[b][lab == i])
                assert ids.size == 1 and ids[0] >= 0 and (out[b] == ids[0]).sum() == (lab == i).sum()
        assert out[b].max() + 1 == n_ref
        assert (out[b][~np.isin(sem[b], [1, 3])] == -1).all()
    with pytest.raises(DTypeError):
        thing_instances(sem.astype(float), [1])


def test_clustering_separates_and_merges():
    f = np.zeros((1, 3, 6, 8), np.float32)
    f[0, 0, :, :4] = 1.0  # two embedding groups inside one class mask
    f[0, 1, :, 4:] = 1.0
    f[0, 2] = 0.05
    sem = np.ones((1, 6, 8), np.int64)
    sem[0, 0, 0] = 0
    a = semantic_guided_clustering(f, sem, [1], delta_d=0.5, min_size=4, seed=3)
    assert a[0, 0, 0] == -1
    assert len(np.unique(a[0][sem[0] == 1])) == 2
    assert len(np.unique(a[0, :, :4][sem[0, :, :4] == 1])) == 1
    b = semantic_guided_clustering(f, sem, [1], delta_d=2.0, min_size=4, seed=3)  # merged into one
    assert np.unique(b[0][sem[0] == 1]).tolist() == [0]
    c = semantic_guided_clustering(f, sem, [1], delta_d=0.5, min_size=100)  # all too small
    assert (c == -1).all()
    assert np.array_equal(a, semantic_guided_clustering(f, sem, [1], delta_d=0.5, min_size=4, seed=3))
    with pytest.raises(NonFiniteError):
        semantic_guided_clustering(np.full((1, 3, 6, 8), np.nan, np.float32), sem, [1])
    with pytest.raises(ShapeError):
        semantic_guided_clustering(f[0], sem, [1])
    with pytest.raises(ValueRangeError):
        semantic_guided_clustering(f, sem, [1], delta_d=-1)
