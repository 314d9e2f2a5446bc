"""The semantic tracks (cityscapes / acdc / dark-zurich / coco-stuff / pascal-voc) on tiny real layouts."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from posthoc.bench.cli import main
from posthoc.bench.semantic_readers import (
    CITYSCAPES_TRAIN_CLASSES,
    COCO_STUFF_CLASSES,
    COCO_STUFF_UNSEEN,
    LABELID_TO_TRAINID,
)
from posthoc.bench.semantic_track import region_vote
from tests.reference import cityscapes_eval as ref

H, W = 24, 32


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, arr)
    assert ok
    path.write_bytes(buf.tobytes())


def _blocks(rng, ids, h=H, w=W):
    """A label map of random rectangles drawn from ``ids``."""
    lab = np.full((h, w), ids[0], np.uint8)
    for _ in range(6):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        lab[y:y + rng.integers(3, 12), x:x + rng.integers(3, 14)] = rng.choice(ids)
    return lab


def _cityscapes(root: Path, rng, n=3, teacher_dir: Path | None = None):
    gts, preds = [], []
    for i in range(n):
        city = "frankfurt" if i < 2 else "lindau"
        stem = f"{city}_{i:06d}_000019"
        gt = _blocks(rng, [7, 8, 11, 21, 23, 26, 0, 4, 9, 24])
        img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        _png(root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", img)
        _png(root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", gt)
        tr = LABELID_TO_TRAINID[gt].astype(np.int64)
        pred = np.where((tr == 255) | (rng.random((H, W)) < 0.3), rng.integers(0, 19, (H, W)), tr)
        if teacher_dir is not None:
            teacher_dir.mkdir(parents=True, exist_ok=True)
            np.save(teacher_dir / f"{stem}.npy", pred.astype(np.int64))
        gts.append(gt)
        preds.append(pred)
    return gts, preds


def test_cityscapes_miou_equals_official_transcription(tmp_path):
    rng = np.random.default_rng(0)
    gts, preds = _cityscapes(tmp_path / "cs", rng, teacher_dir=tmp_path / "teach")
    rc = main(["cityscapes", "--data-root", str(tmp_path / "cs"), "--teacher", str(tmp_path / "teach"),
               "--variants", "teacher", "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    m = res["evaluations"][0]["teachers"]["teach"]["variants"]["teacher"]
    want = ref.evaluate(gts, preds)
    assert m["miou"] == pytest.approx(want["miou"], abs=1e-12)
    for name in CITYSCAPES_TRAIN_CLASSES:
        got, exp = m["iou"][name], want["iou"][name]
        assert (got is None and math.isnan(exp)) or got == pytest.approx(exp, abs=1e-12), name
    assert set(m) >= {"miou", "iou", "fwiou", "macc", "pacc"}
    assert list(m["iou"]) == list(CITYSCAPES_TRAIN_CLASSES)


def test_cityscapes_all_variants_and_pseudo_labels(tmp_path):
    rng = np.random.default_rng(1)
    _cityscapes(tmp_path / "cs", rng, n=2, teacher_dir=tmp_path / "teach")
    # float scores (logits) as the precomputed teacher
    for p in (tmp_path / "teach").glob("*.npy"):
        ids = np.load(p)
        np.save(p, (np.eye(19, dtype=np.float32)[ids].transpose(2, 0, 1) * 3 + rng.normal(0, 1, (19, H, W)))
                .astype(np.float32))
    rc = main(["cityscapes", "--data-root", str(tmp_path / "cs"), "--teacher", str(tmp_path / "teach"),
               "--proposals", "superpixels", "--out", str(tmp_path / "run"), "--quiet",
               "--export-pseudo-labels", str(tmp_path / "pl"), "--pseudo-threshold", "top:50"])
    assert rc == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    t = res["evaluations"][0]["teachers"]["teach"]
    assert list(t["variants"]) == ["teacher", "csl2@superpixels", "csl2+offsets@superpixels", "vote@superpixels"]
    assert 0 <= t["proposal_quality"]["superpixels"]["miou"] <= 1
    d = tmp_path / "pl" / "cityscapes" / "teach"
    pngs = sorted(d.glob("*.png"))
    assert len(pngs) == 2 and len(list(d.glob("*_confidence.npy"))) == 2
    lab = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
    conf = np.load(d / (pngs[0].stem + "_confidence.npy"))
    assert lab.shape == (H, W) and conf.dtype == np.float16
    kept = (lab != 255).mean()
    assert 0.2 < kept < 0.9  # top:50 keeps about half of each class
    assert json.loads((d / "pseudo_labels.json").read_text())["variant"] == "csl2@superpixels"


def test_region_vote_against_loop():
    rng = np.random.default_rng(2)
    pred = rng.integers(0, 4, (2, 9, 11))
    lab = rng.integers(-1, 5, (2, 9, 11))
    out = region_vote(pred, lab, 4)
    for b in range(2):
        for r in range(5):
            m = lab[b] == r
            if m.any():
                assert (out[b][m] == np.bincount(pred[b][m], minlength=4).argmax()).all()
        assert (out[b][lab[b] < 0] == pred[b][lab[b] < 0]).all()


def test_region_vote_bad_input():
    from posthoc.bench.config import BenchError

    pred = np.zeros((1, 4, 4), np.int64)
    with pytest.raises(BenchError, match="both be"):
        region_vote(pred, np.zeros((1, 4, 5), np.int64), 3)
    with pytest.raises(BenchError, match=r"\[0,2\]"):
        region_vote(pred + 3, np.zeros((1, 4, 4), np.int64), 3)
    ok = pred.copy()
    ok[0, 0, 0] = 255  # the ignore id never votes and is not out of range
    assert region_vote(ok, np.zeros((1, 4, 4), np.int64), 3, ignore=255)[0, 1, 1] == 0


@pytest.mark.parametrize("case", ["bad_id", "k_mismatch", "no_gt", "bad_layout"])
def test_cityscapes_bad_input(tmp_path, capsys, case):
    rng = np.random.default_rng(3)
    root = tmp_path / "cs"
    _cityscapes(root, rng, n=1, teacher_dir=tmp_path / "teach")
    if case == "bad_id":
        p = next((root / "gtFine").rglob("*.png"))
        _png(p, np.full((H, W), 40, np.uint8))
        want = "Cityscapes label ids 0..33"
    elif case == "k_mismatch":
        p = next((tmp_path / "teach").glob("*.npy"))
        np.save(p, np.zeros((5, H, W), np.float32))
        want = "must be (19,"
    elif case == "no_gt":
        for p in (root / "gtFine").rglob("*.png"):
            p.unlink()
        want = "no label file"
    else:
        root = tmp_path / "empty"
        root.mkdir()
        want = "leftImg8bit/val/<city>/<stem>_leftImg8bit.png"
    rc = main(["cityscapes", "--data-root", str(root), "--teacher", str(tmp_path / "teach"), "--variants", "teacher",
               "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 2
    assert want in capsys.readouterr().err


def test_acdc_and_dark_zurich_layouts(tmp_path):
    rng = np.random.default_rng(4)
    for ds, img_t, gt_t in (
        ("acdc", "rgb_anon/fog/val/GOPR0475/{s}_rgb_anon.png", "gt/fog/val/GOPR0475/{s}_gt_labelIds.png"),
        ("dark-zurich", "rgb_anon/val/night/GOPR0356/{s}_rgb_anon.png", "gt/val/night/GOPR0356/{s}_gt_labelIds.png"),
    ):
        root = tmp_path / ds
        stem = "GOPR0356_frame_000321"
        gt = _blocks(rng, [7, 8, 21, 23])
        _png(root / img_t.format(s=stem), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        _png(root / gt_t.format(s=stem), gt)
        td = tmp_path / f"t-{ds}"
        td.mkdir()
        np.save(td / f"{stem}.npy", LABELID_TO_TRAINID[gt].astype(np.int64) % 19)
        rc = main([ds, "--data-root", str(root), "--teacher", str(td), "--variants", "teacher",
                   "--out", str(tmp_path / f"run-{ds}"), "--quiet"])
        assert rc == 0
        m = json.loads((tmp_path / f"run-{ds}" / "results.json").read_text())["evaluations"][0]
        assert m["teachers"][td.name]["variants"]["teacher"]["miou"] == pytest.approx(1.0)


def test_pascal_voc_and_coco_stuff_zs3(tmp_path):
    rng = np.random.default_rng(5)
    # PASCAL VOC: background (0) is ignored, class i -> i-1
    voc = tmp_path / "VOC2012"
    ids = ["2007_000033", "2007_000042"]
    for fid in ids:
        gt = _blocks(rng, [0, 15, 17, 16, 3, 255])
        _png(voc / "JPEGImages" / f"{fid}.jpg", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        _png(voc / "SegmentationClass" / f"{fid}.png", gt)
        (tmp_path / "tv").mkdir(exist_ok=True)
        np.save(tmp_path / "tv" / f"{fid}.npy", np.where((gt > 0) & (gt < 255), gt.astype(np.int64) - 1, 0))
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    assert main(["pascal-voc", "--data-root", str(voc), "--teacher", str(tmp_path / "tv"), "--variants", "teacher",
                 "--out", str(tmp_path / "rv"), "--quiet"]) == 0
    m = json.loads((tmp_path / "rv" / "results.json").read_text())["evaluations"][0]["teachers"]["tv"]
    m = m["variants"]["teacher"]
    assert m["miou"] == pytest.approx(1.0) and m["hiou"] == pytest.approx(1.0)
    assert {"miou_seen", "miou_unseen", "hiou"} <= set(m)
    # COCO-Stuff (detectron2 stuffthingmaps): one seen and one unseen class, half right
    coco = tmp_path / "coco"
    road, person = COCO_STUFF_CLASSES.index("road"), COCO_STUFF_CLASSES.index("person")
    assert "road" in COCO_STUFF_UNSEEN and len(COCO_STUFF_CLASSES) == 171 and len(COCO_STUFF_UNSEEN) == 15
    gt = np.full((H, W), person, np.uint8)
    gt[:, W // 2:] = road
    _png(coco / "images" / "val2017" / "000000000139.jpg", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    _png(coco / "stuffthingmaps_detectron2" / "val2017" / "000000000139.png", gt)
    (tmp_path / "tc").mkdir()
    pred = np.full((H, W), person, np.int64)
    np.save(tmp_path / "tc" / "000000000139.npy", pred)
    assert main(["coco-stuff", "--data-root", str(coco), "--teacher", str(tmp_path / "tc"), "--variants", "teacher",
                 "--out", str(tmp_path / "rc"), "--quiet"]) == 0
    m = json.loads((tmp_path / "rc" / "results.json").read_text())["evaluations"][0]["teachers"]["tc"]
    m = m["variants"]["teacher"]
    assert m["miou_seen"] == pytest.approx(0.5) and m["miou_unseen"] == pytest.approx(0.0) and m["hiou"] == 0.0


def test_bad_pseudo_threshold_and_variant(tmp_path, capsys):
    assert main(["cityscapes", "--pseudo-threshold", "top:0", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "top:P" in capsys.readouterr().err
    assert main(["cityscapes", "--variants", "refine", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "teacher,csl2,offsets,vote" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--shard", "1/3"], ["--export-smiyc", "x"], ["--metric-mode", "exact"],
                                   ["--strict"], ["--threshold-dtype", "float16"]])
def test_anomaly_only_flags_are_refused(tmp_path, capsys, flags):
    assert main(["cityscapes", *flags, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert flags[0] in err and "not supported by the semantic tracks" in err
    assert not (tmp_path / "r").exists()


@pytest.fixture
def small_world(tmp_path, monkeypatch):
    """A tiny synthetic world (48x96, 2 frames per split) in a private root."""
    import functools

    from posthoc.bench import synthetic as syn

    monkeypatch.setenv("POSTHOC_SYNTHETIC_ROOT", str(tmp_path / "world"))
    monkeypatch.setattr(syn, "ensure_world", functools.partial(syn.ensure_world, size=(48, 96), n_frames=2))
    return syn


@pytest.mark.parametrize("command", ["cityscapes", "acdc", "dark-zurich"])
def test_da_tracks_on_the_synthetic_world(tmp_path, small_world, command):
    rc = main([command, "--proposals", "superpixels", "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    tgt, src = res["evaluations"]
    assert tgt["synthetic"] and "target domain" in tgt["title"] and src["key"] == f"{command}-source"
    t = tgt["teachers"]["daformer"]
    assert set(t["variants"]) == {"teacher", "csl2@superpixels", "csl2+offsets@superpixels", "vote@superpixels"}
    assert list(src["teachers"]["daformer"]["variants"]) == ["teacher"]
    assert "| daformer | teacher |" in res["markdown"] and "Proposal quality" in res["markdown"]


def test_target_domain_frames_differ_and_source_world_is_unchanged(small_world):
    from posthoc.bench.synthetic import world_config

    assert "domain" not in world_config(split="val")
    a = small_world.ensure_world(split="val")
    b = small_world.ensure_world(split="val", domain="night")
    assert a != b
    ia = cv2.imread(str(a / "images" / "val_0000.png"))
    ib = cv2.imread(str(b / "images" / "val_0000.png"))
    assert ib.mean() < ia.mean()  # night is darker
    assert json.loads((b / "world.json").read_text())["config"]["domain"] == "night"


@pytest.mark.parametrize("command", ["pascal-voc", "coco-stuff"])
def test_zs3_tracks_on_the_synthetic_world(tmp_path, small_world, command):
    from posthoc.adapters.bundled import bundled_names

    if "zegformer" not in bundled_names():
        pytest.skip("the bundled zero-shot teacher is not built")
    rc = main([command, "--proposals", "superpixels", "--variants", "teacher,csl2,vote", "--out",
               str(tmp_path / "run"), "--quiet"])
    assert rc == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    (ev,) = res["evaluations"]
    m = ev["teachers"]["zegformer"]["variants"]["csl2@superpixels"]
    assert {"miou_seen", "miou_unseen", "hiou"} <= set(m)
    assert ev["seen"] and "wall" not in ev["seen"]
