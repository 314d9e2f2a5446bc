"""What a user finds after a run: run-folder names, curves in results.json, plots, --no-cache,
missing extras named before any work, and no empty run folder after a bad name."""
from __future__ import annotations

import importlib
import json
from datetime import datetime

import numpy as np
import pytest

from posthoc.bench import report, runner
from posthoc.bench.config import BenchConfig
from posthoc.errors import MissingExtraError

from .test_cli import _run, world  # noqa: F401 - the fixture and the registered fake teacher/proposals


def test_default_run_dir_names_track_teacher_and_time():
    now = datetime(2026, 1, 2, 3, 4, 5)
    d = runner.default_run_dir(BenchConfig(dataset="smiyc", track="anomaly", teachers=["obsnet"]), now)
    assert d.as_posix() == "runs/smiyc-anomaly-obsnet-20260102-030405"
    d = runner.default_run_dir(BenchConfig(dataset="laf", teachers=["a/b/my model.onnx", "sml"]), now)
    assert d.as_posix() == "runs/laf-my_model+sml-20260102-030405"


def test_cli_default_out_is_named_by_track_and_teacher(world, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    rc, io = _run(["smiyc", "--track", "obstacle", "--teacher", "_bench_fake", "--variants", "teacher",
                   "--limit", "1", "--no-plots", "--quiet"], capsys)
    assert rc == 0, io.err
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("smiyc-obstacle-_bench_fake-") and (run / "results.json").is_file()


def _fail_import(monkeypatch, name):
    real = importlib.import_module

    def fake(mod, *a, **k):
        if mod == name or mod.startswith(name + "."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(mod, *a, **k)

    monkeypatch.setattr(runner.importlib, "import_module", fake)


def test_missing_matplotlib_is_named_before_any_work(world, tmp_path, capsys, monkeypatch):  # noqa: F811
    _fail_import(monkeypatch, "matplotlib")
    monkeypatch.setattr(runner, "_run_locked", lambda *a, **k: pytest.fail("work started"))
    out = tmp_path / "r"
    with pytest.raises(MissingExtraError, match=r"need matplotlib.*posthoc\[bench\].*--no-plots"):
        runner.run_benchmark(BenchConfig(teachers=["_bench_fake"], out=str(out)))
    assert not out.exists()
    rc, io = _run(["smiyc", "--teacher", "_bench_fake", "--out", str(out), "--quiet"], capsys)
    assert rc == 2 and "matplotlib" in io.err and "posthoc[bench]" in io.err and "Traceback" not in io.err
    assert not out.exists()
    # --no-plots does not need it
    runner.check_extras(BenchConfig(teachers=["_bench_fake"], plots=False))


def test_missing_h5py_is_named_only_with_export(world, tmp_path, monkeypatch):  # noqa: F811
    _fail_import(monkeypatch, "h5py")
    runner.check_extras(BenchConfig(teachers=["_bench_fake"]))
    with pytest.raises(MissingExtraError, match=r"--export-smiyc.*h5py.*posthoc\[bench\]"):
        runner.run_benchmark(BenchConfig(teachers=["_bench_fake"], out=str(tmp_path / "r"),
                                         export_smiyc=str(tmp_path / "sub")))
    assert not (tmp_path / "r").exists() and not (tmp_path / "sub").exists()


@pytest.mark.parametrize("args,msg", [
    (["--teacher", "no_such_teacher", "--proposals", "_bench_grid"], "unknown teacher"),
    (["--teacher", "_bench_fake", "--proposals", "nope"], "unknown proposal source 'nope'"),
])
def test_bad_names_leave_no_run_folder(world, tmp_path, capsys, args, msg):  # noqa: F811
    out = tmp_path / "new" / "run"
    rc, io = _run(["smiyc", *args, "--out", str(out), "--quiet"], capsys)
    assert rc == 2 and msg in io.err
    assert not (tmp_path / "new").exists()


def test_no_cache_run_keeps_curves_and_leaves_no_cache(world, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "r"
    rc, io = _run(["smiyc", "--track", "anomaly", "--teacher", "_bench_fake", "--proposals", "_bench_grid",
                   "--variants", "teacher,csl2", "--out", str(out), "--quiet", "--no-cache"], capsys)
    assert rc == 0, io.err
    assert not (out / "cache").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".nocache-")]
    res = json.loads((out / "results.json").read_text())
    t = res["evaluations"][0]["teachers"]["_bench_fake"]
    assert t["cache"] is None and set(t["curves"]) == set(t["variants"])
    for c in t["curves"].values():
        n = len(c["fpr"])
        assert 2 <= n <= runner.CURVE_POINTS + 2
        assert all(len(c[k]) == n for k in ("precision", "recall", "tpr", "thresholds"))
        assert np.all(np.diff(c["fpr"]) >= 0) and c["fpr"][-1] == pytest.approx(1.0)
    assert list(out.glob("roc_*.png")) and list(out.glob("pr_*.png"))
    # the same run with the cache gives the same numbers
    rc, io = _run(["smiyc", "--track", "anomaly", "--teacher", "_bench_fake", "--proposals", "_bench_grid",
                   "--variants", "teacher,csl2", "--out", str(tmp_path / "c"), "--quiet", "--no-plots"], capsys)
    assert rc == 0, io.err
    res_c = json.loads((tmp_path / "c" / "results.json").read_text())
    assert res_c["evaluations"][0]["teachers"]["_bench_fake"]["variants"] == t["variants"]
    assert (tmp_path / "c" / "cache").is_dir()


def test_no_cache_refused_with_shards(world, tmp_path, capsys):  # noqa: F811
    rc, io = _run(["smiyc", "--teacher", "_bench_fake", "--shard", "0/2", "--no-cache", "--out",
                   str(tmp_path / "r"), "--quiet"], capsys)
    assert rc == 2 and "--no-cache" in io.err


def test_plot_curves_marks_fpr95_synthetic_title_many_variants(tmp_path, monkeypatch):
    import matplotlib.axes

    titles, points = [], []
    real_title, real_plot = matplotlib.axes.Axes.set_title, matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, t, **k: (titles.append(t),
                                                                                  real_title(self, t, **k))[1])

    def plot(self, *a, **k):
        if k.get("marker") == "o":
            points.append((a[0][0], a[1][0]))
        return real_plot(self, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    x = np.linspace(0, 1, 50)
    curves = {f"v{i}": {"recall": x, "precision": 1 - x / 2, "fpr": x, "tpr": np.sqrt(x)} for i in range(25)}
    metrics = {f"v{i}": {"ap": 0.5, "auroc": 0.6, "fpr95": 0.9025} for i in range(25)}
    metrics["v3"] = {"ap": None, "auroc": None, "fpr95": None}
    pr, roc = report.plot_curves(tmp_path / "pr.png", tmp_path / "roc.png", curves, metrics, "t", synthetic=True)
    assert pr.is_file() and roc.is_file()
    assert titles and all(t.startswith("SYNTHETIC WORLD") for t in titles)
    assert len(points) == 24 and all(p == (0.9025, 0.95) for p in points)
    titles.clear()
    report.plot_curves(tmp_path / "pr2.png", tmp_path / "roc2.png", curves, metrics, "real")
    assert titles == ["real", "real"]


def test_merge_names_missing_matplotlib_before_work(tmp_path, monkeypatch):
    from posthoc.bench import merge

    _fail_import(monkeypatch, "matplotlib")
    monkeypatch.setattr(merge, "_read", lambda r: pytest.fail("work started"))
    with pytest.raises(MissingExtraError, match="matplotlib.*--no-plots"):
        merge.merge_runs([tmp_path / "s0"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
