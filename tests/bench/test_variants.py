"""The benchmark's variants are posthoc.Pipeline's stage outputs, and adapters get only the
settings they take."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import posthoc
from posthoc.bench.config import BenchError, build_adapter
from posthoc.bench.variants import VariantMaps, suppress_choice, variant_chain
from posthoc.types import Proposals, TeacherOutput


def _batch(seed=0, b=2, h=24, w=32, k=5):
    g = torch.Generator().manual_seed(seed)
    anomaly = torch.rand(b, 1, h, w, generator=g)
    logits = 3 * torch.randn(b, k, h, w, generator=g)
    yy, xx = np.mgrid[0:h, 0:w]
    lab = torch.from_numpy(((yy // 6) * 10 + xx // 8).astype(np.int64)).expand(b, h, w).contiguous()
    return anomaly, TeacherOutput(anomaly, "anomaly", ["anomaly"], logits=logits), lab


def test_chain_keys_and_order():
    chain = variant_chain(["teacher", "csl2", "refine", "offsets"], ["a", "b"])
    assert [v.key for v in chain] == [
        "teacher", "csl2@a", "csl2+refine@a", "csl2+refine+offsets@a", "csl2@b", "csl2+refine@b",
        "csl2+refine+offsets@b",
    ]
    assert [v.key for v in variant_chain(["teacher", "offsets"], ["a"])] == ["teacher", "offsets@a"]


@pytest.mark.parametrize("final", [True, False])
def test_variant_maps_equal_a_direct_pipeline_call(final):
    anomaly, t_out, lab = _batch()
    props = Proposals(labels=lab, labels_final=final)
    chain = variant_chain(["teacher", "csl2", "refine", "offsets"], ["src"])
    maps = VariantMaps(chain, suppress_ids=[1, 2])(anomaly, t_out, {"src": props})
    ref = posthoc.Pipeline(refine=True, offsets=True, suppress_ids=[1, 2])(anomaly, props, semantic_logits=t_out.logits)
    torch.testing.assert_close(maps["teacher"], anomaly, rtol=0, atol=0)
    torch.testing.assert_close(maps["csl2@src"], ref["fused"], rtol=0, atol=0)
    torch.testing.assert_close(maps["csl2+refine@src"], ref["refined"], rtol=0, atol=0)
    torch.testing.assert_close(maps["csl2+refine+offsets@src"], ref["resampled"], rtol=0, atol=0)
    # and the functions by hand
    fused = posthoc.fuse(anomaly, lab)
    torch.testing.assert_close(maps["csl2@src"], fused, rtol=0, atol=0)


def test_chain_without_csl2_refines_the_teacher_map():
    anomaly, t_out, lab = _batch(1)
    chain = variant_chain(["refine"], ["s"])
    maps = VariantMaps(chain)(anomaly, t_out, {"s": Proposals(labels=lab, labels_final=True)})
    cls = posthoc.region_class_logits(t_out.logits, lab)
    torch.testing.assert_close(maps["refine@s"], posthoc.refine(anomaly, lab, cls), rtol=0, atol=0)


def test_refine_without_class_logits_is_a_bench_error():
    anomaly, _, lab = _batch()
    t_out = TeacherOutput(anomaly, "anomaly", ["anomaly"])
    with pytest.raises(BenchError, match="variant 'refine' needs class logits: proposal source 's'"):
        VariantMaps(variant_chain(["csl2", "refine"], ["s"]))(anomaly, t_out, {"s": Proposals(labels=lab)})


def test_suppress_choice_reads_names():
    class T:
        semantic_class_names = ["road", "building", "car", "sky"]

    ids, how = suppress_choice(T())
    assert ids == [1, 3] and "building" in how
    ids, how = suppress_choice(object())
    assert ids is None and "default Cityscapes" in how


def test_build_adapter_device_where_supported_and_unknown_keywords(caplog):
    with caplog.at_level(logging.WARNING):
        src = build_adapter("proposals", "superpixels", device="cpu")
    assert src is not None and "does not apply" in caplog.text and "superpixels" in caplog.text
    with pytest.raises(BenchError, match="does not take the setting 'bogus'"):
        build_adapter("proposals", "superpixels", bogus=1)
    with pytest.raises(BenchError, match="unknown proposal source 'nope'; known proposal sources: .*superpixels"):
        build_adapter("proposals", "nope")
