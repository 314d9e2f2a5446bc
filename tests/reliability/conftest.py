"""Shared fixtures of the reliability suite: a tiny SMIYC-layout data root and fast fake teachers.

The fakes are the ones of ``tests/bench/test_cli.py`` (registered there on import), so
these tests exercise the real CLI, cache and metrics on a few 64x96 frames.
"""
from __future__ import annotations

import pytest

from posthoc.bench import fingerprint
from tests.bench.test_cli import make_world  # also registers the fake adapters


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """A SMIYC-layout root with 4 labelled frames per track; the code fingerprint is pinned."""
    for v in ("POSTHOC_DATA_ROOT", "POSTHOC_SMIYC_ROOT"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda: "pinned")
    return make_world(tmp_path / "data") / "test"


def bench_args(root, out, *extra):
    """A fast anomaly-track run of the fake teacher with grid proposals (batch size 1: the fake
    teacher's noise depends on the batch, so a resumed run must batch as a fresh one does)."""
    return ["smiyc", "--track", "anomaly", "--data-root", str(root), "--teacher", "_bench_fake", "--proposals",
            "_bench_grid", "--variants", "teacher,csl2", "--batch-size", "1", "--out", str(out), "--quiet",
            "--no-plots", *extra]
