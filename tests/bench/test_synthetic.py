"""Tests of the synthetic world (posthoc.bench.synthetic)."""
import json
import os
import threading

import cv2
import numpy as np
import pytest

from posthoc.bench import synthetic as syn
from posthoc.errors import ShapeError, ValueRangeError

SMALL = (64, 128)


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_frame_is_the_readers_frame_type():
    from posthoc.bench import datasets as ds

    assert syn.Frame is ds.Frame
    fr = syn.render_frame(3, SMALL)
    assert isinstance(fr, ds.Frame)
    assert fr.id == "" and fr.extras == {}  # rendered in memory: no file id


def test_render_frame_shapes_and_domains():
    for track in ("anomaly", "obstacle"):
        fr = syn.render_frame(3, SMALL, track=track)
        assert fr.image.shape == (*SMALL, 3) and fr.image.dtype == np.uint8
        assert fr.label.shape == SMALL and fr.label.dtype == np.uint8
        assert fr.classes.shape == SMALL and fr.classes.dtype == np.uint8
        assert set(np.unique(fr.label)) <= {0, 1, 255}
        cls = np.unique(fr.classes)
        assert set(cls[cls != 255]) <= set(range(len(syn.CLASS_NAMES)))
        # anomalies are 255 in the class map, and every anomaly pixel is 1 in the label map
        assert np.all(fr.classes[fr.label == 1] == 255)
        # in-distribution pixels carry a class
        assert np.all(fr.classes[fr.label == 0] != 255)


def test_render_is_deterministic_and_seed_dependent():
    a = syn.render_frame([0, 1, 2], (96, 160))
    b = syn.render_frame([0, 1, 2], (96, 160))
    c = syn.render_frame([0, 1, 3], (96, 160))
    for name in ("image", "label", "classes"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.image, c.image)


def test_any_size_and_train_frames_have_no_anomaly():
    for size in [(16, 16), (33, 71), (200, 120)]:
        fr = syn.render_frame(1, size, anomalies=False)
        assert fr.image.shape[:2] == size
        assert not (fr.label == 1).any()


def test_anomalies_present_and_scene_has_variety():
    n_anom = 0
    classes_seen = set()
    for i in range(12):
        fr = syn.render_frame([5, i], (128, 256))
        n_anom += int((fr.label == 1).any())
        classes_seen |= set(np.unique(fr.classes).tolist())
    assert n_anom >= 10  # nearly every test frame carries an anomaly
    # road, sidewalk, building, vegetation, sky, car, person all occur
    assert {0, 1, 2, 8, 10, 11, 12} <= classes_seen


def test_obstacles_lie_on_the_road():
    hits = 0
    for i in range(10):
        fr = syn.render_frame([7, i], (128, 256), track="obstacle")
        obst = fr.label == 1
        if not obst.any():
            continue
        hits += 1
        # the evaluation region is the road: everything in-distribution is road
        assert np.all(fr.classes[fr.label == 0] == syn.ROAD)
        # the bottom row of each obstacle touches road pixels just below it
        n, lab = cv2.connectedComponents(obst.astype(np.uint8), connectivity=8)
        for k in range(1, n):
            ys, xs = np.nonzero(lab == k)
            y = ys.max()
            below = fr.classes[min(y + 2, fr.classes.shape[0] - 1), xs[ys == y]]
            near_road = (fr.classes[y:y + 4, max(xs.min() - 3, 0):xs.max() + 4] == syn.ROAD).any()
            assert near_road or (below == syn.ROAD).any()
    assert hits >= 8


def test_anomaly_track_void_is_the_hood():
    fr = syn.render_frame(11, (128, 256))
    void = fr.label == 255
    if void.any():
        ys = np.nonzero(void)[0]
        assert ys.min() > 0.8 * 128  # only at the bottom of the frame


def test_ensure_world_layout_cache_and_determinism(tmp_path):
    root = tmp_path / "w"
    d = syn.ensure_world(root, split="val", track="anomaly", n_frames=3, size=SMALL, seed=4)
    assert d == root / "val" / "dataset_AnomalyTrack"
    meta = json.loads((d / "world.json").read_text())
    assert meta["class_names"] == list(syn.CLASS_NAMES)
    assert meta["seed"] == 4 and meta["ids"] == ["val_0000", "val_0001", "val_0002"]
    for fid in meta["ids"]:
        img = cv2.imread(str(d / "images" / f"{fid}.png"), cv2.IMREAD_UNCHANGED)
        sem = cv2.imread(str(d / "labels_masks" / f"{fid}_labels_semantic.png"), cv2.IMREAD_UNCHANGED)
        cls = cv2.imread(str(d / "labels_masks" / f"{fid}_labels_classes.png"), cv2.IMREAD_UNCHANGED)
        assert img.shape == (*SMALL, 3) and sem.shape == SMALL and cls.shape == SMALL
        assert sem.dtype == np.uint8 and set(np.unique(sem)) <= {0, 1, 255}
    # round trip matches the renderer
    fid, fr = next(syn.iter_frames(d))
    assert fid == fr.id == "val_0000"
    assert syn.load_frame(d, "val_0002").id == "val_0002"
    ref = syn.render_frame(syn._frame_seed(meta["config"], 0), SMALL, track="anomaly")
    np.testing.assert_array_equal(fr.image, ref.image)
    np.testing.assert_array_equal(fr.label, ref.label)
    np.testing.assert_array_equal(fr.classes, ref.classes)

    before = _files(d)
    mtime = (d / "world.json").stat().st_mtime_ns
    assert syn.ensure_world(root, split="val", track="anomaly", n_frames=3, size=SMALL, seed=4) == d
    assert (d / "world.json").stat().st_mtime_ns == mtime  # cached: nothing rewritten

    # same config in another root: byte-identical files
    d2 = syn.ensure_world(tmp_path / "other", split="val", track="anomaly", n_frames=3, size=SMALL, seed=4)
    assert _files(d2) == before

    # a different config replaces the folder; no temp folders are left behind
    d3 = syn.ensure_world(root, split="val", track="anomaly", n_frames=2, size=SMALL, seed=5)
    assert d3 == d and json.loads((d / "world.json").read_text())["seed"] == 5
    assert len(list((d / "images").iterdir())) == 2
    assert [p.name for p in (root / "val").iterdir()] == ["dataset_AnomalyTrack"]


def test_ensure_world_repairs_incomplete_folder(tmp_path):
    d = syn.ensure_world(tmp_path, split="test", track="obstacle", n_frames=2, size=SMALL)
    (d / "images" / "test_0001.png").unlink()
    d = syn.ensure_world(tmp_path, split="test", track="obstacle", n_frames=2, size=SMALL)
    assert (d / "images" / "test_0001.png").is_file()


def test_ensure_world_concurrent_writers(tmp_path):
    errors, out = [], []

    def job():
        try:
            out.append(syn.ensure_world(tmp_path, split="test", track="anomaly", n_frames=2, size=SMALL))
        except Exception as e:
            errors.append(e)

    ts = [threading.Thread(target=job) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert len(set(out)) == 1
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == ["dataset_AnomalyTrack"]
    assert syn._complete(out[0], syn.world_config(split="test", track="anomaly", n_frames=2, size=SMALL))


def test_default_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("POSTHOC_SYNTHETIC_ROOT", str(tmp_path))
    assert syn.default_root() == tmp_path
    # the default config lives at <root>/<split>; any other size/count in its own sub-root
    assert syn.world_root(None, syn.world_config(split="val")) == tmp_path
    d = syn.ensure_world(split="val", track="obstacle", n_frames=1, size=SMALL)
    assert d.parent.parent.parent == tmp_path and d.parent.parent.name.startswith("custom-")
    assert d.parent.name == "val" and d.name == "dataset_ObstacleTrack"
    assert not (tmp_path / "val").exists()  # the default world's folder is untouched
    d2 = syn.ensure_world(split="val", track="obstacle", n_frames=2, size=SMALL)
    assert d2 != d and d.is_dir()  # a second custom config does not evict the first
    assert syn.ensure_world(tmp_path / "x", split="val", n_frames=1, size=SMALL) == tmp_path / "x" / "val" / \
        "dataset_AnomalyTrack"  # an explicit root is used as given
    monkeypatch.delenv("POSTHOC_SYNTHETIC_ROOT")
    assert syn.default_root() == os.path.join(os.path.expanduser("~"), ".cache", "posthoc", "synthetic") or \
        str(syn.default_root()).endswith(os.path.join(".cache", "posthoc", "synthetic"))


def test_defaults():
    assert syn.DEFAULT.size == (256, 512)
    assert set(syn.DEFAULT.n_frames) == {"train", "val", "test"}
    cfg = syn.world_config(split="val")
    assert cfg["n_frames"] == syn.DEFAULT.n_frames["val"] and cfg["size"] == [256, 512]
    assert syn.world_config(split="train")["anomalies"] is False


@pytest.mark.parametrize(
    "kw, exc, msg",
    [
        ({"split": "dev"}, syn.SyntheticWorldError, "split must be one of"),
        ({"track": "lost"}, syn.SyntheticWorldError, "track must be one of"),
        ({"size": (8, 200)}, ShapeError, "at least (16, 16)"),
        ({"size": "big"}, ShapeError, "size must be (H, W)"),
        ({"n_frames": 0}, ValueRangeError, "n_frames must be a positive int"),
        ({"seed": -1}, ValueRangeError, "seed must be a non-negative int"),
    ],
)
def test_bad_arguments(tmp_path, kw, exc, msg):
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
        syn.ensure_world(tmp_path, **kw)
    assert not (tmp_path / "test").exists() or not any((tmp_path / "test").iterdir())


def test_iter_frames_bad_folder(tmp_path):
    with pytest.raises(syn.SyntheticWorldError, match="expected world.json"):
        list(syn.iter_frames(tmp_path))
    (tmp_path / "world.json").write_text(json.dumps({"ids": ["x"]}))
    with pytest.raises(syn.SyntheticWorldError, match="could not read"):
        list(syn.iter_frames(tmp_path))
