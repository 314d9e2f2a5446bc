"""Defects 7, 8, 9, 12, 14 and meta tensors: the ops' input rules, and the float16 threshold
of the numpy-1.x SMIYC server."""
from __future__ import annotations

import resource

import numpy as np
import pytest
import torch

import posthoc
from posthoc.errors import DeviceError, DTypeError, ValueRangeError
from posthoc.metrics import ComponentMetrics, PixelMetrics
from posthoc.metrics.component import frame_components

# ------------------------------------------------------------------ 8. one label dtype rule


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int8])
@pytest.mark.parametrize("op", ["fuse", "split_components", "offsets_from_proposals", "Proposals"])
def test_non_int32_int64_labels_are_refused_everywhere(op, dtype):
    lab = np.zeros((1, 6, 7), dtype)
    lab[0, :, 3:] = 255 if dtype == np.uint8 else 2
    x = np.random.default_rng(0).random((1, 1, 6, 7)).astype(np.float32)
    call = {
        "fuse": lambda: posthoc.fuse(x, lab),
        "split_components": lambda: posthoc.split_components(lab),
        "offsets_from_proposals": lambda: posthoc.offsets_from_proposals(lab),
        "Proposals": lambda: posthoc.Proposals(labels=lab),
    }[op]
    with pytest.raises(DTypeError, match=r"must be an int32 or int64 label map \(-1 = unassigned\); got dtype"):
        call()


# ------------------------------------------------------------------ 9. sparse or huge ids


@pytest.mark.parametrize("big", [2**40, 3 * 10**7, 2**24 - 1])
def test_sparse_and_huge_ids_work_with_frame_bounded_memory(big):
    rng = np.random.default_rng(0)
    lab = np.zeros((2, 64, 64), np.int64)
    lab[:, :, 32:] = big
    lab[:, 10:20, 10:20] = 7
    lab[1, 0, 0] = -1
    dense = np.unique(lab, return_inverse=True)[1].reshape(lab.shape) - 1  # -1 stays -1, ids keep their order
    assert dense.min() == -1
    x = rng.random((2, 3, 64, 64)).astype(np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.testing.assert_allclose(posthoc.fuse(x, lab), posthoc.fuse(x, dense), rtol=1e-6)
    np.testing.assert_array_equal(posthoc.split_components(lab), posthoc.split_components(dense))
    for a, b in zip(posthoc.offsets_from_proposals(lab), posthoc.offsets_from_proposals(dense), strict=True):
        np.testing.assert_array_equal(a, b)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB for a 64x64 frame"


def test_dense_ids_are_not_copied():
    lab = torch.tensor([[[0, 1], [2, 3]]], dtype=torch.int32)
    out, n = posthoc.validation.compact_labels(lab, 4)
    assert out is lab and n == 4


# ------------------------------------------------------------------ 12. outputs are normal tensors


def test_op_outputs_are_normal_tensors_that_can_be_edited_in_place():
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    lab = torch.zeros(1, 8, 8, dtype=torch.int64)
    lab[..., 4:] = 1
    outs = [posthoc.fuse(x, lab), posthoc.split_components(lab), *posthoc.offsets_from_proposals(lab),
            posthoc.soft_assign(torch.rand(1, 2, 8, 8), torch.rand(1, 2)),
            posthoc.offset_resample(torch.rand(1, 1, 8, 8), torch.zeros(1, 2, 8, 8), torch.ones(1, 1, 8, 8))]
    for o in outs:
        assert not o.is_inference()
        assert not o.requires_grad  # the ops are not differentiable; no graph is kept
        o.add_(0) if o.is_floating_point() else o.add_(0)  # an in-place edit works


# ------------------------------------------------------------------ meta tensors


def test_meta_tensors_are_refused_by_name():
    meta = torch.empty(1, 1, 4, 4, device="meta")
    with pytest.raises(DeviceError, match=r"model_logits is a meta tensor"):
        posthoc.fuse(meta, torch.zeros(1, 4, 4, dtype=torch.int64))
    with pytest.raises(DeviceError, match=r"labels is a meta tensor"):
        posthoc.split_components(torch.empty(1, 4, 4, dtype=torch.int64, device="meta"))
    with pytest.raises(DeviceError, match=r"is a meta tensor"):
        posthoc.offset_resample(meta, torch.zeros(1, 2, 4, 4), torch.ones(1, 1, 4, 4))


# ------------------------------------------------------------------ 7. ignore index


@pytest.mark.parametrize("cls", [PixelMetrics, ComponentMetrics])
@pytest.mark.parametrize("bad", [0, 1])
def test_ignore_index_that_is_a_class_value_is_refused(cls, bad):
    with pytest.raises(ValueRangeError, match=rf"ignore_index must not be a class value .*got {bad}"):
        cls(ignore_index=bad)
    with pytest.raises(DTypeError, match="ignore_index must be an int"):
        cls(ignore_index=2.5)
    assert cls(ignore_index=254).ignore_index == 254


# ------------------------------------------------------------------ 14. float16 threshold


def test_float16_threshold_reproduces_the_numpy1_server():
    # a threshold just below a float16 value v rounds *up* to v: the numpy-1.x server compares
    # in float16 and drops the pixels sitting exactly at v; numpy >= 2 (float64) keeps them
    v = np.float16(0.6)
    t = float(v) - 1e-5
    assert np.float16(t) == v and float(v) > t
    scores = np.zeros((40, 40), np.float16)
    scores[5:15, 5:15] = v  # a predicted blob exactly at v: a false positive
    scores[25:35, 25:35] = np.float16(0.9)
    labels = np.zeros((40, 40), np.uint8)
    labels[25:35, 25:35] = 1
    r64 = frame_components(scores, labels, t, 10, 10)
    r16 = frame_components(scores, labels, t, 10, 10, threshold_dtype="float16")
    assert len(r64["size_pred"]) == 2 and len(r16["size_pred"]) == 1
    # legacy numpy semantics written out: float16 array > float16(scalar)
    np.testing.assert_array_equal(scores > np.float16(t), scores > v)
    m64 = ComponentMetrics(t, 10, 10)
    m16 = ComponentMetrics(t, 10, 10, threshold_dtype="float16")
    for m in (m64, m16):
        m.update(scores[None], labels[None])
    assert m16.compute()["ppv"] > m64.compute()["ppv"]
    assert m16.compute()["fp_mean"] < m64.compute()["fp_mean"]
    # a threshold that rounds down (or is exact) gives the same masks either way
    t_down = float(v) + 1e-5
    assert np.float16(t_down) == v
    a = frame_components(scores, labels, t_down, 10, 10)
    b = frame_components(scores, labels, t_down, 10, 10, threshold_dtype="float16")
    assert len(a["size_pred"]) == len(b["size_pred"]) == 1
    with pytest.raises(ValueRangeError, match="threshold_dtype must be one of"):
        ComponentMetrics(0.5, threshold_dtype="float32")
