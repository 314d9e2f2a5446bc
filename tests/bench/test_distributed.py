"""One benchmark over several torch.distributed processes (gloo) equals one process.

The fast tests start 2 processes the way torchrun does (RANK / WORLD_SIZE / MASTER_ADDR in
the environment, ``init_process_group`` from env://) and call the CLI in each, with the fake
teacher of test_cli on a 7-frame fake world. The slow test runs the real ``torchrun
--standalone --nproc-per-node=2 -m posthoc.bench`` on the synthetic world against
``posthoc-bench`` in one process.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from posthoc.adapters import register_teacher
from posthoc.bench import cli, distributed, fingerprint
from posthoc.types import TeacherOutput

from ._scale_common import N_FRAMES, assert_same_metrics, load, teacher_metrics
from .test_cli import _FakeTeacher, make_world


class _ExactFakeTeacher(_FakeTeacher):
    """test_cli's fake teacher with its noise seeded per image by an integer sum of the pixels, so its
    output does not depend on the batch or on the float rounding of a multi-threaded sum."""

    def __call__(self, images):
        imgs = np.asarray(images)
        x = torch.as_tensor(imgs).float() / 255.0
        mag = x[..., 0] + x[..., 2] - 2 * x[..., 1]
        z = torch.stack([torch.randn(mag.shape[1:], generator=torch.Generator().manual_seed(
            int(im.astype(np.int64).sum()) % (2**31))) for im in imgs])
        score = torch.sigmoid(3.0 * mag - 3.0 + self.noise * z)[:, None]
        gray = x.mean(-1)
        logits = torch.stack([4 * (0.5 - gray), 4 * (gray - 0.5), torch.zeros_like(gray)], 1)
        return TeacherOutput(score, "anomaly", ["anomaly"], logits=logits)


register_teacher("_dist_fake")(_ExactFakeTeacher)
BASE = ["smiyc", "--teacher", "_dist_fake", "--proposals", "_bench_grid", "--quiet", "--overlays", "2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, argv: list, logdir: str, die_rank: int) -> None:
    """What torchrun's worker does: the environment of a rank, then the CLI."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), POSTHOC_DIST_TIMEOUT="60")
    for v in ("POSTHOC_DATA_ROOT", "POSTHOC_SMIYC_ROOT"):
        os.environ.pop(v, None)
    fingerprint.code_fingerprint = lambda: "pinned"
    if rank == die_rank:
        from posthoc.bench import runner

        def die(*a, **k):
            os._exit(7)  # a rank that dies in the middle of the run (after inference, before the metrics)

        runner.score_teacher = die
    log = Path(logdir)
    with open(log / f"rank{rank}.out", "w") as out, open(log / f"rank{rank}.err", "w") as err, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    (log / f"rank{rank}.rc").write_text(str(rc))


def _launch(world: int, argv: list, logdir: Path, die_rank: int = -1) -> list[int]:
    logdir.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, argv, str(logdir), die_rank)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
        if p.is_alive():
            p.kill()
    return [p.exitcode for p in procs]


@pytest.fixture(scope="module")
def fake_world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    return tmp, make_world(tmp / "world", n=N_FRAMES)


@pytest.fixture
def single_run(fake_world, monkeypatch):
    tmp, root = fake_world
    out = tmp / "single"
    if not (out / "results.json").is_file():
        monkeypatch.setattr(fingerprint, "code_fingerprint", lambda: "pinned")
        for v in ("POSTHOC_DATA_ROOT", "POSTHOC_SMIYC_ROOT", "WORLD_SIZE"):
            monkeypatch.delenv(v, raising=False)
        assert cli.main(BASE + ["--data-root", str(root), "--out", str(out)]) == 0
    return load(out)


def test_two_gloo_ranks_equal_one_process_and_resume(fake_world, single_run):
    tmp, root = fake_world
    out = tmp / "ddp"
    argv = BASE + ["--data-root", str(root), "--out", str(out)]
    codes = _launch(2, argv, tmp / "logs")
    errs = [(tmp / "logs" / f"rank{r}.err").read_text() for r in range(2)]
    assert codes == [0, 0], errs
    assert [(tmp / "logs" / f"rank{r}.rc").read_text() for r in range(2)] == ["0", "0"]
    res = load(out)
    n = assert_same_metrics(teacher_metrics(single_run), teacher_metrics(res))
    assert n > 100
    assert res["scale"] == {"index": 0, "count": 2, "torchrun": True}
    assert "# posthoc-bench smiyc" in (tmp / "logs" / "rank0.out").read_text()
    assert (tmp / "logs" / "rank1.out").read_text() == ""  # only rank 0 prints and writes
    for ev in res["evaluations"]:
        assert len(ev["teachers"]["_dist_fake"]["overlays"]) == 2
    # both ranks wrote their own frames into the one cache: every frame is there once
    caches = list((out / "cache").iterdir())
    assert len(caches) == 2 and all(len(list((c / "done").iterdir())) == N_FRAMES for c in caches)
    # rerun: every frame comes from the cache, same metrics
    codes = _launch(2, argv, tmp / "logs2")
    assert codes == [0, 0], (tmp / "logs2" / "rank0.err").read_text()
    res2 = load(out)
    assert all(ev["teachers"]["_dist_fake"]["frames_cached"] == N_FRAMES for ev in res2["evaluations"])
    assert_same_metrics({k: v["variants"] for k, v in teacher_metrics(res).items() if isinstance(v, dict)},
                        {k: v["variants"] for k, v in teacher_metrics(res2).items() if isinstance(v, dict)})


def test_a_rank_that_dies_fails_the_run_with_a_clear_message(fake_world):
    tmp, root = fake_world
    out = tmp / "dies"
    codes = _launch(2, BASE + ["--data-root", str(root), "--out", str(out), "--limit", "4"], tmp / "logs_die",
                    die_rank=1)
    err = (tmp / "logs_die" / "rank0.err").read_text()
    assert codes == [0, 7], err  # rank 1 died (exit 7); rank 0 ended by itself, not by a hang
    assert (tmp / "logs_die" / "rank0.rc").read_text() == "2"
    assert "posthoc-bench: error: rank 0:" in err and "rank 0: rank 0" not in err
    assert "another rank probably died" in err
    assert "rerun the same command to resume" in err and "Traceback" not in err
    assert not (out / "results.json").exists()


def test_a_rank_without_frames_still_takes_part(fake_world):
    """--limit 1 with batch size 2 on 2 ranks: rank 0's block is empty, rank 1 has the frame."""
    tmp, root = fake_world
    out = tmp / "one_frame"
    codes = _launch(2, BASE + ["--data-root", str(root), "--out", str(out), "--limit", "1"], tmp / "logs_one")
    assert codes == [0, 0], (tmp / "logs_one" / "rank0.err").read_text()
    assert [(tmp / "logs_one" / f"rank{r}.rc").read_text() for r in range(2)] == ["0", "0"]
    for ev in load(out)["evaluations"]:
        t = ev["teachers"]["_dist_fake"]
        assert t["frames"] == 1 and t["frames_labelled"] == 1 and t["overlays"] == []
        assert t["variants"]["teacher"]["n_frames"] == 1


def test_shard_flag_under_torchrun_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(BASE + ["--shard", "0/2", "--out", "unused"]) == 2
    assert "cannot be combined with torchrun" in capsys.readouterr().err


def test_setup_without_torchrun():
    assert distributed.setup(None, "cpu") == (distributed.Scale(), "cpu")
    s, _ = distributed.setup((1, 3), None)
    assert s.shard == (1, 3) and not s.torchrun and s.writes_results


def test_python_m_posthoc_bench_is_the_cli():
    r = subprocess.run([sys.executable, "-m", "posthoc.bench", "merge"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "RUN_DIR" in r.stderr


@pytest.mark.slow
def test_torchrun_two_processes_equal_posthoc_bench(tmp_path):
    """The issue's command: torchrun --standalone --nproc-per-node=2 -m posthoc.bench == posthoc-bench."""
    # torchrun's own module (the console script may not be on this venv's PATH)
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    bench = shutil.which("posthoc-bench") or str(Path(sys.executable).with_name("posthoc-bench"))
    args = ["smiyc", "--teacher", "obsnet", "--proposals", "superpixels", "--limit", "10", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r1 = subprocess.run([bench, *args, "--out", str(tmp_path / "one")], capture_output=True, text=True, env=env,
                        timeout=900)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = subprocess.run([*torchrun, "--standalone", "--nproc-per-node=2", "-m", "posthoc.bench", *args,
                         "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=900)
    assert r2.returncode == 0, r2.stderr[-3000:]
    n = assert_same_metrics(teacher_metrics(load(tmp_path / "one")), teacher_metrics(load(tmp_path / "two")))
    assert n > 100


def test_a_rank_missing_at_start_fails_with_a_clear_message(tmp_path):
    env = dict(os.environ, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), POSTHOC_DIST_TIMEOUT="3")
    r = subprocess.run([sys.executable, "-m", "posthoc.bench", "smiyc", "--out", str(tmp_path / "x"), "--quiet"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "rank 0: could not join the torch.distributed group of 2 ranks" in r.stderr and "Traceback" not in r.stderr
