"""The benchmark's numbers do not move under refactoring.

``tests/bench/data/golden_smiyc_limit8.json`` holds every metric of every variant that
``posthoc-bench smiyc --teacher obsnet,sml --proposals csl,superpixels --limit 8 --no-plots``
gave before the chain moved into ``posthoc.Pipeline`` (recorded at the commit named in the
file). The same command must give the same AP, AUROC, FPR95, sIoU, PPV, F1 and counts to
1e-6 on the bundled teachers and the default synthetic world.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from posthoc.bench import cli

GOLDEN = Path(__file__).parent / "data" / "golden_smiyc_limit8.json"


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
    assert sorted(got) == sorted(want)
    bad = []
    for key, metrics in want.items():
        assert sorted(got[key]) == sorted(metrics), key
        for name, w in metrics.items():
            g = got[key][name]
            if w is None or g is None:
                ok = w is g
            else:
                ok = math.isclose(g, w, rel_tol=0, abs_tol=1e-6)
            if not ok:
                bad.append(f"{key} {name}: got {g}, recorded {w}")
    assert not bad, "metrics moved:\n" + "\n".join(bad[:40])
