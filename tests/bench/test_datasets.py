"""Data-set readers on tiny folders in the real layouts (written by the tests)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from posthoc.bench import datasets as ds


def _write_img(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix
    params = [cv2.IMWRITE_JPEG_QUALITY, 100] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    assert ok
    path.write_bytes(buf.tobytes())


def _write_lab(path: Path, lab: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", lab)
    assert ok
    path.write_bytes(buf.tobytes())


def _img(rng, h=12, w=16):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _raw(rng, values, h=12, w=16):
    return rng.choice(np.asarray(values, np.uint8), size=(h, w))


# ---------------------------------------------------------------------------------- SMIYC


def _smiyc(root: Path, rng, track="anomaly", ext="jpg", ids=("validation0000", "validation0001"), unlabeled=()):
    tdir = root / ("dataset_AnomalyTrack" if track == "anomaly" else "dataset_ObstacleTrack")
    raws = {}
    for fid in list(ids) + list(unlabeled):
        _write_img(tdir / "images" / f"{fid}.{ext}", _img(rng))
    for fid in ids:
        raw = _raw(rng, [0, 1, 255, 7])
        raws[fid] = raw
        _write_lab(tdir / "labels_masks" / f"{fid}_labels_semantic.png", raw)
    return tdir, raws


def test_smiyc_anomaly_track_reads_official_layout(tmp_path, rng):
    tdir, raws = _smiyc(tmp_path, rng, "anomaly", "jpg", unlabeled=("cow0000",))
    r = ds.SMIYCReader(tmp_path, "anomaly")
    assert r.name == "AnomalyTrack-all" and r.track == "anomaly" and r.root == tdir
    frames = list(r)
    assert [f.id for f in frames] == ["cow0000", "validation0000", "validation0001"]
    assert frames[0].label is None  # hidden test frame
    f = frames[1]
    assert f.image.dtype == np.uint8 and f.image.shape == (12, 16, 3)
    raw = raws["validation0000"]
    want = np.full(raw.shape, 255, np.uint8)
    want[raw == 0] = 0
    want[raw == 1] = 1  # 7 (unknown id) -> void, as the official DatasetRA
    np.testing.assert_array_equal(f.label, want)
    assert r.has_labels


def test_smiyc_obstacle_webp_and_subsets(tmp_path, rng):
    ids = ("curvy-street_0001", "snowstorm1_0002", "validation_0003")
    _smiyc(tmp_path, rng, "obstacle", "webp", ids=ids)
    r = ds.SMIYCReader(tmp_path, "obstacle")
    assert r.name == "ObstacleTrack-all" and len(r) == 3
    assert r[0].image.shape == (12, 16, 3)
    assert r[0].classes is None and r[0].id == r.ids[0]  # no class maps in this layout
    assert ds.SMIYCReader(tmp_path, "obstacle", subset="test").ids == ["curvy-street_0001"]
    assert ds.SMIYCReader(tmp_path, "obstacle", subset="validation").ids == ["validation_0003"]


def test_smiyc_png_image_pixels_roundtrip_and_extras(tmp_path, rng):
    tdir = tmp_path / "test" / "dataset_AnomalyTrack"
    img = _img(rng)
    _write_img(tdir / "images" / "test_0000.png", img)
    _write_lab(tdir / "labels_masks" / "test_0000_labels_semantic.png", np.zeros((12, 16), np.uint8))
    classes = rng.integers(0, 5, (12, 16), dtype=np.uint8)
    _write_lab(tdir / "labels_masks" / "test_0000_labels_classes.png", classes)
    # the synthetic-world layout <root>/<split>/dataset_AnomalyTrack
    r = ds.SMIYCReader(tmp_path, "anomaly", split="test")
    fr = next(iter(r))
    np.testing.assert_array_equal(fr.image, img)  # RGB order kept
    np.testing.assert_array_equal(fr.classes, classes)
    assert fr.extras == {}
    # the track folder itself works too
    assert ds.SMIYCReader(tdir, "anomaly").ids == ["test_0000"]


def test_smiyc_missing_folder_shows_layout_and_listing(tmp_path):
    (tmp_path / "something_else").mkdir()
    with pytest.raises(ds.DatasetLayoutError) as ei:
        ds.SMIYCReader(tmp_path, "anomaly")
    msg = str(ei.value)
    assert "dataset_AnomalyTrack/images" in msg and "labels_semantic.png" in msg
    assert "something_else/" in msg  # what was found
    assert isinstance(ei.value, FileNotFoundError)


def test_smiyc_empty_images_folder(tmp_path):
    (tmp_path / "dataset_AnomalyTrack" / "images").mkdir(parents=True)
    with pytest.raises(ds.DatasetLayoutError, match="found no frames"):
        ds.SMIYCReader(tmp_path, "anomaly")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="track must be"):
        ds.SMIYCReader(tmp_path, "road")
    with pytest.raises(ValueError, match="subset must be"):
        ds.SMIYCReader(tmp_path, "anomaly", subset="train")
    with pytest.raises(ValueError, match="unknown data set"):
        ds.resolve_root("cityscapes")


def test_corrupt_image_names_the_file(tmp_path, rng):
    tdir, _ = _smiyc(tmp_path, rng, ids=("validation0000",))
    bad = tdir / "images" / "validation0000.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    r = ds.SMIYCReader(tmp_path)
    with pytest.raises(ds.CorruptFileError, match="validation0000.jpg"):
        list(r)


def test_corrupt_and_mismatched_label(tmp_path, rng):
    tdir, _ = _smiyc(tmp_path, rng, ids=("validation0000", "validation0001"))
    (tdir / "labels_masks" / "validation0000_labels_semantic.png").write_bytes(b"")
    _write_lab(tdir / "labels_masks" / "validation0001_labels_semantic.png", np.zeros((5, 5), np.uint8))
    r = ds.SMIYCReader(tmp_path)
    with pytest.raises(ds.CorruptFileError, match="validation0000_labels_semantic.png"):
        r[0]
    with pytest.raises(ds.CorruptFileError, match=r"must be \(12, 16\)"):
        r[1]


def test_colour_label_is_rejected(tmp_path, rng):
    tdir, _ = _smiyc(tmp_path, rng, ids=("validation0000",))
    lab = tdir / "labels_masks" / "validation0000_labels_semantic.png"
    _ok, buf = cv2.imencode(".png", rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    lab.write_bytes(buf.tobytes())
    with pytest.raises(ds.CorruptFileError, match="single-channel"):
        ds.SMIYCReader(tmp_path)[0]


# ---------------------------------------------------------------------------- LostAndFound


def _laf(root: Path, rng, split="test"):
    frames = {
        "01_Hanns_Klemm_Str_45_000000_000080": [0, 1, 2, 100, 200, 201],
        "01_Hanns_Klemm_Str_45_000006_000010": [0, 1, 5],  # NoKnown excludes this sequence
        "04_Maurener_Weg_8_000000_000030": [0],  # all-zero label source: invalid frame
        "15_Rechbergstr_Deckenpfronn_000001_000020": [1, 3],  # NoKnown excludes
    }
    raws = {}
    for fid, vals in frames.items():
        scene = fid.split("_")[0] + "_" + "_".join(fid.split("_")[1:-2])
        _write_img(root / "leftImg8bit" / split / scene / f"{fid}_leftImg8bit.png", _img(rng))
        raw = _raw(rng, vals)
        raws[fid] = raw
        _write_lab(root / "gtCoarse" / split / scene / f"{fid}_gtCoarse_labelIds.png", raw)
    return raws


def test_laf_remap_and_invalid_frames(tmp_path, rng):
    raws = _laf(tmp_path, rng)
    r = ds.LostAndFoundReader(tmp_path)
    assert r.name == "LostAndFound-test" and r.track == "obstacle" and len(r) == 4
    frames = {f.id: f for f in r}
    assert "04_Maurener_Weg_8_000000_000030" not in frames  # skipped: no valid label pixel
    fid = "01_Hanns_Klemm_Str_45_000000_000080"
    raw = raws[fid]
    want = np.full(raw.shape, 255, np.uint8)
    want[raw == 1] = 0
    want[(raw >= 2) & (raw <= 200)] = 1
    np.testing.assert_array_equal(frames[fid].label, want)
    assert (frames[fid].label[raw == 201] == 255).all() and (frames[fid].label[raw == 0] == 255).all()


def test_laf_noknown(tmp_path, rng):
    _laf(tmp_path, rng)
    r = ds.LostAndFoundReader(tmp_path, no_known=True)
    assert r.ids == ["01_Hanns_Klemm_Str_45_000000_000080", "04_Maurener_Weg_8_000000_000030"]


def test_laf_errors(tmp_path, rng):
    with pytest.raises(ds.DatasetLayoutError, match="leftImg8bit/test"):
        ds.LostAndFoundReader(tmp_path)
    _laf(tmp_path, rng)
    next((tmp_path / "gtCoarse").rglob("*labelIds.png")).unlink()
    with pytest.raises(ds.DatasetLayoutError, match="gtCoarse_labelIds.png"):
        ds.LostAndFoundReader(tmp_path)
    with pytest.raises(ValueError, match="split must be"):
        ds.LostAndFoundReader(tmp_path, "val")


# ----------------------------------------------------------------------------- Fishyscapes


@pytest.mark.parametrize(
    "subset,folder,imgs,labs",
    [("laf", "fs_lost_found", "images", "labels_masks"), ("static", "Static", "original", "labels")],
)
def test_fishyscapes_layouts(tmp_path, rng, subset, folder, imgs, labs):
    raw = _raw(rng, [0, 1, 255])
    _write_img(tmp_path / folder / imgs / "0007.png", _img(rng))
    _write_lab(tmp_path / folder / labs / "0007.png", raw)
    r = ds.FishyscapesReader(tmp_path, subset)
    fr = next(iter(r))
    assert fr.id == "0007"
    np.testing.assert_array_equal(fr.label, raw)
    assert r.name == ("FishyLAF-val" if subset == "laf" else "FishyStatic-val")


def test_fishyscapes_missing_labels(tmp_path, rng):
    _write_img(tmp_path / "fs_static" / "images" / "0001.png", _img(rng))
    with pytest.raises(ds.DatasetLayoutError, match="labels_masks"):
        ds.FishyscapesReader(tmp_path, "static")
    (tmp_path / "fs_static" / "labels_masks").mkdir()
    with pytest.raises(ds.DatasetLayoutError, match="no label for image"):
        ds.FishyscapesReader(tmp_path, "static")


# ---------------------------------------------------------------------------- Road Anomaly


def test_road_anomaly_original_layout(tmp_path, rng):
    raw = _raw(rng, [0, 1, 2])
    _write_img(tmp_path / "RoadAnomaly_jpg" / "frames" / "animals01_calves.jpg", _img(rng))
    _write_lab(tmp_path / "RoadAnomaly_jpg" / "frames" / "animals01_calves.labels" / "labels_semantic.png", raw)
    r = ds.RoadAnomalyReader(tmp_path)
    fr = next(iter(r))
    assert fr.id == "animals01_calves"
    np.testing.assert_array_equal(fr.label, (raw == 2).astype(np.uint8))


def test_road_anomaly_converted_layout_and_missing(tmp_path, rng):
    raw = _raw(rng, [0, 1, 255])
    _write_img(tmp_path / "images" / "a.jpg", _img(rng))
    _write_lab(tmp_path / "labels_masks" / "a.png", raw)
    np.testing.assert_array_equal(next(iter(ds.RoadAnomalyReader(tmp_path))).label, raw)
    with pytest.raises(ds.DatasetLayoutError, match="labels_semantic.png"):
        ds.RoadAnomalyReader(tmp_path / "nope")


# --------------------------------------------------------------------------- StreetHazards


def test_streethazards_remap(tmp_path, rng):
    raw = _raw(rng, [0, 1, 5, 13, 14])
    _write_img(tmp_path / "test" / "images" / "test" / "t5" / "300.png", _img(rng))
    _write_lab(tmp_path / "test" / "annotations" / "test" / "t5" / "300.png", raw)
    r = ds.StreetHazardsReader(tmp_path)
    fr = next(iter(r))
    assert fr.id == "t5_300"
    want = np.zeros(raw.shape, np.uint8)
    want[raw == 14] = 1
    want[raw == 0] = 255
    np.testing.assert_array_equal(fr.label, want)


def test_streethazards_missing_annotation(tmp_path, rng):
    _write_img(tmp_path / "test" / "images" / "test" / "t6" / "1.png", _img(rng))
    with pytest.raises(ds.DatasetLayoutError, match="annotation"):
        ds.StreetHazardsReader(tmp_path)


# ---------------------------------------------------------------------------------- roots


def test_resolve_root_env(tmp_path, monkeypatch):
    monkeypatch.delenv("POSTHOC_DATA_ROOT", raising=False)
    for v in ds.ENV_VARS.values():
        monkeypatch.delenv(v, raising=False)
    assert ds.resolve_root("smiyc") is None
    monkeypatch.setenv("POSTHOC_DATA_ROOT", str(tmp_path))
    (tmp_path / "dataset_LostAndFound").mkdir()
    assert ds.resolve_root("laf") == tmp_path / "dataset_LostAndFound"
    assert ds.resolve_root("smiyc") == tmp_path
    monkeypatch.setenv("POSTHOC_LAF_ROOT", str(tmp_path / "x"))
    assert ds.resolve_root("laf") == tmp_path / "x"
    assert ds.resolve_root("laf", tmp_path / "y") == tmp_path / "y"


def test_get_dataset_without_root(monkeypatch):
    monkeypatch.delenv("POSTHOC_DATA_ROOT", raising=False)
    monkeypatch.delenv("POSTHOC_STREETHAZARDS_ROOT", raising=False)
    with pytest.raises(ds.DatasetLayoutError, match="POSTHOC_STREETHAZARDS_ROOT"):
        ds.get_dataset("streethazards")


def test_reader_does_not_modify_and_returns_fresh_arrays(tmp_path, rng):
    _smiyc(tmp_path, rng, ids=("validation0000",))
    r = ds.SMIYCReader(tmp_path)
    a, b = r[0], r[0]
    a.label[:] = 7
    assert not np.array_equal(a.label, b.label)
