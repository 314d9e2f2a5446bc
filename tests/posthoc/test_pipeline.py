import numpy as np
import pytest
import torch

import posthoc
from posthoc import Pipeline, Proposals, ShapeError, TeacherOutput, ValueRangeError

K = 12


@pytest.fixture
def world(rng):
    B, N, H, W = 2, 5, 16, 20
    anomaly = rng.random((B, 1, H, W)).astype(np.float32)
    sem = (rng.normal(size=(B, K, H, W)) * 3).astype(np.float32)
    R = rng.random((B, N, 8, 10)).astype(np.float32)
    V = rng.random((B, N)).astype(np.float32)
    labels = rng.integers(-1, N, size=(B, H, W))
    to = TeacherOutput(scores=anomaly, kind="anomaly", class_names=["anomaly"], logits=sem)
    prop = Proposals(labels=labels, region_scores=R, validity=V)
    return to, prop


def test_pipeline_equals_functions(world):
    to, prop = world
    pl = Pipeline(refine=True, suppress_ids=range(2, 8), score_threshold=0.2, min_masks=1, offsets=True,
                  mine=True, stuff_ids=range(6), thing_ids=range(6, 12))
    out = pl(to, prop)
    H, W = to.scores.shape[-2:]
    labels = posthoc.soft_assign(prop.region_scores, prop.validity, size=(H, W))
    np.testing.assert_array_equal(out["labels"], labels)
    comps = posthoc.split_components(labels)
    np.testing.assert_array_equal(out["components"], comps)
    fused = posthoc.fuse(to.scores, comps)
    np.testing.assert_array_equal(out["fused"], fused)
    cls = posthoc.region_class_logits(to.logits, comps)
    refined = posthoc.refine(fused, comps, cls, range(2, 8), 0.2, 0.5, 1)
    np.testing.assert_array_equal(out["refined"], refined)
    assert out["refinement_mask"].shape == (2, 1, H, W)
    assert 0 < out["refinement_mask"].mean() < 1  # the test exercises a non-trivial refinement
    offs, conf = posthoc.offsets_from_proposals(comps, teacher=refined)
    np.testing.assert_array_equal(out["offsets"], offs)
    np.testing.assert_array_equal(out["confidence"], conf)
    res = posthoc.offset_resample(refined, offs, conf)
    np.testing.assert_array_equal(out["resampled"], res)
    np.testing.assert_array_equal(out["output"], res)
    mined = posthoc.mine_unknown_instances(comps, cls, range(6), range(6, 12), 0.5)
    np.testing.assert_array_equal(out["unknown_instances"], mined)


def test_pipeline_assign_modes(world):
    to, prop = world
    np.testing.assert_array_equal(Pipeline(assign="labels", split=False)(to, prop)["labels"], prop.labels)
    out = Pipeline(assign="hard", split=False)(to, prop)
    np.testing.assert_array_equal(out["labels"], posthoc.hard_assign(prop.region_scores, prop.validity, size=(16, 20)))
    np.testing.assert_array_equal(out["fused"], posthoc.fuse(to.scores, out["labels"]))
    plain = Proposals(labels=prop.labels)
    np.testing.assert_array_equal(Pipeline()(to, plain)["labels"], prop.labels)  # auto -> labels
    with pytest.raises(ValueRangeError, match=r"assign='soft'\) needs proposals with region_scores"):
        Pipeline(assign="soft")(to, plain)


def test_pipeline_raw_inputs_and_torch(world, rng):
    to, prop = world
    out = Pipeline()(to.scores, prop.labels)  # raw arrays: a label map
    np.testing.assert_array_equal(out["fused"], posthoc.fuse(to.scores, posthoc.split_components(prop.labels)))
    masks = np.stack([prop.labels == n for n in range(5)], axis=1)
    np.testing.assert_array_equal(Pipeline()(to.scores, masks)["fused"], out["fused"])
    sem = torch.from_numpy(to.logits)
    t = Pipeline(normalize="softmax", offsets=True)(sem, torch.from_numpy(prop.labels))
    assert isinstance(t["output"], torch.Tensor) and t["output"].shape == sem.shape
    # proposals with their own class/mask logits are used for refinement
    ml = rng.normal(size=(2, 5, 8, 10)).astype(np.float32) * 3
    cl = rng.normal(size=(2, 5, K + 1)).astype(np.float32)
    cl[:, :3, 4] += 10
    p2 = Proposals(labels=prop.labels, region_scores=prop.region_scores, validity=prop.validity,
                   class_logits=cl, mask_logits=ml)
    o2 = Pipeline(refine=True, suppress_ids=[4])(to, p2)
    np.testing.assert_array_equal(o2["refined"], posthoc.refine(o2["fused"], ml, cl, [4]))


def test_pipeline_errors(world):
    to, prop = world
    with pytest.raises(ValueRangeError, match="Pipeline.assign must be one of"):
        Pipeline(assign="nearest")
    with pytest.raises(ValueRangeError, match="needs stuff_ids and thing_ids"):
        Pipeline(mine=True)
    with pytest.raises(ValueRangeError, match="needs class logits"):
        Pipeline(refine=True)(to.scores, prop)
    with pytest.raises(ShapeError, match="refines anomaly maps"):
        Pipeline(refine=True)(to.logits, prop)
    with pytest.raises(ShapeError, match=r"Pipeline needs batched scores \(B,C,H,W\)"):
        Pipeline()(to.scores[0], prop)
    cfg = Pipeline(mine=True, stuff_ids=[1], thing_ids=[2]).config()
    assert cfg["stuff_ids"] == [1] and cfg["suppress_ids"] == list(range(2, 11))


def test_lazy_exports_resolve():
    for name in ("fuse", "region_means", "region_class_logits", "soft_assign", "hard_assign", "split_components",
                 "refinement_mask", "refine", "mine_unknown_instances", "offset_resample", "offsets_from_proposals",
                 "Pipeline"):
        assert callable(getattr(posthoc, name)), name
    for name in ("msp", "max_logit", "entropy", "energy", "standardized_max_logit", "fit_sml_stats",
                 "boundary_suppression", "dilated_smoothing"):
        assert callable(getattr(posthoc.scores, name)), name


@pytest.mark.gpu
def test_pipeline_cpu_equals_cuda(world):
    to, prop = world
    pl = Pipeline(offsets=True)
    cpu = pl(torch.from_numpy(to.scores), Proposals(labels=torch.from_numpy(prop.labels),
                                                    region_scores=torch.from_numpy(prop.region_scores),
                                                    validity=torch.from_numpy(prop.validity)))
    gpu = pl(torch.from_numpy(to.scores).cuda(), Proposals(labels=torch.from_numpy(prop.labels).cuda(),
                                                           region_scores=torch.from_numpy(prop.region_scores).cuda(),
                                                           validity=torch.from_numpy(prop.validity).cuda()))
    assert gpu["output"].device.type == "cuda"
    torch.testing.assert_close(gpu["output"].cpu(), cpu["output"], rtol=1e-5, atol=1e-6)


def test_pipeline_resizes_low_res_semantic_logits(world):
    to, prop = world
    low = torch.nn.functional.interpolate(torch.from_numpy(to.logits), size=(8, 10), mode="bilinear",
                                          align_corners=False)
    pl = Pipeline(refine=True, suppress_ids=range(2, 8), score_threshold=0.2, min_masks=1)
    out = pl(to.scores, prop, semantic_logits=low.numpy())
    up = torch.nn.functional.interpolate(low, size=(16, 20), mode="bilinear", align_corners=False).numpy()
    cls = posthoc.region_class_logits(up, out["components"])
    np.testing.assert_array_equal(out["refined"], posthoc.refine(out["fused"], out["components"], cls, range(2, 8),
                                                                 0.2, 0.5, 1))


def test_pipeline_uses_final_labels_as_given(world):
    """Proposals a source already assigned and split (labels_final) are neither re-assigned nor re-split."""
    to, prop = world
    lab = np.zeros(prop.labels.shape, np.int64)
    lab[:, :, ::2] = 1  # region 1 is many separate columns: a split would change it
    final = Proposals(labels=lab, region_scores=prop.region_scores, validity=prop.validity, labels_final=True)
    out = Pipeline()(to, final)
    np.testing.assert_array_equal(out["labels"], lab)
    assert "components" not in out
    np.testing.assert_array_equal(out["fused"], posthoc.fuse(to.scores, lab))
    plain = Pipeline()(to, Proposals(labels=lab))  # not final: assigned as labels, then split
    assert plain["components"].max() > 1


def test_pipeline_final_labels_must_match_the_scores(world):
    to, _ = world
    bad = Proposals(labels=np.zeros((2, 8, 10), np.int64), labels_final=True)
    with pytest.raises(ShapeError, match=r"final proposal labels must be \(B,H,W\) at the scores' resolution"):
        Pipeline()(to, bad)


def test_pipeline_without_fusion_refines_the_teacher_scores(world):
    to, prop = world
    pl = Pipeline(fuse=False, refine=True, suppress_ids=range(2, 8), score_threshold=0.2, min_masks=1)
    out = pl(to, prop)
    assert "fused" not in out
    comps = out["components"]
    cls = posthoc.region_class_logits(to.logits, comps)
    np.testing.assert_array_equal(out["refined"], posthoc.refine(to.scores, comps, cls, range(2, 8), 0.2, 0.5, 1))


def test_proposals_labels_final_must_be_bool():
    from posthoc.errors import DTypeError

    with pytest.raises(DTypeError, match="labels_final must be a bool; got int"):
        Proposals(labels=np.zeros((1, 2, 2), np.int64), labels_final=1)
