"""``--shard I/N`` runs plus ``posthoc-bench merge`` equal one run; bad merges are refused clearly."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from posthoc.bench import cli, distributed, fingerprint
from posthoc.bench.merge import MergeError, merge_runs

from ._scale_common import N_FRAMES, assert_same_metrics, load, teacher_metrics
from .test_cli import make_world  # registers the fake teacher and proposals

BASE = ["smiyc", "--teacher", "_bench_fake", "--proposals", "_bench_grid", "--quiet", "--overlays", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One single-process run and the three shards of the same command, on a 7-frame fake world."""
    mp = pytest.MonkeyPatch()
    mp.setattr(fingerprint, "code_fingerprint", lambda: "pinned")
    for v in ("POSTHOC_DATA_ROOT", "POSTHOC_SMIYC_ROOT", "WORLD_SIZE"):
        mp.delenv(v, raising=False)
    tmp = tmp_path_factory.mktemp("merge")
    root = make_world(tmp / "world", n=N_FRAMES)
    args = BASE + ["--data-root", str(root)]
    try:
        assert cli.main(args + ["--out", str(tmp / "single")]) == 0
        for i in range(3):
            assert cli.main(args + ["--out", str(tmp / f"s{i}"), "--shard", f"{i}/3"]) == 0
        yield tmp, args
    finally:
        mp.undo()


def test_three_shards_merged_equal_one_run(runs, capsys):
    tmp, _ = runs
    shards = [tmp / f"s{i}" for i in (2, 0, 1)]  # any order
    capsys.readouterr()
    assert cli.main(["merge", *map(str, shards), "--out", str(tmp / "merged")]) == 0
    io = capsys.readouterr()
    single, merged = load(tmp / "single"), load(tmp / "merged")
    n = assert_same_metrics(teacher_metrics(single), teacher_metrics(merged))
    assert n > 100  # pixel (smiyc bins) and component metrics of 4 variants x 2 tracks, and the counts
    for ev in merged["evaluations"]:
        t = ev["teachers"]["_bench_fake"]
        assert t["frames"] == N_FRAMES and t["frames_labelled"] == N_FRAMES
        assert {"ap", "fpr95", "siou_gt", "f1_mean", "n_gt_components"} <= set(t["variants"]["teacher"])
        assert len(t["overlays"]) == 2 and all(p.endswith(".png") for p in t["plots"])
    # the merged PR/ROC curves are the single run's
    for ev_s, ev_m in zip(single["evaluations"], merged["evaluations"], strict=True):
        cs, cm = ev_s["teachers"]["_bench_fake"]["curves"], ev_m["teachers"]["_bench_fake"]["curves"]
        assert set(cs) == set(cm) and cs
        for k in cs:
            for key in ("precision", "recall", "tpr", "fpr"):
                np.testing.assert_allclose(cm[k][key], cs[k][key], rtol=1e-9, atol=1e-12)
    # each shard alone holds only its block of frames
    assert [load(tmp / f"s{i}")["evaluations"][0]["teachers"]["_bench_fake"]["frames"] for i in range(3)] == [2, 2, 3]
    assert "Shard 0/3" in (tmp / "s0" / "results.md").read_text()
    assert "Merged from 3 shards" in io.out
    # the tables differ only in the run-specific lines (timings, merge note)
    tab = [e["table"] for e in single["evaluations"]]
    assert tab == [e["table"] for e in merged["evaluations"]]


def test_merge_refuses_missing_duplicate_and_foreign_shards(runs, capsys):
    tmp, args = runs
    s = [str(tmp / f"s{i}") for i in range(3)]

    def refused(argv, *needles):
        capsys.readouterr()
        assert cli.main(["merge", *argv, "--out", str(tmp / "bad")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        for nd in needles:
            assert nd in err, err
        return err

    refused([s[0], s[2]], "shards 1/3 are missing")
    refused([s[0], s[1], s[1], s[2]], "shard 1/3 is given twice")
    refused([s[0], s[1], str(tmp / "single")], "not a --shard I/N run folder", "results.json")
    refused([s[0], s[1], str(tmp / "nope")], "is not a folder")

    # a shard with another config: copy shard 1 and change what shard.json / the cache key say
    def variant(name, edit_config=None, edit_key=None):
        d = tmp / name
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(tmp / "s1", d)
        man_p = d / "shard" / "shard.json"
        man = json.loads(man_p.read_text())
        if edit_config:
            edit_config(man["results"]["config"])
        man_p.write_text(json.dumps(man))
        if edit_key:
            for tres in (e["teachers"]["_bench_fake"] for e in man["results"]["evaluations"]):
                kp = d / tres["shard"]["cache_dir"] / "config.json"
                key = json.loads(kp.read_text())
                edit_key(key)
                kp.write_text(json.dumps(key))
        return str(d)

    refused([s[0], variant("t", lambda c: c.update(teachers=["other"])), s[2]], "--teacher", "'other'")
    refused([s[0], variant("p", lambda c: c.update(proposals=["superpixels"])), s[2]], "--proposals")
    refused([s[0], variant("w", lambda c: c.update(world_seed=3)), s[2]], "world_seed", "--world-seed")
    refused([s[0], variant("v", lambda c: c.update(variants=["teacher"])), s[2]], "--variants")
    refused([s[0], variant("c", edit_key=lambda k: k.update(code="edited")), s[2]], "code fingerprint")
    refused([s[0], variant("x", edit_key=lambda k: k.update(world="other")), s[2]], "synthetic world content")
    # a shard of another split
    d = variant("n")
    man_p = tmp / "n" / "shard" / "shard.json"
    man = json.loads(man_p.read_text())
    man["shard"] = [1, 4]
    man_p.write_text(json.dumps(man))
    refused([s[0], d, s[2]], "different numbers of shards", "1/4")
    # a cached map changed after its shard run
    d = variant("m")
    cache = next((tmp / "m" / "cache").iterdir())
    victim = sorted((cache / "maps").rglob("*.npy"))[0]
    m = np.load(victim)
    m[0, 0] = np.float16(0.123) if m[0, 0] != np.float16(0.123) else np.float16(0.5)
    np.save(victim, m)
    refused([s[0], d, s[2]], "differs from what its shard run wrote", victim.name)
    with pytest.raises(MergeError, match="one of the shard folders"):
        merge_runs([tmp / f"s{i}" for i in range(3)], tmp / "s0")


def test_shard_flag_errors_exit_2(runs, capsys):
    tmp, args = runs
    for bad, needle in (("3/3", "0 <= I < N"), ("a/b", "I/N with integers"), ("1", "I/N"), ("0/0", "N >= 1")):
        capsys.readouterr()
        assert cli.main(args + ["--out", str(tmp / "x"), "--shard", bad]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err


def test_shard_blocks_are_contiguous_batch_aligned_and_cover_every_frame():
    for n in range(0, 12):
        for count in range(1, 6):
            for align in (1, 2, 3):
                blocks = [distributed.block(n, i, count, align) for i in range(count)]
                assert blocks[0][0] == 0 and blocks[-1][1] == n
                assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
                assert all(a % align == 0 for a, _ in blocks)
    assert distributed.block(10, 0, 2, 2) == (0, 4) and distributed.block(10, 1, 2, 2) == (4, 10)
    assert distributed.parse_shard("2/5") == (2, 5)
