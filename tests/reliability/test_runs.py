"""Defect 3 and the run-level guarantees: a run killed with ``kill -9`` resumes to the numbers
of a fresh run, a second run into a live run's folder is refused at once, and shards coexist."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posthoc.adapters import list_teachers, register_teacher
from posthoc.bench import cli
from posthoc.bench.cache import RunLock, RunLockedError
from tests.bench.test_cli import _FakeTeacher

from .conftest import bench_args

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = """
import os, sys, time
from posthoc.adapters import register_teacher
from posthoc.bench import cli, fingerprint
from tests.bench.test_cli import _FakeTeacher

class Slow(_FakeTeacher):
    def __call__(self, images):
        time.sleep(float(os.environ.get("POSTHOC_TEST_SLOW", "0")))
        return super().__call__(images)

register_teacher("_slow_fake")(Slow)
fingerprint.code_fingerprint = lambda: "pinned"
sys.exit(cli.main(sys.argv[1:]))
"""


class _Slow(_FakeTeacher):  # the same teacher in this process (no sleep)
    pass


if "_slow_fake" not in list_teachers():
    register_teacher("_slow_fake")(_Slow)


def _args(root, out):
    a = bench_args(root, out)
    a[a.index("_bench_fake")] = "_slow_fake"
    return a


def _spawn(root, out, slow=1.0):
    env = dict(os.environ, POSTHOC_TEST_SLOW=str(slow), PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, *_args(root, out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(pred, proc, timeout=120.0):
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early (rc {proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


def _done_count(out):
    return len(list((out / "cache").glob("*/done/*.json"))) if (out / "cache").is_dir() else 0


def _teacher(out):
    return json.loads((out / "results.json").read_text())["evaluations"][0]["teachers"]["_slow_fake"]


def test_kill9_midrun_refuses_a_concurrent_run_then_resumes_to_fresh_numbers(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    proc = _spawn(data_root, out, slow=1.0)
    try:
        _wait_for(lambda: _done_count(out) >= 1, proc)
        # a second run into the same folder is refused at once, naming the folder and the other run
        t0 = time.monotonic()
        assert cli.main(_args(data_root, out)) == 2
        err = capsys.readouterr().err
        assert time.monotonic() - t0 < 30
        assert f"run folder {out} is in use by another posthoc-bench run" in err
        assert f"pid {proc.pid}" in err
        assert proc.poll() is None  # the first run was not disturbed
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "results.json").exists()
    n_done = _done_count(out)
    assert 1 <= n_done < 4
    # the kernel released the lock with the process: the rerun resumes from the cache
    assert cli.main(_args(data_root, out)) == 0
    resumed = _teacher(out)
    assert resumed["frames_cached"] == n_done
    fresh = tmp_path / "fresh"
    assert cli.main(_args(data_root, fresh)) == 0
    assert _teacher(fresh)["variants"] == resumed["variants"]


def test_run_lock_modes(tmp_path):
    out = tmp_path
    with RunLock(out) as a:
        assert a.exclusive
        with pytest.raises(RunLockedError, match=rf"run folder {out} is in use .*pid {os.getpid()}"):
            RunLock(out).acquire()
        with pytest.raises(RunLockedError):
            RunLock(out, shard=(0, 2)).acquire()
    # shards of one run coexist; the same shard twice, or a plain run beside them, is refused
    s0 = RunLock(out, shard=(0, 2)).acquire()
    s1 = RunLock(out, shard=(1, 2)).acquire()
    with pytest.raises(RunLockedError, match="shard 0/2"):
        RunLock(out, shard=(0, 2)).acquire()
    with pytest.raises(RunLockedError):
        RunLock(out).acquire()
    s0.release()
    s1.release()
    with RunLock(out):  # free again
        pass


def test_a_sharded_run_never_removes_another_configs_cache(tmp_path):
    import numpy as np

    from posthoc.bench.cache import RunCache

    a = RunCache(tmp_path, "ev", "t", {"cfg": "a"})
    a.save_map("teacher", "f", np.zeros((2, 2)))
    RunCache(tmp_path, "ev", "t", {"cfg": "b"}, owner=False, shard=(0, 2))
    assert a.dir.is_dir()  # a shard leaves other configs alone
    RunCache(tmp_path, "ev", "t", {"cfg": "b"})  # a plain run holding the folder alone cleans up
    assert not a.dir.exists()
