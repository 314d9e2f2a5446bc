"""SMIYC submission files: official path layout, float16 gzip dataset 'value', checks."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from posthoc.bench import export
from posthoc.errors import DTypeError, NonFiniteError, ShapeError, ValueRangeError


def test_write_and_read_back(tmp_path, rng):
    s = rng.random((1, 1, 10, 14), dtype=np.float32)
    p = export.write_submission_frame(tmp_path, "my method/v2", "AnomalyTrack-all", "cow0000", s,
                                      image_shape=(10, 14, 3))
    assert p == tmp_path / "anomaly_p" / "my-method-v2" / "AnomalyTrack-all" / "cow0000.hdf5"
    with h5py.File(p, "r") as f:
        assert list(f.keys()) == ["value"]
        d = f["value"]
        assert d.dtype == np.float16 and d.shape == (10, 14)
        assert d.compression == "gzip" and d.compression_opts == 9
    v = export.read_submission_frame(p)
    np.testing.assert_array_equal(v, s[0, 0].astype(np.float16))
    assert not list(tmp_path.rglob("*.tmp"))


def test_torch_input_and_export_frames(tmp_path):
    t = torch.linspace(0, 1, 12).reshape(3, 4)
    paths = export.export_frames(tmp_path, "m", "ObstacleTrack-all", [("a", t), ("b", t.numpy())])
    assert [p.name for p in paths] == ["a.hdf5", "b.hdf5"]
    np.testing.assert_array_equal(export.read_submission_frame(paths[0]), t.numpy().astype(np.float16))


def test_input_not_modified(tmp_path):
    s = np.full((4, 4), 0.5, np.float32)
    s_copy = s.copy()
    export.write_submission_frame(tmp_path, "m", "d", "f", s)
    np.testing.assert_array_equal(s, s_copy)


@pytest.mark.parametrize(
    "scores,err,match",
    [
        (np.full((4, 4), 1.5, np.float32), ValueRangeError, r"\[0,1\]"),
        (np.full((4, 4), -0.1, np.float32), ValueRangeError, r"\[0,1\]"),
        (np.array([[0.1, np.nan]], np.float32), NonFiniteError, "NaN"),
        (np.zeros((2, 4, 4), np.float32), ShapeError, r"must be \(H,W\)"),
        (np.zeros((4, 4), np.uint8), DTypeError, "floating point"),
    ],
)
def test_bad_scores(tmp_path, scores, err, match):
    with pytest.raises(err, match=match):
        export.write_submission_frame(tmp_path, "m", "d", "f", scores)
    assert not list(tmp_path.rglob("*.hdf5"))


def test_shape_must_match_image(tmp_path):
    with pytest.raises(ShapeError, match="image resolution"):
        export.write_submission_frame(tmp_path, "m", "d", "f", np.zeros((4, 4), np.float32), image_shape=(4, 5))


def test_bad_names(tmp_path):
    with pytest.raises(ValueError, match="frame id"):
        export.submission_path(tmp_path, "m", "d", "../x")
    with pytest.raises(ValueError, match="method name"):
        export.method_slug("///")


def test_read_missing_value(tmp_path):
    p = tmp_path / "x.hdf5"
    with h5py.File(p, "w") as f:
        f.create_dataset("other", data=np.zeros(2))
    with pytest.raises(ValueRangeError, match="no dataset 'value'"):
        export.read_submission_frame(p)
