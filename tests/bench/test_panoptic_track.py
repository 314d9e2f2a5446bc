"""coco-panoptic: the panopticapi-layout reader, the synthetic panoptic world and the track end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

from posthoc.bench import panoptic_readers as pr
from posthoc.bench import panoptic_track as pt
from posthoc.bench import synthetic as syn
from posthoc.bench.cli import main
from posthoc.bench.datasets import DatasetLayoutError
from tests.reference.panoptic_pq import pq_compute_frames

SIZE = (64, 128)


def test_unknown_splits_are_mask2anomalys():
    assert pr.UNKNOWN_SPLITS[5] == ["car", "cow", "pizza", "toilet"]
    assert pr.UNKNOWN_SPLITS[10] == pr.UNKNOWN_SPLITS[5] + ["boat", "tie", "zebra", "stop sign"]
    assert pr.UNKNOWN_SPLITS[20] == pr.UNKNOWN_SPLITS[10] + ["dining table", "banana", "bicycle", "cake", "sink",
                                                             "cat", "keyboard", "bear"]


def test_id_rgb_roundtrip():
    ids = np.array([[0, 1, 255, 256], [65536, 70000, 2**24 - 1, 5]])
    assert np.array_equal(pr.rgb2id(pr.id2rgb(ids)), ids)


def test_unknown_probability_maps_threshold_to_half():
    a = np.array([0.0, 0.1, 0.2, 0.6, 1.0], np.float32)
    u = pt.unknown_probability(a, 0.2)
    assert u.tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert (np.diff(pt.unknown_probability(np.linspace(0, 1, 50), 0.7)) >= 0).all()


def _coco_folder(root, n=2):
    """A tiny COCO panoptic folder: synthetic frames, the world's classes plus three COCO classes
    (so --unknown 5 holds out car, cow, pizza, toilet), non-contiguous category ids and a crowd segment."""
    from posthoc.bench.synthetic import CLASS_NAMES, THING_IDS

    names = list(CLASS_NAMES) + ["cow", "pizza", "toilet"]
    cat_id = {nm: 3 * i + 2 for i, nm in enumerate(names)}  # not 1..N
    cats = [{"id": cat_id[nm], "name": nm, "isthing": int(i in THING_IDS or i >= len(CLASS_NAMES))}
            for i, nm in enumerate(names)]
    (root / "val2017").mkdir(parents=True)
    (root / "annotations" / "panoptic_val2017").mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        fr = syn.render_frame([7, i], SIZE, instances=True)
        fname = f"{i:012d}"
        syn._write_png(root / "val2017" / f"{fname}.png", fr.image)
        pan = np.zeros(SIZE, np.int64)
        info = []
        inst = fr.extras["instances"]
        cls = np.where(fr.label == 1, len(CLASS_NAMES), fr.classes.astype(np.int64))  # anomalies -> "cow"
        for c in np.unique(cls[(cls < 255)]).tolist():
            nm = names[c]
            m = cls == c
            thing = c in THING_IDS or c >= len(CLASS_NAMES)
            for k in (np.unique(inst[m]).tolist() if thing else [None]):
                mk = m if k is None else m & (inst == k)
                sid = 100 + len(info) * 37
                pan[mk] = sid
                info.append({"id": sid, "category_id": cat_id[nm], "iscrowd": 0, "area": int(mk.sum())})
        if i == 0:  # a crowd region of persons in the top-left corner
            pan[:6, :10] = 9999
            info.append({"id": 9999, "category_id": cat_id["person"], "iscrowd": 1, "area": 60})
            for s in info[:-1]:
                s["area"] = int((pan == s["id"]).sum())
        pr.write_panoptic_png(root / "annotations" / "panoptic_val2017" / f"{fname}.png", pan)
        images.append({"id": 1000 + i, "file_name": f"{fname}.png"})
        anns.append({"image_id": 1000 + i, "file_name": f"{fname}.png", "segments_info": info})
    (root / "annotations" / "panoptic_val2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def test_reader_maps_categories_and_crowd(tmp_path):
    root = _coco_folder(tmp_path / "coco")
    rd = pr.CocoPanopticReader(root, "val2017", pr.UNKNOWN_SPLITS[5])
    assert rd.num_known == 12 and "car" not in rd.known_names and rd.known_names[-1] == "person"
    fr = next(rd.frames())
    assert fr.crowd[:6, :10].all() and fr.crowd.sum() == 60
    assert (fr.semantic[fr.crowd] == rd.known_names.index("person")).all()
    assert set(np.unique(fr.semantic).tolist()) <= set(range(13)) | {255}
    with pytest.raises(DatasetLayoutError, match="zebra"):
        pr.CocoPanopticReader(root, "val2017", pr.UNKNOWN_SPLITS[10])
    with pytest.raises(DatasetLayoutError, match="panoptic_test"):
        pr.CocoPanopticReader(root, "test", pr.UNKNOWN_SPLITS[5])


def _official_from_export(exp, variant):
    gt = json.loads((exp / "gt" / "panoptic_gt.json").read_text())
    pd = json.loads((exp / variant / "panoptic_pred.json").read_text())
    import cv2

    def ids(p):
        return pr.rgb2id(cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))

    preds = {a["image_id"]: a for a in pd["annotations"]}
    frames = [(ids(exp / "gt" / "panoptic_gt" / a["file_name"]), a["segments_info"],
               ids(exp / variant / "panoptic_pred" / a["file_name"]), preds[a["image_id"]]["segments_info"])
              for a in gt["annotations"]]
    return pq_compute_frames(frames, {c["id"]: c for c in gt["categories"]})


def test_real_layout_end_to_end_and_export_scores_like_pq_compute(tmp_path):
    root = _coco_folder(tmp_path / "coco")
    exp = tmp_path / "exp"
    rc = main(["coco-panoptic", "--data-root", str(root), "--unknown", "5", "--proposals", "superpixels",
               "--variants", "baseline,csl2,mining", "--threshold", "0.5", "--out", str(tmp_path / "run"),
               "--export-panoptic", str(exp), "--quiet"])
    assert rc == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["unknown_classes"] == ["car", "cow", "pizza", "toilet"] and not res["synthetic"]
    for v in ("baseline", "csl2", "mining"):
        r = res["variants"][v]
        for k in pt._KEYS:
            assert k in r
        assert [row["name"] for row in r["per_class"]][-1] == "unknown" and len(r["per_class"]) == 13
        off = _official_from_export(exp, v)
        for k in ("pq", "sq", "rq"):
            assert r[k] == pytest.approx(off["All"][k], abs=1e-9)
        assert r["pq_things"] == pytest.approx(
            np.mean([off["per_class"][c]["pq"] for c, st in off["stat"].items()
                     if sum(st[1:]) and c != max(off["per_class"]) and c in
                     {x["id"] for x in json.loads((exp / "gt" / "panoptic_gt.json").read_text())["categories"]
                      if x["isthing"]}]), abs=1e-9)


def test_synthetic_world_all_variants_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTHOC_SYNTHETIC_ROOT", str(tmp_path / "syn"))
    orig = pr.ensure_panoptic_world
    monkeypatch.setattr(pt, "ensure_panoptic_world",
                        lambda split, seed: orig(split=split, seed=seed, n_frames=2, size=SIZE))
    runs = []
    for i in range(2):
        cfg = pt.PanopticConfig(proposals="superpixels", limit=2, out=str(tmp_path / f"r{i}"), progress=False)
        runs.append(pt.run_panoptic(cfg))
    a, b = runs
    assert a["synthetic"] and a["unknown_classes"] == ["anomaly"]
    assert a["threshold"]["chosen"].startswith("pixel best-F1") and set(a["threshold"]["per_variant"]) == set(
        pt.PANOPTIC_VARIANTS)
    for v in pt.PANOPTIC_VARIANTS:
        assert json.dumps(a["variants"][v], sort_keys=True) == json.dumps(b["variants"][v], sort_keys=True)
    assert a["variants"]["clustering"]["per_class"][11]["name"] == "person"
    assert a["frames_cached"] == 0
    again = pt.run_panoptic(pt.PanopticConfig(proposals="superpixels", limit=2, out=str(tmp_path / "r0"),
                                              progress=False))  # resumes from the run folder's cache
    assert again["frames_cached"] == 2
    assert json.dumps(again["variants"], sort_keys=True) == json.dumps(a["variants"], sort_keys=True)
    # the panoptic world's GT has every car, person and anomaly as its own segment
    root = orig(split="test", seed=0, n_frames=2, size=SIZE)
    meta = json.loads((root / "annotations" / "panoptic_test.json").read_text())
    cats = {c["id"]: c for c in meta["categories"]}
    assert cats[14]["name"] == "anomaly" and cats[14]["isthing"] == 1 and cats[12]["name"] == "person"
    seg_cats = [s["category_id"] for an in meta["annotations"] for s in an["segments_info"]]
    assert seg_cats.count(14) >= 1


def test_cli_errors(tmp_path, capsys):
    assert main(["coco-panoptic", "--unknown", "7"]) == 2
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["coco-panoptic", "--data-root", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["coco-panoptic", "--out", str(f), "--quiet"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["coco-panoptic", "--variants", "baseline,bogus", "--out", str(tmp_path / "o"), "--quiet"]) == 2
