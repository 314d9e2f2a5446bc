"""The peer variants (objectomaly, ugains, maskomaly) in the benchmark: keys, maps, skips and errors."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import posthoc
from posthoc import peers
from posthoc.bench.config import PEERS, VARIANTS, BenchConfig, BenchError
from posthoc.bench.runner import _peer_plan
from posthoc.bench.variants import VariantMaps, variant_chain
from posthoc.types import Proposals
from tests.bench.test_variants import _batch


def test_peer_keys_sit_beside_the_chain_and_old_keys_stay():
    assert VARIANTS[:4] == ("teacher", "csl2", "refine", "offsets") and VARIANTS[4:] == PEERS
    chain = variant_chain(list(VARIANTS), ["a", "b"], {"maskomaly": ["a"], "ugains": True})
    assert [v.key for v in chain] == [
        "teacher", "csl2@a", "csl2+refine@a", "csl2+refine+offsets@a", "objectomaly@a", "maskomaly@a",
        "csl2@b", "csl2+refine@b", "csl2+refine+offsets@b", "objectomaly@b", "ugains",
    ]
    assert [v.key for v in variant_chain(["teacher", "csl2", "refine", "offsets"], ["a"])] == [
        "teacher", "csl2@a", "csl2+refine@a", "csl2+refine+offsets@a"]


def test_peer_maps_equal_the_core_ops():
    anomaly, t_out, lab = _batch(2)
    g = torch.Generator().manual_seed(0)
    r = torch.rand(2, 4, 12, 16, generator=g)
    v = torch.rand(2, 4, generator=g)
    props = Proposals(labels=lab, region_scores=r, validity=v)
    chain = variant_chain(["teacher", "csl2", "objectomaly", "maskomaly"], ["s"])
    maps = VariantMaps(chain)(anomaly, t_out, {"s": props})
    ref = posthoc.Pipeline(fuse=True, refine=False, offsets=False)(anomaly, props)
    torch.testing.assert_close(maps["csl2@s"], ref["fused"], rtol=0, atol=0)
    torch.testing.assert_close(maps["objectomaly@s"], peers.objectomaly(anomaly, ref["components"]), rtol=0, atol=0)
    want = peers.maskomaly(r, torch.stack([v, 1 - v], -1), size=(24, 32))
    torch.testing.assert_close(maps["maskomaly@s"], want, rtol=0, atol=0)
    # objectomaly alone (no csl2 selected) uses the same labels
    m2 = VariantMaps(variant_chain(["objectomaly"], ["s"]))(anomaly, t_out, {"s": props})
    torch.testing.assert_close(m2["objectomaly@s"], maps["objectomaly@s"], rtol=0, atol=0)


def test_maskomaly_on_a_source_without_masks_and_ugains_without_sam():
    anomaly, t_out, lab = _batch()
    with pytest.raises(BenchError, match="maskomaly' needs raw masks"):
        VariantMaps(variant_chain(["maskomaly"], ["s"]))(anomaly, t_out, {"s": Proposals(labels=lab)})
    with pytest.raises(BenchError, match="--sam-checkpoint"):
        VariantMaps(variant_chain(["ugains"], ["s"]))


def test_peer_plan_skips_by_default_and_errors_when_asked(caplog, tmp_path):
    cfg = BenchConfig(variants=list(VARIANTS))
    with caplog.at_level(logging.INFO, logger="posthoc.bench.runner"):
        plan = _peer_plan(cfg, ["csl", "superpixels"])
    assert plan == {"ugains": False, "maskomaly": ["csl"]}
    assert "skipping variant 'ugains'" in caplog.text and "'superpixels'" in caplog.text
    with pytest.raises(BenchError, match="variant 'ugains' cannot run: .*--sam-checkpoint"):
        _peer_plan(BenchConfig(variants=["ugains"], variants_explicit=True), ["csl"])
    with pytest.raises(BenchError, match="variant 'maskomaly' cannot run"):
        _peer_plan(BenchConfig(variants=["maskomaly"], variants_explicit=True), ["superpixels"])
    with pytest.raises(BenchError, match="not a file"):
        _peer_plan(BenchConfig(variants=["ugains"], sam_checkpoint=str(tmp_path)), ["csl"])


def test_ugains_variant_with_a_tiny_sam():
    pytest.importorskip("segment_anything")
    from tests.adapters.test_proposals import _tiny_sam

    anomaly, t_out, lab = _batch(3)
    images = np.random.default_rng(0).integers(0, 255, (2, 24, 32, 3), dtype=np.uint8)
    sam = _tiny_sam()
    maps = VariantMaps(variant_chain(["teacher", "ugains"], ["s"]), sam=sam)(
        anomaly, t_out, {"s": Proposals(labels=lab)}, images=images)
    from posthoc.adapters.proposals_sam import sam_point_predictor

    torch.testing.assert_close(maps["ugains"], peers.ugains(anomaly, sam_point_predictor(sam, images)))


def test_cli_explicit_peer_that_cannot_run_exits_2(tmp_path, capsys):
    from posthoc.bench import cli

    rc = cli.main(["smiyc", "--teacher", "msp", "--proposals", "superpixels", "--variants", "teacher,maskomaly",
                   "--limit", "1", "--no-plots", "--quiet", "--out", str(tmp_path / "r")])
    assert rc == 2 and "maskomaly" in capsys.readouterr().err
