"""Report tables, verdicts, plots and atomic I/O helpers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from posthoc.adapters import io as _io
from posthoc.bench import report


def _m(ap, fpr, **kw):
    return {"ap": ap, "fpr95": fpr, "auroc": 0.9, "siou_gt": 0.3, "ppv": 0.4, "f1_mean": 0.2, **kw}


@pytest.mark.parametrize(
    "ap,fpr,want",
    [(0.6, 0.2, "helps"), (0.6, 0.4, "mixed"), (0.4, 0.2, "mixed"), (0.5, 0.3, "does not help"),
     (0.4, 0.5, "does not help")],
)
def test_verdict(ap, fpr, want):
    assert report.verdict(_m(0.5, 0.3), _m(ap, fpr)) == want


def test_verdict_with_missing_values():
    assert report.verdict({"ap": None, "fpr95": None}, _m(0.5, 0.3)) == "n/a"
    assert report.verdict({"ap": 0.5}, {"ap": 0.6, "fpr95": float("nan")}) == "helps"


def test_format_table_deltas_and_title():
    base = _m(0.5, 0.3)
    rows = [
        {"teacher": "obsnet", "variant": "alone", "metrics": base, "base": None},
        {"teacher": "obsnet", "variant": "+CSL2 [csl]", "metrics": _m(0.55, 0.25), "base": base},
        {"teacher": "obsnet", "variant": "+CSL2 +refine [csl]", "metrics": _m(0.45, 0.35, siou_gt=None), "base": base},
    ]
    md = report.format_table("SMIYC on the SYNTHETIC WORLD — SMIYC mode", rows, notes=["note line"])
    lines = md.splitlines()
    assert lines[0] == "### SMIYC on the SYNTHETIC WORLD — SMIYC mode"
    assert lines[2].startswith("| teacher | variant | AP | FPR95 | AUROC | sIoU | PPV | mean F1 | vs teacher |")
    assert "| obsnet | alone | 50.0 | 30.0 | 90.0 | 30.0 | 40.0 | 20.0 | — |" in md
    assert "55.0 (+5.0) | 25.0 (-5.0)" in md and "| helps |" in md
    assert "| does not help |" in md and "n/a" in md
    assert md.rstrip().endswith("note line")


def test_plots_and_overlay(tmp_path, rng):
    curves = {
        "teacher": {"precision": np.array([1.0, 0.5]), "recall": np.array([0.0, 1.0]),
                    "fpr": np.array([0.0, 1.0]), "tpr": np.array([0.0, 1.0])},
    }
    pr, roc = report.plot_curves(tmp_path / "pr.png", tmp_path / "roc.png", curves, {"teacher": _m(0.5, 0.3)}, "t")
    assert pr.stat().st_size > 1000 and roc.stat().st_size > 1000
    img = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    lab = np.zeros((20, 30), np.uint8)
    lab[5:10, 5:10] = 1
    props = np.arange(600).reshape(20, 30) // 100
    props[0, 0] = -1
    p = report.plot_overlay(tmp_path / "o" / "x.png", img, lab, {"teacher": rng.random((20, 30))}, props, "title")
    assert p.is_file() and p.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.rglob("*.tmp"))


def test_atomic_writes(tmp_path):
    p = _io.write_json_atomic(tmp_path / "a" / "r.json", {"x": np.float32(1.5), "y": np.arange(2), "p": tmp_path})
    assert json.loads(p.read_text()) == {"x": 1.5, "y": [0, 1], "p": str(tmp_path)}
    arr = np.arange(6, dtype=np.float16).reshape(2, 3)
    _io.save_npy_atomic(tmp_path / "m.npy", arr)
    np.testing.assert_array_equal(_io.load_npy(tmp_path / "m.npy"), arr)
    # a failure inside the block leaves the old file and no temporary behind
    (tmp_path / "k.txt").write_text("old")
    with pytest.raises(RuntimeError), _io.atomic_path(tmp_path / "k.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert (tmp_path / "k.txt").read_text() == "old"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a", "k.txt", "m.npy"]
    with pytest.raises(TypeError, match="cannot write"):
        _io.write_json_atomic(tmp_path / "b.json", {"x": object()})
    assert len(_io.file_sha256(tmp_path / "m.npy")) == 64


def _results(synthetic=True):
    def m(ap, fpr):
        return {"ap": ap, "fpr95": fpr, "siou_gt": 0.2, "f1_mean": 0.1, "auroc": 0.9, "ppv": 0.3}

    def ev(key):
        return {
            "key": key,
            "synthetic": synthetic,
            "teachers": {"t": {"variants": {"teacher": m(0.10, 0.80), "csl2@sp": m(0.15, 0.70)}}},
        }

    return {"metric_mode": "smiyc", "variants": {"teacher": "alone", "csl2@sp": "+CSL2 [sp]"},
            "evaluations": [ev("smiyc-anomaly"), ev("smiyc-obstacle")]}


def test_summarize_results_one_table_across_tracks():
    from posthoc.bench.report import summarize_results

    md = summarize_results(_results())
    assert "SYNTHETIC WORLD" in md and "Metric mode: smiyc" in md
    head = next(line for line in md.splitlines() if line.startswith("| teacher"))
    assert "smiyc-anomaly AP" in head and "smiyc-obstacle mean F1" in head
    row = next(line for line in md.splitlines() if "+CSL2 [sp]" in line)
    assert "15.0 (+5.0)" in row and "70.0 (-10.0)" in row
    only = summarize_results(_results(False), metrics=["ap", "auroc"])
    assert "AUROC" in only and "FPR95" not in only and "SYNTHETIC" not in only


def test_summary_command_and_its_errors(tmp_path, capsys):
    import json

    from posthoc.bench import cli
    from posthoc.bench.report import SummaryError, summarize_results

    (tmp_path / "results.json").write_text(json.dumps(_results()))
    assert cli.main(["summary", str(tmp_path)]) == 0
    assert "+CSL2 [sp]" in capsys.readouterr().out
    assert cli.main(["summary", str(tmp_path / "nope.json")]) == 2
    assert "no results file" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert cli.main(["summary", str(tmp_path / "bad.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"a": 1}))
    assert cli.main(["summary", str(tmp_path / "other.json")]) == 2
    assert "not a posthoc-bench results.json" in capsys.readouterr().err
    with pytest.raises(SummaryError, match="unknown metrics"):
        summarize_results(_results(), metrics=["nope"])
