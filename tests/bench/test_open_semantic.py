"""streethazards: open-set semantic metrics (miou_known, open_miou) on a tiny real-layout folder."""
from __future__ import annotations

import json

import numpy as np
import pytest

from posthoc.bench import synthetic as syn
from posthoc.bench.cli import main
from posthoc.bench.open_semantic import gt_open_classes

SIZE = (64, 128)


def _streethazards(root, n=2):
    for split, seed in (("test", 5), ("validation", 6)):
        img_dir = root / split / "images" / split / "t5"
        ann_dir = root / split / "annotations" / split / "t5"
        img_dir.mkdir(parents=True)
        ann_dir.mkdir(parents=True)
        for i in range(n):
            fr = syn.render_frame([seed, i], SIZE)
            ann = np.where(fr.classes < 13, fr.classes.astype(np.int64) + 1, 0)
            ann[fr.label == 1] = 14
            syn._write_png(img_dir / f"{i:03d}.png", fr.image)
            syn._write_png(ann_dir / f"{i:03d}.png", ann.astype(np.uint8))
    return root


def test_gt_open_classes():
    assert gt_open_classes(np.array([0, 1, 13, 14, 15, 255])).tolist() == [255, 0, 12, 13, 255, 255]


def _run(tmp_path, *extra):
    root = _streethazards(tmp_path / "sh")
    out = tmp_path / "run"
    rc = main(["streethazards", "--data-root", str(root), "--teacher", "obsnet", "--proposals", "superpixels",
               "--variants", "teacher,csl2", "--no-plots", "--quiet", "--out", str(out), *extra])
    assert rc == 0
    return json.loads((out / "results.json").read_text())


def test_open_set_keys_threshold_on_validation(tmp_path):
    res = _run(tmp_path)
    t = res["evaluations"][0]["teachers"]["obsnet"]
    assert t["open_set"]["computed"] and "validation" in t["open_set"]["threshold"]
    for m in t["variants"].values():
        assert 0.0 <= m["open_miou"] <= 1.0 and 0.0 < m["miou_known"] <= 1.0
        assert 0.0 <= m["open_threshold"] <= 1.0
        assert "ap" in m  # the anomaly numbers are still there
    assert t["variants"]["teacher"]["miou_known"] == t["variants"]["csl2@superpixels"]["miou_known"]
    md = (tmp_path / "run" / "results.md").read_text()
    assert "open-mIoU" in md and f"{100 * t['variants']['teacher']['open_miou']:.1f}" in md


def test_open_miou_matches_a_direct_computation(tmp_path):
    """With --open-threshold 1.0 nothing but exact-1 scores is unknown: open-IoU of class c is then
    its IoU in the 14x14 confusion matrix of (teacher argmax, GT with the anomaly class)."""
    import torch

    from posthoc.bench.config import build_adapter
    from posthoc.bench.datasets import read_image, read_label_png
    from tests.reference.metrics import semantic_iou_reference

    res = _run(tmp_path, "--open-threshold", "1.0")
    m = res["evaluations"][0]["teachers"]["obsnet"]["variants"]["teacher"]
    teacher = build_adapter("teacher", "obsnet")
    preds, gts = [], []
    base = tmp_path / "sh" / "test"
    for i in range(2):
        img = read_image(base / "images" / "test" / "t5" / f"{i:03d}.png")
        out = teacher(img[None])
        a = out.anomaly[0, 0].numpy().astype(np.float16)
        sem = torch.as_tensor(out.logits).argmax(1)[0].numpy()
        preds.append(np.where(a >= 1.0, 13, sem))
        gts.append(gt_open_classes(read_label_png(base / "annotations" / "test" / "t5" / f"{i:03d}.png")))
    iou = semantic_iou_reference(np.stack(preds), np.stack(gts), 14, 255)
    assert m["open_miou"] == pytest.approx(np.nanmean(np.asarray(iou)[:13]), abs=1e-9)


def test_bad_open_threshold(tmp_path, capsys):
    root = _streethazards(tmp_path / "sh", n=1)
    assert main(["streethazards", "--data-root", str(root), "--open-threshold", "2", "--quiet",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--open-threshold" in capsys.readouterr().err


def test_synthetic_world_without_data_root(tmp_path, monkeypatch):
    """No --data-root: the synthetic world in the StreetHazards layout, the threshold from its val split."""
    from posthoc.bench import evaluations
    from posthoc.bench.datasets import StreetHazardsReader, read_label_png
    from posthoc.bench.synthetic_streethazards import ensure_streethazards_world

    monkeypatch.setenv("POSTHOC_SYNTHETIC_ROOT", str(tmp_path / "syn"))
    monkeypatch.delenv("POSTHOC_DATA_ROOT", raising=False)
    monkeypatch.delenv("POSTHOC_STREETHAZARDS_ROOT", raising=False)
    calls = []

    def small(split, seed):
        calls.append((split, seed))
        return ensure_streethazards_world(split=split, seed=seed, n_frames=2, size=SIZE)

    monkeypatch.setattr(evaluations, "_synthetic_streethazards", small)
    out = tmp_path / "run"
    rc = main(["streethazards", "--teacher", "obsnet", "--proposals", "superpixels", "--variants", "teacher,csl2",
               "--no-plots", "--quiet", "--out", str(out)])
    assert rc == 0 and calls == [("test", 0), ("val", 0)]
    res = json.loads((out / "results.json").read_text())
    ev = res["evaluations"][0]
    assert ev["synthetic"] and "SYNTHETIC WORLD" in ev["title"] and ev["frames_labelled"] == 2
    t = ev["teachers"]["obsnet"]
    assert t["open_set"]["computed"] and "validation" in t["open_set"]["threshold"]
    for m in t["variants"].values():
        assert 0.0 <= m["open_miou"] <= 1.0 and 0.0 < m["miou_known"] <= 1.0 and "ap" in m
    md = (out / "results.md").read_text()
    assert "SYNTHETIC WORLD" in md and "open-mIoU" in md
    # the layout is the real reader's, the labels are the world's (class + 1, 14 at anomalies, 0 at the hood)
    folder = small("test", 0)
    rd = StreetHazardsReader(folder, "test")
    track = syn.ensure_world(split="test", track="anomaly", n_frames=2, size=SIZE)
    fr = syn.load_frame(track, "test_0000")
    ann = read_label_png(folder / "annotations" / "test" / "world" / "test_0000.png")
    assert [r.id for r in rd.refs] == ["world_test_0000", "world_test_0001"]
    assert (ann[fr.label == 1] == 14).all() and (fr.label == 1).any()
    known = fr.classes < 13
    assert (ann[known] == fr.classes[known] + 1).all() and (ann[~known & (fr.label != 1)] == 0).all()
    assert np.array_equal(rd.load(rd.refs[0]).label, fr.label)
    assert (folder / "images" / "test" / "world" / "test_0000.png").read_bytes() == (
        track / "images" / "test_0000.png").read_bytes()
