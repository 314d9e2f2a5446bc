"""The training scripts run end to end on a tiny world and export models that honour the bundled contract.

Each script runs for 2 steps on 8 generated train frames, in a temporary folder (never the
bundled one), so this checks the plumbing (data, losses, export, logs), not model quality.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, tmp: Path, *args: str) -> None:
    env = dict(os.environ, POSTHOC_SYNTHETIC_ROOT=str(tmp / "world"), POSTHOC_TRAIN_DIR=str(tmp / "train"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--out", str(tmp / "out"), *args],
        check=False, cwd=tmp, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _io(path: Path) -> tuple[list[str], list[str]]:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [i.name for i in s.get_inputs()], [o.name for o in s.get_outputs()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    small = ("--n-train", "8", "--max-steps", "2", "--batch-size", "4")
    _run("train_segnet.py", tmp, *small)
    _run("train_obsnet.py", tmp, *small)
    _run("train_csl_rpn.py", tmp, *small)
    return tmp / "out"


def test_scripts_export_the_contracted_models(trained):
    assert _io(trained / "segnet.onnx") == (["image"], ["logits", "features"])
    ins, outs = _io(trained / "observer.onnx")
    assert set(ins) == {"image", "features"} and outs == ["logit"]
    ins, outs = _io(trained / "csl_rpn.onnx")
    assert ins == ["image"] and set(outs) == {"region_scores", "validity"}
    log = json.loads((trained / "training_log.json").read_text())
    assert {"segnet", "obsnet", "csl_rpn"} <= set(log)
    assert log["segnet"].get("steps") == 2


def test_exported_rpn_gives_probabilities(trained):
    s = ort.InferenceSession(str(trained / "csl_rpn.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(1, 3, 128, 256)).astype(np.float32)
    r, v = s.run(["region_scores", "validity"], {"image": x})
    assert r.ndim == 4 and v.shape == r.shape[:2]
    assert 0.0 <= r.min() and r.max() <= 1.0 and 0.0 <= v.min() and v.max() <= 1.0


@pytest.mark.slow
def test_calibration_script_writes_stats_and_manifest(trained):
    _run("train_calibration.py", trained.parent, "--frames", "8")
    manifest = json.loads((trained / "manifest.json").read_text())
    assert {"obsnet", "sml", "msp", "maxlogit", "energy", "csl"} <= set(manifest)
    for f in ("sml_stats.json", "maxlogit_calibration.json", "energy_calibration.json"):
        assert json.loads((trained / f).read_text())
