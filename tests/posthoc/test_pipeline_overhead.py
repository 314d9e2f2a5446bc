"""What Pipeline skips on data it has already checked: repeated label checks, the [0,1] test before offsets."""
from __future__ import annotations

import pytest
import torch

import posthoc
from posthoc import Pipeline, Proposals
from posthoc.errors import ValueRangeError
from posthoc.validation import check_labels, label_check_memo


@pytest.fixture
def count_label_passes(monkeypatch):
    calls = []
    real = torch.aminmax

    def counting(x, *a, **k):
        if not x.is_floating_point():
            calls.append(x.numel())
        return real(x, *a, **k)

    monkeypatch.setattr(torch, "aminmax", counting)
    return calls


def test_memo_reads_a_label_map_once_and_only_inside_the_block(count_label_passes):
    lab = torch.tensor([[[0, 1], [2, -1]]])
    with label_check_memo():
        assert check_labels(lab) == 3 and check_labels(lab) == 3
        assert len(count_label_passes) == 1
        other = lab.clone()  # another tensor: checked on its own
        assert check_labels(other) == 3 and len(count_label_passes) == 2
        lab[0, 0, 0] = 5  # an in-place change bumps the version: checked again
        assert check_labels(lab) == 6 and len(count_label_passes) == 3
        lab[0, 0, 0] = -4
        with pytest.raises(ValueRangeError, match="minimum -4"):
            check_labels(lab)
    lab[0, 0, 0] = 0
    check_labels(lab)
    check_labels(lab)
    assert len(count_label_passes) == 6  # no memo outside the block


def test_memo_in_inference_mode():
    with torch.inference_mode(), label_check_memo():
        lab = torch.zeros(1, 3, 4, dtype=torch.int64)
        assert check_labels(lab) == 1 and check_labels(lab) == 1


def test_pipeline_checks_its_label_map_once(count_label_passes):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, 32, 48, generator=g)
    sem = torch.randn(2, 5, 32, 48, generator=g)
    lab = torch.randint(0, 6, (2, 32, 48), generator=g)
    props = Proposals(labels=lab, labels_final=True)
    count_label_passes.clear()
    out = Pipeline(refine=True, suppress_ids=[1, 2])(a, props, semantic_logits=sem)
    assert len(count_label_passes) == 1  # fuse, region_class_logits and refine share one check
    fused = posthoc.fuse(a, lab)
    torch.testing.assert_close(out["fused"], fused, rtol=0, atol=0)
    cls = posthoc.region_class_logits(sem, lab)
    torch.testing.assert_close(out["refined"], posthoc.refine(fused, lab, cls, [1, 2]), rtol=0, atol=0)


@pytest.mark.parametrize("fuse", [True, False])
def test_offsets_take_the_scores_as_teacher_only_in_unit_range(fuse):
    g = torch.Generator().manual_seed(1)
    lab = torch.randint(0, 4, (1, 24, 40), generator=g)
    for scale in (1.0, 3.0):  # 3.0: not probabilities, so without fusion no teacher term
        a = torch.rand(1, 1, 24, 40, generator=g) * scale
        if fuse and scale > 1:
            continue  # fuse rejects scores outside [0,1]
        out = Pipeline(fuse=fuse, offsets=True)(a, Proposals(labels=lab, labels_final=True))
        cur = out["fused"] if fuse else a
        teacher = cur if scale == 1.0 else None
        offs, conf = posthoc.offsets_from_proposals(lab, teacher=teacher)
        torch.testing.assert_close(out["offsets"], offs, rtol=0, atol=0)
        torch.testing.assert_close(out["confidence"], conf, rtol=0, atol=0)
