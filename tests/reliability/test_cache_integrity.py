"""Defects 1 and 2: the run cache never serves maps that no longer match their inputs."""
from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest

from posthoc.bench import cli
from posthoc.bench.cache import CacheCorruptError, RunCache

from .conftest import bench_args


def _results(out):
    return json.loads((out / "results.json").read_text())


def _teacher(res):
    return res["evaluations"][0]["teachers"]["_bench_fake"]


def _cache_dir(out):
    (d,) = [p for p in (out / "cache").iterdir() if p.is_dir()]
    return d


def test_replaced_image_under_the_same_root_is_recomputed(data_root, tmp_path, caplog):
    out = tmp_path / "run"
    assert cli.main(bench_args(data_root, out)) == 0
    first = _teacher(_results(out))
    assert first["frames_cached"] == 0
    # replace one frame's image: the anomaly square disappears, so its maps must change
    img_path = data_root / "dataset_AnomalyTrack" / "images" / "test_0000.png"
    img = cv2.imread(str(img_path))
    img[:] = 128
    cv2.imwrite(str(img_path), img)
    with caplog.at_level(logging.WARNING):
        assert cli.main(bench_args(data_root, out)) == 0
    second = _teacher(_results(out))
    assert second["frames_cached"] == 3  # only the changed frame was recomputed
    assert "test_0000: its input files changed" in caplog.text
    assert second["variants"]["teacher"]["ap"] != first["variants"]["teacher"]["ap"]
    # and the result equals a fresh run on the new data
    fresh = tmp_path / "fresh"
    assert cli.main(bench_args(data_root, fresh)) == 0
    assert _teacher(_results(fresh))["variants"] == second["variants"]


def test_changed_label_is_recomputed(data_root, tmp_path, caplog):
    out = tmp_path / "run"
    assert cli.main(bench_args(data_root, out)) == 0
    lab_path = data_root / "dataset_AnomalyTrack" / "labels_masks" / "test_0001_labels_semantic.png"
    lab = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED)
    lab[:8] = 255
    cv2.imwrite(str(lab_path), lab)
    with caplog.at_level(logging.WARNING):
        assert cli.main(bench_args(data_root, out)) == 0
    assert _teacher(_results(out))["frames_cached"] == 3
    assert "test_0001: its input files changed" in caplog.text


@pytest.mark.parametrize("damage", ["values", "dtype", "truncate", "delete"])
def test_tampered_cached_map_is_recomputed_with_a_warning(data_root, tmp_path, caplog, damage):
    out = tmp_path / "run"
    assert cli.main(bench_args(data_root, out)) == 0
    first = _teacher(_results(out))["variants"]
    p = _cache_dir(out) / "maps" / "teacher" / "test_0002.npy"
    m = np.load(p)
    if damage == "values":
        m = m.copy()
        m[:10] = 1.0  # same dtype, shape and range: only a checksum can tell
        np.save(p, m)
    elif damage == "dtype":
        np.save(p, m.astype(np.float32))
    elif damage == "truncate":
        p.write_bytes(p.read_bytes()[:100])
    else:
        p.unlink()
    with caplog.at_level(logging.WARNING):
        assert cli.main(bench_args(data_root, out)) == 0
    assert f"cached map {p} is not valid" in caplog.text
    res = _teacher(_results(out))
    assert res["frames_cached"] == 3
    assert res["variants"] == first  # recomputed, so the numbers are the original ones


def test_load_map_refuses_a_changed_map_by_name(tmp_path):
    cache = RunCache(tmp_path, "ev", "t", {"k": 1})
    m = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    cache.save_map("teacher", "f0", m)
    cache.mark_done("f0", ["teacher"], (3, 4), {"image": "1:ab"})
    np.testing.assert_array_equal(cache.load_map("teacher", "f0"), m.astype(np.float16))
    assert cache.is_done("f0", ["teacher"], {"image": "1:ab"})
    assert not cache.is_done("f0", ["teacher"], {"image": "2:cd"})  # inputs changed
    bad = m.astype(np.float16)
    bad[0, 0] = 0.5
    np.save(cache.map_path("teacher", "f0"), bad)
    fresh = RunCache(tmp_path, "ev", "t", {"k": 1})  # a new run reads the record from disk
    with pytest.raises(CacheCorruptError, match=r"cached map .*f0\.npy is not valid: its content differs"):
        fresh.load_map("teacher", "f0")
    assert not fresh.is_done("f0", ["teacher"], {"image": "1:ab"})


def test_mark_done_needs_every_map_written(tmp_path):
    cache = RunCache(tmp_path, "ev", "t", {"k": 1})
    cache.save_map("teacher", "f0", np.zeros((2, 2), np.float32))
    with pytest.raises(Exception, match=r"maps \['csl2'\] were not written"):
        cache.mark_done("f0", ["teacher", "csl2"], (2, 2))
