"""Defects 4, 5, 6, 10, 11: bad command lines and inputs end in an rc-2 message naming the
path or value, before any work starts; never a traceback or a silently wrong run."""
from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from posthoc.bench import cli

from .conftest import bench_args


def _err(capsys):
    return capsys.readouterr().err


def test_out_that_is_a_file(data_root, tmp_path, capsys):
    f = tmp_path / "results.txt"
    f.write_text("x")
    assert cli.main(bench_args(data_root, f)) == 2
    err = _err(capsys)
    assert f"--out {f} exists and is not a folder" in err and "Traceback" not in err


def test_export_smiyc_that_is_a_file_is_refused_before_any_work(data_root, tmp_path, capsys):
    f = tmp_path / "sub.hdf5"
    f.write_text("x")
    out = tmp_path / "run"
    assert cli.main(bench_args(data_root, out, "--export-smiyc", str(f))) == 2
    assert f"--export-smiyc {f} exists and is not a folder" in _err(capsys)
    assert not out.exists()  # nothing was computed (nor created)


def test_out_under_a_file_and_unwritable_out(data_root, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert cli.main(bench_args(data_root, f / "run")) == 2
    assert f"--out {f / 'run'}" in _err(capsys)
    if os.geteuid() == 0:  # root ignores permission bits: use a folder no one can write to
        ro = "/proc"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
    assert cli.main(bench_args(data_root, ro)) == 2
    assert f"--out {ro} is not writable" in _err(capsys)


@pytest.mark.parametrize("device,msg", [
    ("tpu:7", "--device must be a torch device such as cpu, cuda or cuda:1; got 'tpu:7'"),
    ("banana", "--device must be a torch device"),
])
def test_bad_device(data_root, tmp_path, capsys, device, msg):
    assert cli.main(bench_args(data_root, tmp_path / "r", "--device", device)) == 2
    err = _err(capsys)
    assert msg in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_device_without_cuda_is_refused_not_run_on_the_cpu(data_root, tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(bench_args(data_root, out, "--device", "cuda")) == 2
    assert "--device cuda: this machine has no usable CUDA device" in _err(capsys)
    assert not (out / "results.json").exists()


def test_cpu_device_is_recorded_as_used(data_root, tmp_path):
    out = tmp_path / "r"
    assert cli.main(bench_args(data_root, out, "--device", "cpu")) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["device"] == "cpu" and set(res["device_used"].values()) == {"cpu"}


def test_empty_proposals_is_refused(data_root, tmp_path, capsys):
    args = bench_args(data_root, tmp_path / "r")
    args[args.index("_bench_grid")] = ""
    assert cli.main(args) == 2
    assert "--proposals is empty" in _err(capsys)
    args[args.index("")] = " , "
    assert cli.main(args) == 2


def test_missing_label_file_warns_by_name_and_strict_refuses(data_root, tmp_path, capsys, caplog):
    lab = data_root / "dataset_AnomalyTrack" / "labels_masks" / "test_0002_labels_semantic.png"
    lab.rename(lab.with_name("test_0002_labels_semantic.PNG"))
    out = tmp_path / "r"
    with caplog.at_level("WARNING"):
        assert cli.main(bench_args(data_root, out)) == 0
    assert "1 of 4 frames have no label file" in caplog.text
    assert "test_0002 (found test_0002_labels_semantic.PNG)" in caplog.text
    res = json.loads((out / "results.json").read_text())
    assert res["evaluations"][0]["frames_missing_label"] == ["test_0002"]
    assert cli.main(bench_args(data_root, tmp_path / "r2", "--strict")) == 2
    assert "--strict" in _err(capsys)


def test_score_teacher_on_a_one_channel_model_is_refused(data_root, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from tests.adapters.test_teachers import _export

    path = tmp_path / "one_channel.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _export(torch.nn.Conv2d(3, 1, 1).eval(), (torch.rand(1, 3, 16, 16),), path, ["image"], ["logits"])
    args = bench_args(data_root, tmp_path / "r", "--weights", str(path))
    args[args.index("_bench_fake")] = "msp"
    assert cli.main(args) == 2
    err = _err(capsys)
    assert "the 'msp' score needs (B,K,H,W) class logits with K >= 2 classes; got K=1 channel" in err
    assert "kind='anomaly'" in err


def test_threshold_dtype_flag_reaches_the_results(data_root, tmp_path):
    out = tmp_path / "r"
    assert cli.main(bench_args(data_root, out, "--threshold-dtype", "float16")) == 0
    assert json.loads((out / "results.json").read_text())["threshold_dtype"] == "float16"


@pytest.mark.parametrize("command", ["smiyc", "cityscapes", "coco-panoptic"])
def test_failed_run_leaves_no_empty_run_folder(tmp_path, capsys, command):
    """A run that fails before writing anything removes the run folder it created; a folder that
    existed before the run is kept."""
    missing = tmp_path / "no-such-data"
    out = tmp_path / "run"
    assert cli.main([command, "--data-root", str(missing), "--out", str(out), "--quiet"]) == 2
    assert str(missing) in _err(capsys)
    assert not out.exists()
    out.mkdir()
    assert cli.main([command, "--data-root", str(missing), "--out", str(out), "--quiet"]) == 2
    assert out.is_dir()
