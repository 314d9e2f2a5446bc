"""The bundled models (adapters/bundled): manifest, ONNX contracts, and a sanity check on the synthetic world."""
import json

import numpy as np
import pytest

from posthoc.adapters import bundled
from posthoc.bench import synthetic as syn

ort = pytest.importorskip("onnxruntime")

NAMES = ("segnet", "obsnet", "sml", "msp", "maxlogit", "entropy", "energy", "csl")
ROLES = {
    "segnet": {"model"},
    "obsnet": {"segmenter", "observer"},
    "sml": {"model", "stats"},
    "msp": {"model"},
    "entropy": {"model"},
    "maxlogit": {"model", "calibration"},
    "energy": {"model", "calibration"},
    "csl": {"model"},
}
META_KEYS = {"mean", "std", "channel_order", "input_size"}


def _manifest():
    p = bundled.BUNDLED_DIR / "manifest.json"
    if not p.exists():
        pytest.fail(f"{p} is missing: run the scripts in docs/training.md")
    return json.loads(p.read_text())


def _session(name):
    return ort.InferenceSession(str(bundled.BUNDLED_DIR / name), providers=["CPUExecutionProvider"])


def _normalize(images_u8, meta):
    x = images_u8.astype(np.float32) / 255.0
    x = (x - np.array(meta["mean"], np.float32)) / np.array(meta["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _frames(n, track="anomaly", anomalies=True):
    meta = _manifest()["segnet"]["meta"]
    h, w = meta["input_size"]
    frs = [syn.render_frame([123, i], (h, w), track=track, anomalies=anomalies) for i in range(n)]
    return frs, meta


def test_manifest_complete_and_files_present():
    man = _manifest()
    assert set(NAMES) <= set(man)
    for name in NAMES:
        entry = man[name]
        assert set(entry) - {"meta"} == ROLES[name], name
        meta = entry["meta"]
        assert META_KEYS <= set(meta), name
        assert meta["channel_order"] == "RGB"
        assert len(meta["mean"]) == 3 and len(meta["std"]) == 3 and all(s > 0 for s in meta["std"])
        assert len(meta["input_size"]) == 2
        if name != "csl":
            assert meta["class_names"] == list(syn.CLASS_NAMES)
        w = bundled.default_weights(name)
        for role in ROLES[name]:
            assert w[role].is_file(), (name, role)
        assert isinstance(w["meta"], dict)
    total = sum(p.stat().st_size for p in bundled.BUNDLED_DIR.iterdir() if p.suffix in (".onnx", ".json"))
    assert total < 8 * 2**20  # "a few MB"


def test_default_weights_unknown_name():
    with pytest.raises(bundled.NoBundledWeightsError, match="no bundled weights for 'nope'"):
        bundled.default_weights("nope")


def test_segnet_contract():
    meta = _manifest()["segnet"]["meta"]
    h, w = meta["input_size"]
    s = _session("segnet.onnx")
    assert [i.name for i in s.get_inputs()] == ["image"]
    assert [o.name for o in s.get_outputs()] == ["logits", "features"]
    logits, feats = s.run(None, {"image": np.zeros((2, 3, h, w), np.float32)})
    assert logits.shape == (2, len(syn.CLASS_NAMES), h, w)
    assert feats.ndim == 4 and feats.shape[0] == 2
    assert np.isfinite(logits).all() and np.isfinite(feats).all()


def test_observer_contract():
    meta = _manifest()["obsnet"]["meta"]
    h, w = meta["input_size"]
    seg, obs = _session("segnet.onnx"), _session("observer.onnx")
    assert {i.name for i in obs.get_inputs()} == {"image", "features"}
    assert [o.name for o in obs.get_outputs()] == ["logit"]
    x = np.random.default_rng(0).normal(size=(2, 3, h, w)).astype(np.float32)
    _, feats = seg.run(None, {"image": x})
    (logit,) = obs.run(None, {"image": x, "features": feats})
    assert logit.shape == (2, 1, h, w) and np.isfinite(logit).all()


def test_csl_rpn_contract():
    meta = _manifest()["csl"]["meta"]
    h, w = meta["input_size"]
    s = _session("csl_rpn.onnx")
    assert [i.name for i in s.get_inputs()] == ["image"]
    assert [o.name for o in s.get_outputs()] == ["region_scores", "validity"]
    x = np.random.default_rng(1).normal(size=(2, 3, h, w)).astype(np.float32)
    r, v = s.run(None, {"image": x})
    assert r.ndim == 4 and r.shape[:2] == v.shape and r.shape[0] == 2
    assert r.shape[1] == meta["num_queries"]
    assert 0 <= r.min() and r.max() <= 1 and 0 <= v.min() and v.max() <= 1


def test_stats_and_calibration_files():
    man = _manifest()
    stats = json.loads((bundled.BUNDLED_DIR / man["sml"]["stats"]).read_text())
    assert stats["format"] == "posthoc.sml_stats"
    k = len(syn.CLASS_NAMES)
    assert len(stats["mean"]) == k and len(stats["var"]) == k and all(v > 0 for v in stats["var"])
    assert stats["calibration"]["format"] == "posthoc.calibration"
    for name in ("maxlogit", "energy"):
        cal = json.loads((bundled.BUNDLED_DIR / man[name]["calibration"]).read_text())
        assert cal["format"] == "posthoc.calibration" and cal["score"] == name
        assert np.isfinite(cal["shift"]) and cal["scale"] > 0


def test_segnet_beats_chance_on_generated_frames():
    frs, meta = _frames(4, anomalies=False)
    x = _normalize(np.stack([f.image for f in frs]), meta)
    logits, _ = _session("segnet.onnx").run(None, {"image": x})
    pred = logits.argmax(1)
    cls = np.stack([f.classes for f in frs])
    valid = cls != 255
    acc = (pred == cls)[valid].mean()
    majority = np.bincount(cls[valid]).max() / valid.sum()
    assert acc > max(0.6, majority + 0.15), (acc, majority)
    # road, the class every frame has, is found
    road = cls == syn.ROAD
    assert (pred[road] == syn.ROAD).mean() > 0.7


def test_csl_proposals_cover_regions():
    """Soft assignment of the RPN's regions separates the road from the sky better than one region would."""
    frs, _meta = _frames(3, anomalies=False)
    x = _normalize(np.stack([f.image for f in frs]), _manifest()["csl"]["meta"])
    r, v = _session("csl_rpn.onnx").run(None, {"image": x})
    lab = (r * v[..., None, None]).argmax(1)  # CSL Eq. 2 at the RPN's resolution
    for i, f in enumerate(frs):
        cls = f.classes[::2, ::2][: lab.shape[1], : lab.shape[2]]
        road, sky = lab[i][cls == syn.ROAD], lab[i][cls == syn.SKY]
        assert len(np.unique(lab[i])) >= 3
        if len(road) and len(sky):
            top_road = np.bincount(road).argmax()
            assert (sky == top_road).mean() < 0.2


def test_observer_flags_anomalies_more_than_known_pixels():
    frs, meta = _frames(6)
    x = _normalize(np.stack([f.image for f in frs]), meta)
    _logits, feats = _session("segnet.onnx").run(None, {"image": x})
    (logit,) = _session("observer.onnx").run(None, {"image": x, "features": feats})
    p = 1 / (1 + np.exp(-logit[:, 0]))
    sem = np.stack([f.label for f in frs])
    assert (sem == 1).any()
    assert p[sem == 1].mean() > p[sem == 0].mean() + 0.05
