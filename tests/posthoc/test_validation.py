"""posthoc.validation: the one module of input checks, and one error type per condition."""
import numpy as np
import pytest
import torch

import posthoc
from posthoc import kernels as K
from posthoc import validation as V
from posthoc.errors import DeviceError, DTypeError, NonFiniteError, OverlapError, ShapeError, ValueRangeError


def test_finite_and_range_checks():
    x = torch.tensor([[0.0, 0.25], [1.0, 0.5]])
    assert V.finite_range(x, "x") == (0.0, 1.0)
    assert V.finite_range(torch.arange(3), "x") is None  # not float
    assert V.finite_range(torch.zeros(0), "x") is None
    V.check_finite(x, "x")
    V.check_range(x, "x", 0.0, 1.0)
    V.check_range(torch.zeros(0, 3), "x", 5.0, 6.0)
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        bad = x.to(dt).clone()
        bad[0, 0] = float("nan")
        bad[1, 1] = float("-inf")
        with pytest.raises(NonFiniteError,
                           match=r"^x must be finite; got 1 NaN and 1 Inf values in a tensor of shape \(2,2\)$"):
            V.check_finite(bad, "x")
        with pytest.raises(NonFiniteError, match="x must be finite"):
            V.check_range(bad, "x", 0.0, 1.0)
    with pytest.raises(ValueRangeError, match=r"^p must lie in \[0,0\.5\]; got values in \[0,1\]$"):
        V.check_range(x, "p", 0.0, 0.5)
    # integer and bool tensors are range-checked too (they cannot be non-finite)
    V.check_range(torch.tensor([0, 3]), "ids", 0, 3)
    with pytest.raises(ValueRangeError, match=r"^ids must lie in \[0,2\]; got values in \[0,3\]$"):
        V.check_range(torch.tensor([0, 3]), "ids", 0, 2)
    with pytest.raises(ValueRangeError, match=r"got values in \[0,1\]"):
        V.check_range(torch.tensor([True, False]), "m", 0, 0)
    assert str(V.range_error("a", 0, 1)) == "a must lie in [0,1]"


def test_range_message_is_shared_by_the_kernels():
    """The kernels' fused checks and validation.check_range word the error identically."""
    x = np.array([[0.2, 1.5], [-0.25, 0.5]], np.float32)
    with pytest.raises(ValueRangeError) as a:
        V.check_range(torch.from_numpy(x), "probs", 0, 1)
    for be in ("torch", "numba"):
        if be not in K.available_backends("cpu"):
            continue
        with pytest.raises(ValueRangeError) as b:
            K.check_values(x, 0, 1, name="probs", backend=be)
        assert str(a.value) == str(b.value)
    with pytest.raises(ValueRangeError) as c:
        K.region_fuse(x[None, None], np.zeros((1, 2, 2), np.int32), 1, value_range=(0, 1), backend="torch")
    assert str(c.value) == str(a.value)


def test_labels_and_label_range():
    assert V.check_labels(torch.tensor([[-1, 0], [4, 2]])) == 5
    assert V.check_labels(torch.full((2, 3), -1)) == 0
    assert V.check_labels(torch.zeros(0, 3, dtype=torch.int64)) == 0
    with pytest.raises(ValueRangeError, match=r"^lab must be >= -1 \(-1 = unassigned\); got minimum -3$"):
        V.check_labels(torch.tensor([-3, 0]), "lab")
    with pytest.raises(DTypeError, match="lab must be an int32 or int64 label map"):
        V.check_labels(torch.tensor([0.0]), "lab")
    with pytest.raises(DTypeError, match=r"lab must be an int32 or int64 label map .*uint8.*255"):
        V.check_labels(torch.tensor([0, 255], dtype=torch.uint8), "lab")
    V.check_label_range(torch.tensor([-1, 0, 2]), 3)
    with pytest.raises(ValueRangeError,
                       match=r"^labels must lie in \[-1,1\] \(-1 = unassigned, num_regions=2\); "
                       r"got values in \[-1,2\]$"):
        V.check_label_range(torch.tensor([-1, 0, 2]), 2)
    assert V.as_int_labels(torch.zeros(2, dtype=torch.uint8)).dtype == torch.int64
    lab = torch.zeros(2, dtype=torch.int32)
    assert V.as_int_labels(lab) is lab


def test_as_label_map_and_masks():
    scores = torch.zeros(2, 3, 4, 5)
    lab = torch.zeros(2, 4, 5, dtype=torch.int32)
    lab[1, 2, 3] = 6
    out, n = V.as_label_map(lab, scores, batched=True, return_n=True)
    assert n == 7 and out is lab  # dense labels pass through without a copy
    with pytest.raises(DTypeError, match=r"labels must be an int32 or int64 label map .*int16"):
        V.as_label_map(lab.to(torch.int16), scores, batched=True)
    masks = torch.zeros(2, 2, 4, 5, dtype=torch.bool)
    masks[:, 0, 0] = True
    masks[:, 1, 1] = True
    out, n = V.as_label_map(masks, scores, batched=True, return_n=True)
    assert n == 2 and out[:, 0].eq(0).all() and out[:, 1].eq(1).all() and out[:, 2:].eq(-1).all()
    with pytest.raises(OverlapError, match="5 pixels covered by 2 or more masks"):
        V.masks_to_labels(torch.ones(1, 2, 1, 5, dtype=torch.bool))
    with pytest.raises(ShapeError,
                       match=r"^labels must be \(B,H,W\)=\(2,4,5\) matching scores \(2,3,4,5\); got \(2,4,6\)"):
        V.as_label_map(torch.zeros(2, 4, 6, dtype=torch.int64), scores, batched=True)
    with pytest.raises(DeviceError, match=r"^labels is a meta tensor \(shape \(2,4,5\), no data\)"):
        V.as_label_map(torch.zeros(2, 4, 5, dtype=torch.int64, device="meta"), scores, batched=True)
    prop = posthoc.Proposals(labels=np.zeros((2, 4, 5), np.int64))
    assert V.as_label_map(prop, scores, batched=True).shape == (2, 4, 5)
    # masks_to_labels used to live in fusion and is still importable from there
    from posthoc.fusion import masks_to_labels

    assert masks_to_labels is V.masks_to_labels


def test_to_device_and_check_size():
    ref = torch.zeros(3)
    x = torch.ones(3)
    assert V.to_device(x, False, ref, "x", "ref") is x
    with pytest.raises(DeviceError, match=r"^x must be on the device of ref \(cpu\); got meta$"):
        V.to_device(torch.ones(3, device="meta"), False, ref, "x", "ref")
    assert V.to_device(torch.ones(3), True, torch.zeros(3, device="meta"), "x", "ref").device.type == "meta"
    assert V.check_size(None, (2, 3)) == (2, 3)
    assert V.check_size([np.int64(4), 5.0], (2, 3)) == (4, 5)
    for bad in ((0, 3), (2.5, 3), (True, 3), "ab", 7, (1, 2, 3)):
        with pytest.raises(ShapeError, match=r"size must be a pair \(H,W\) of positive ints or None"):
            V.check_size(bad, (2, 3))


def test_every_device_mismatch_is_a_device_error():
    p = torch.rand(1, 2, 3, 4)
    meta_lab = torch.zeros(1, 3, 4, dtype=torch.int64, device="meta")
    # a meta tensor is refused before any device comparison
    with pytest.raises(DeviceError, match=r"^labels is a meta tensor"):
        K.region_fuse(p, meta_lab, 1)
    with pytest.raises(DeviceError, match=r"^labels is a meta tensor"):
        K.region_sums(p, meta_lab, 1)
    with pytest.raises(DeviceError, match=r"^out is a meta tensor"):
        K.region_fuse(p, torch.zeros(1, 3, 4, dtype=torch.int64), 1, out=torch.empty(1, 2, 3, 4, device="meta"))
    with pytest.raises(DeviceError, match=r"^validity is a meta tensor"):
        K.weighted_argmax(p, torch.rand(1, 2, device="meta"))
    with pytest.raises(DeviceError, match="validity is a meta tensor"):
        posthoc.soft_assign(p, torch.rand(1, 2, device="meta"))
    with pytest.raises(DeviceError, match="labels is a meta tensor"):
        posthoc.region_means(p, meta_lab)


def test_bad_size_is_a_shape_error_everywhere():
    r = torch.rand(1, 2, 3, 4)
    v = torch.rand(1, 2)
    cls = torch.randn(1, 2, 5)
    for fn in (
        lambda s: posthoc.soft_assign(r, v, size=s),
        lambda s: posthoc.hard_assign(r, v, size=s),
        lambda s: posthoc.assign_labels(r, v, size=s),
        lambda s: posthoc.refinement_mask(torch.randn(1, 2, 3, 4), cls, size=s),
        lambda s: posthoc.refinement_mask(torch.zeros(1, 3, 4, dtype=torch.int64), cls, size=s),
        lambda s: posthoc.mine_unknown_instances(torch.randn(1, 2, 3, 4), cls, [0], [1], size=s),
    ):
        for bad in ((0, 3), ("a", 3), 5):
            with pytest.raises(ShapeError, match="size must be a pair"):
                fn(bad)


def test_labels_are_read_once_on_the_way_to_the_kernel(monkeypatch):
    """fuse/region_means/region_class_logits check the labels once; direct kernel calls still check."""
    import posthoc.kernels._torch as KT

    calls = []
    real = KT.check_label_range

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(KT, "check_label_range", counting)
    x = torch.rand(1, 2, 3, 4)
    lab = torch.zeros(1, 3, 4, dtype=torch.int64)
    lab[0, 1:] = 1
    posthoc.fuse(x, lab, backend="torch")
    posthoc.fuse(x[:, :1], lab, backend="torch")
    posthoc.region_means(x, lab, backend="torch")
    posthoc.region_class_logits(x, lab, backend="torch")
    assert calls == []
    K.region_fuse(x, lab, 2, backend="torch")
    K.region_sums(x, lab, 2, backend="torch")
    assert len(calls) == 2
    with pytest.raises(ValueRangeError, match=r"labels must lie in \[-1,0\]"):
        K.region_fuse(x, lab, 1, backend="torch")
    with pytest.raises(ValueRangeError, match=r"num_regions must exceed the largest label \(1\); got 1"):
        posthoc.region_means(x, lab, num_regions=1, backend="torch")
    bad = lab.clone()
    bad[0, 0, 0] = -2
    with pytest.raises(ValueRangeError, match=r"proposals must be >= -1"):
        posthoc.fuse(x, bad, backend="torch")
