"""Helpers shared by the scale-out tests (torchrun ranks, --shard runs + merge)."""
from __future__ import annotations

import json
import math
from pathlib import Path

#: frames per track of the fake world: 3 shards get 2, 2 and 3 frames
N_FRAMES = 7


def teacher_metrics(results: dict) -> dict:
    """(evaluation, teacher) -> the frame counts and every variant's metrics of a results.json."""
    out = {}
    for ev in results["evaluations"]:
        for t, tres in ev["teachers"].items():
            out[(ev["key"], t)] = {
                "frames": tres["frames"], "frames_cached": tres["frames_cached"],
                "frames_labelled": tres["frames_labelled"], "variants": tres["variants"],
            }
        out[(ev["key"], "frames_labelled")] = ev["frames_labelled"]
    return out


def assert_same_metrics(a, b, path: str = "") -> int:
    """Every number within 1e-9 (None / NaN equal), everything else equal; returns the count of numbers compared."""
    n = 0
    if isinstance(a, dict):
        assert set(a) == set(b), (path, sorted(set(a) ^ set(b)))
        for k in a:
            n += assert_same_metrics(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            n += assert_same_metrics(x, y, f"{path}[{i}]")
    elif isinstance(a, (int, float)) and not isinstance(a, bool):
        assert isinstance(b, (int, float)) and not isinstance(b, bool), (path, a, b)
        if isinstance(a, float) and math.isnan(a):
            assert math.isnan(b), path
        else:
            assert abs(a - b) <= 1e-9, (path, a, b)
        n += 1
    else:
        assert a == b, (path, a, b)
    return n


def load(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())
