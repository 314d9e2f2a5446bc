"""Packaging facts the README states: one version source, the LICENSE shipped, [bench] enough for the
default benchmark (an ONNX runtime included), and no library import of the dev-only packages."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

import posthoc

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_one_version_source():
    p = _pyproject()
    assert "version" not in p["project"] and "version" in p["project"]["dynamic"]
    assert p["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "posthoc.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", posthoc.__version__)


def test_license_and_no_invented_urls():
    p = _pyproject()
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert "LICENSE" in p["tool"]["setuptools"]["license-files"]
    # the project has no public address yet: [project.urls] waits for the real one
    assert "urls" not in p["project"]
    assert (ROOT / "CITATION.cff").is_file() and (ROOT / "CHANGELOG.md").is_file()


def test_bench_extra_brings_an_onnx_runtime_and_the_plot_and_hdf5_packages():
    extras = _pyproject()["project"]["optional-dependencies"]
    bench = extras["bench"]
    assert {"matplotlib", "h5py", "tqdm"} <= _names(bench)
    gpu = [r for r in bench if r.startswith("onnxruntime-gpu")]
    cpu = [r for r in bench if re.match(r"onnxruntime[<>=]", r)]
    assert len(gpu) == 1 and len(cpu) == 1  # complementary markers: exactly one runtime per platform
    assert "onnxruntime-gpu" in _names(extras["onnx"]) and "onnxruntime" in _names(extras["onnx-cpu"])


def test_dev_only_packages_are_not_imported_by_the_library():
    core = _names(_pyproject()["project"]["dependencies"])
    assert "kornia" not in core and "scikit-learn" not in core
    assert {"kornia", "scikit-learn"} <= _names(_pyproject()["project"]["optional-dependencies"]["dev"])
    offenders = []
    for folder in ("posthoc", "adapters", "benchmarks"):
        for f in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for m in mods:
                    if m.split(".")[0] in ("kornia", "sklearn"):
                        offenders.append(f"{f.relative_to(ROOT)}:{node.lineno} {m}")
    # the one allowed use: metrics-speed's optional pooled-sklearn baseline (skipped when absent)
    assert all(o.startswith("benchmarks/metrics_speed.py") for o in offenders), offenders


def test_wheel_ships_the_typed_markers_bundled_models_and_the_bench_extra(tmp_path):
    """Build the wheel (no network: the installed setuptools, no build isolation) and read what it ships.

    ``pip install 'posthoc[bench]'`` then ``posthoc-bench smiyc --teacher obsnet`` needs the bundled ONNX models
    and calibration files, an ONNX runtime in the extra and the console scripts; a type checker needs py.typed.
    """
    import email
    import shutil
    import subprocess
    import zipfile

    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 68:
        pytest.skip(f"pyproject.toml's build backend needs setuptools>=68; found {setuptools.__version__}")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("posthoc", "adapters", "benchmarks"):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    out = tmp_path / "dist"
    code = f"from setuptools import build_meta as b; print(b.build_wheel({str(out)!r}))"
    res = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    wheel = out / res.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        dist = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(z.read(f"{dist}/METADATA"))
        entry_points = z.read(f"{dist}/entry_points.txt").decode()
    for pkg in ("posthoc", "posthoc/adapters", "posthoc/bench"):
        assert f"{pkg}/py.typed" in names
    bundled = {p.name for p in (ROOT / "adapters" / "bundled").iterdir() if p.suffix in (".onnx", ".json")}
    assert bundled and {f"posthoc/adapters/bundled/{b}" for b in bundled} <= names
    assert {"posthoc/bench/cli.py", "posthoc/kernels/__init__.py", "posthoc/metrics/__init__.py"} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert "posthoc-bench = posthoc.bench.cli:main" in entry_points
    assert "bench" in meta.get_all("Provides-Extra")
    bench = [r for r in meta.get_all("Requires-Dist") if "extra == \"bench\"" in r]
    assert {"matplotlib", "h5py", "tqdm", "onnxruntime", "onnxruntime-gpu"} <= _names(bench)
    core = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert {"torch", "numpy", "scipy", "numba"} <= _names(core) and not {"matplotlib", "h5py"} & _names(core)
