"""posthoc-bench speed's chain rows (issue 10): structure and formatting on tiny images, no timing asserts."""
import json

import pytest
import torch

from posthoc.bench import speed, speed_chain


@pytest.fixture(scope="module")
def rows():
    return speed_chain.bench_chain(32, 64, "cpu", repeats=1, fallback_repeats=1)


def test_every_op_has_a_row_with_a_floor(rows):
    ops = [r["op"] for r in rows]
    for op in speed_chain.CHAIN_TARGETS:
        assert op in ops
    assert ops.count("offset_resample") == 4 and ops.count("chain") == 2
    for r in rows:
        assert r["ours_ms"] > 0 and r["floor_ms"] > 0 and r["bandwidth_GBps"] > 0
        assert r["ours_over_floor"] == pytest.approx(r["ours_ms"] / r["floor_ms"])
        assert r["bytes"] > 0
    byop = {(r["op"], r["shape"]): r for r in rows}
    # the floor counts the bytes of the definitions (32x64: P = 2048 pixels)
    P = 32 * 64
    assert byop[("offsets_from_proposals", "100 regions 32x64")]["bytes"] == P * 4 + 3 * P * 4
    assert byop[("split_components", "100 regions 32x64")]["bytes"] == P * 4 + P * 8
    assert byop[("soft_assign(size=)", "N=32 8x16 -> 32x64")]["bytes"] == 32 * P * 4
    assert byop[("fuse e2e", "C=1 N=100 32x64")]["fallback_ms"] is not None


def test_tables(rows):
    txt = speed_chain.format_chain_table(rows)
    assert "offsets_from_proposals" in txt and "chain" in txt and "ours/fl" in txt
    md = speed_chain.format_chain_markdown(rows)
    assert md.count("\n") == len(rows) + 2 and md.startswith("| op |")


def test_blob_masks_are_probabilities():
    r, v = speed_chain.blob_masks(2, 5, 16, 24, seed=1)
    assert r.shape == (2, 5, 16, 24) and v.shape == (2, 5)
    assert float(r.min()) >= 0 and float(r.max()) <= 1 and r.dtype == torch.float32


def test_cli_only_chain_writes_json_and_markdown(tmp_path, monkeypatch):
    real = speed_chain.bench_chain
    monkeypatch.setattr(speed_chain, "bench_chain", lambda *a, **k: real(
        32, 64, "cpu", repeats=1, fallback_repeats=1, with_fallback=False))
    out, md = tmp_path / "s.json", tmp_path / "s.md"
    assert speed.main(["--only", "chain", "--device", "cpu", "--repeats", "1", "--out", str(out),
                       "--markdown", str(md)]) == 0
    payload = json.loads(out.read_text())
    assert payload["rows"] == [] and len(payload["chain_rows"]) == 13
    assert all(r["fallback_ms"] is None for r in payload["chain_rows"])
    assert "| chain |" in md.read_text()
