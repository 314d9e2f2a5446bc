"""posthoc-bench with --superpixels-impl: the implementation keys the cache, and a bad value is a clean error."""
import json

import pytest

from posthoc.adapters.proposals_superpixels import ximgproc_available
from tests.bench.test_cli import _run, world  # noqa: F401  (world is a fixture)


def _cached(out):
    t = json.loads((out / "results.json").read_text())["evaluations"][0]["teachers"]["_bench_fake"]
    return t["frames_cached"], t["variants"]["csl2@superpixels"]["ap"]


@pytest.mark.skipif(not ximgproc_available(), reason="needs opencv-contrib-python-headless (cv2.ximgproc)")
def test_impl_keys_the_cache(world, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "r"
    base = ["smiyc", "--track", "anomaly", "--teacher", "_bench_fake", "--proposals", "superpixels", "--variants",
            "teacher,csl2", "--out", str(out), "--quiet", "--no-plots"]
    assert _run(base + ["--superpixels-impl", "skimage"], capsys)[0] == 0
    n_sk, ap_sk = _cached(out)
    assert n_sk == 0
    key_sk = {p.name for p in (out / "cache").iterdir()}
    cfg = json.loads(next((out / "cache").iterdir()).joinpath("config.json").read_text())
    assert cfg["proposals"]["superpixels"]["settings"]["impl"] == "skimage"
    # the other implementation: never served the skimage maps
    assert _run(base + ["--superpixels-impl", "ximgproc"], capsys)[0] == 0
    n_xi, ap_xi = _cached(out)
    assert n_xi == 0 and {p.name for p in (out / "cache").iterdir()}.isdisjoint(key_sk)
    # the default (auto) resolves to ximgproc and shares its cache
    assert _run(base, capsys)[0] == 0
    assert _cached(out) == (4, ap_xi)
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["superpixels_impl"] is None
    assert res["proposal_settings"]["superpixels"]["impl"] == "ximgproc"  # what auto resolved to


def test_bad_impl_is_a_usage_error(world, tmp_path, capsys):  # noqa: F811
    rc, io = _run(["smiyc", "--teacher", "_bench_fake", "--superpixels-impl", "opencv", "--out",
                   str(tmp_path / "r")], capsys)
    assert rc == 2 and "--superpixels-impl" in io.err and "Traceback" not in io.err
    assert not (tmp_path / "r").exists()


def test_missing_ximgproc_is_a_clean_cli_error(world, tmp_path, capsys, monkeypatch):  # noqa: F811
    import cv2

    monkeypatch.delattr(cv2, "ximgproc", raising=False)
    args = ["smiyc", "--track", "anomaly", "--teacher", "_bench_fake", "--proposals", "superpixels", "--variants",
            "teacher,csl2", "--out", str(tmp_path / "r"), "--quiet", "--no-plots"]
    rc, io = _run(args, capsys)
    assert rc == 2 and "opencv-contrib-python-headless" in io.err and "--superpixels-impl skimage" in io.err
    assert "Traceback" not in io.err
    assert _run(args + ["--superpixels-impl", "skimage"], capsys)[0] == 0  # the reference still runs


def test_speed_superpixels_rows(tmp_path, capsys):
    from posthoc.bench import speed_superpixels

    out = tmp_path / "sp.json"
    assert speed_superpixels.main(["--sizes", "32x64", "--repeat", "1", "--n-segments", "20",
                                   "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = res["sizes"][0]["rows"]
    want = speed_superpixels.ROWS if ximgproc_available() else [r for r in speed_superpixels.ROWS if r[1] == "skimage"]
    assert [(r["method"], r["impl"]) for r in rows] == list(want)
    assert all(r["ms"] > 0 and r["regions"] >= 1 for r in rows) and rows[0]["speedup_vs_skimage_slic"] == 1.0
    assert "vs skimage SLIC" in capsys.readouterr().out
    assert speed_superpixels.main(["--repeat", "0"]) == 2
    with pytest.raises(SystemExit):
        speed_superpixels.main(["--sizes", "4x4"])
