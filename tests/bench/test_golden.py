"""The benchmark's numbers do not move under refactoring.

``tests/bench/data/golden_smiyc_limit8.json`` holds every metric of every variant that
``posthoc-bench smiyc --teacher obsnet,sml --proposals csl,superpixels --limit 8 --no-plots``
gave before the chain moved into ``posthoc.Pipeline`` (recorded at the commit named in the
file). The same command must give the same AP, AUROC, FPR95, sIoU, PPV, F1 and counts to
1e-6 on the bundled teachers and the default synthetic world.

The numbers depend on the numeric libraries too (torch's convolutions, ONNX Runtime, OpenCV's
resizing): a new release moves AP in the 6th digit, and a component count can then change
by one, because components are cut at a threshold. The file records the versions it was made
with. Where the environment has other versions, the continuous pixel metrics must still agree
to 1e-3, and the discontinuous component metrics are not compared (the failure message of the
strict check says how to re-record).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from posthoc.bench import cli

GOLDEN = Path(__file__).parent / "data" / "golden_smiyc_limit8.json"
#: the libraries whose numerics the recorded metrics depend on
_VERSIONED = ("torch", "numpy", "onnxruntime", "cv2", "skimage", "scipy", "numba")
#: compared (loosely) when the versions differ: continuous in the maps
_PIXEL = ("ap", "auroc", "fpr95")


def _env_versions() -> dict:
    import importlib

    out = {}
    for name in _VERSIONED:
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
        except ImportError:
            out[name] = None
    return out


def _flatten(results: dict) -> dict:
    out = {}
    for ev in results["evaluations"]:
        for t, tv in ev["teachers"].items():
            for k, m in tv["variants"].items():
                out[f"{ev['key']}/{t}/{k}"] = {a: b for a, b in m.items() if not isinstance(b, str)}
    return out


def test_default_benchmark_metrics_match_the_recorded_run(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    for v in ("POSTHOC_DATA_ROOT", "POSTHOC_SMIYC_ROOT"):
        monkeypatch.delenv(v, raising=False)
    golden = json.loads(GOLDEN.read_text())
    out = tmp_path / "run"
    args = golden["command"].split()[1:] + ["--out", str(out), "--quiet"]
    assert cli.main(args) == 0
    got = _flatten(json.loads((out / "results.json").read_text()))
    want = golden["metrics"]
    same_env = golden.get("versions") == _env_versions()
    assert sorted(got) == sorted(want)
    bad = []
    for key, metrics in want.items():
        assert sorted(got[key]) == sorted(metrics), key
        for name, w in metrics.items():
            if not same_env and name not in _PIXEL:
                continue
            g = got[key][name]
            if w is None or g is None:
                ok = w is g
            else:
                ok = math.isclose(g, w, rel_tol=0, abs_tol=1e-6 if same_env else 1e-3)
            if not ok:
                bad.append(f"{key} {name}: got {g}, recorded {w}")
    note = "" if same_env else (
        f" (library versions differ from the recording: {golden.get('versions')} vs {_env_versions()}; "
        "pixel metrics compared to 1e-3)"
    )
    assert not bad, ("metrics moved" + note + ":\n" + "\n".join(bad[:40]) + "\nif the change is intended, re-record: "
                     "python -m tests.bench.test_golden --note 'why'")


def record(note: str, results: Path | None = None) -> list[str]:
    """Re-record the golden file from its own command (or from a ``results.json`` that command wrote).

    Keeps the command, records the library versions, the commit and ``note``, keeps the recorded
    numbers of every key that agrees with them to 1e-6 (the strict check's tolerance), and returns
    the keys whose metrics changed. Run from the repository root:
    ``python -m tests.bench.test_golden --note "why" [--results runs/x/results.json]``.
    """
    import subprocess
    import tempfile

    from posthoc.adapters.io import write_json_atomic

    golden = json.loads(GOLDEN.read_text())
    if results is None:
        tmp = Path(tempfile.mkdtemp(prefix="golden-"))
        if cli.main(golden["command"].split()[1:] + ["--out", str(tmp / "run"), "--quiet"]) != 0:
            raise SystemExit(f"the golden command failed: {golden['command']}")
        results = tmp / "run" / "results.json"
    got = _flatten(json.loads(Path(results).read_text()))
    old = golden["metrics"]

    def same(a: dict | None, b: dict) -> bool:  # within the strict check's 1e-6: keep the recorded numbers
        return a is not None and sorted(a) == sorted(b) and all(
            a[n] is b[n] or (a[n] is not None and b[n] is not None
                             and math.isclose(a[n], b[n], rel_tol=0, abs_tol=1e-6)) for n in b)

    got = {k: old[k] if same(old.get(k), m) else m for k, m in got.items()}
    changed = sorted(k for k in set(got) | set(old) if got.get(k) != old.get(k))
    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=GOLDEN.parent).stdout
    golden.update(metrics=got, versions=_env_versions(), recorded_at=sha.strip(), recorded_note=note)
    write_json_atomic(GOLDEN, golden, indent=1)
    return changed


if __name__ == "__main__":  # pragma: no cover - the recording command
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tests.bench.test_golden", description="re-record the golden run")
    ap.add_argument("--note", required=True, help="why the numbers changed (stored in the file)")
    ap.add_argument("--results", type=Path, default=None, help="results.json of the golden command (else run it)")
    a = ap.parse_args()
    for key in record(a.note, a.results):
        print("changed:", key)
