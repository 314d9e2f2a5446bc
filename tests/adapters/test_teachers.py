"""Teachers: ONNX/torch wrappers, named teachers, score teachers, calibration, SML, errors.

Every model here is a small random-init torch net built in the test and, where ONNX
is under test, exported with torch.onnx.export into a temporary folder.
"""
from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import torch

from posthoc.adapters import _image as I
from posthoc.adapters import get_teacher
from posthoc.adapters import onnx_runtime as O
from posthoc.adapters import teachers as T
from posthoc.errors import DTypeError, MissingExtraError, ShapeError, ValueRangeError
from posthoc.types import TeacherOutput

K = 5


# ----------------------------------------------------------------------------- models


class SegNet(torch.nn.Module):
    """Tiny semantic net: image (B,3,H,W) -> logits (B,K,H,W), features (B,8,H/2,W/2)."""

    def __init__(self, k: int = K) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Conv2d(8, k, 1)

    def forward(self, x):
        f = torch.relu(self.c1(x))
        return self.head(f), torch.nn.functional.avg_pool2d(f, 2)


class Observer(torch.nn.Module):
    """ObsNet-style observer: (image, features) -> logit (B,1,h,w)."""

    def __init__(self) -> None:
        super().__init__()
        self.ci = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.cf = torch.nn.Conv2d(8, 4, 1)
        self.out = torch.nn.Conv2d(4, 1, 1)

    def forward(self, image, features):
        f = torch.nn.functional.interpolate(self.cf(features), size=image.shape[-2:], mode="bilinear",
                                            align_corners=False)
        return self.out(torch.relu(self.ci(image) + f))


class ConfidenceNet(torch.nn.Module):
    """Logits whose confidence is set by the red channel: l_0 = 8*(2r-1), l_k = 0 otherwise.

    r near 1: confident class 0; r = 0.5: all logits equal (maximally uncertain).
    """

    def forward(self, x):
        r = x[:, :1]
        return torch.cat([8.0 * (2 * r - 1), torch.zeros_like(r).expand(-1, K - 1, -1, -1)], dim=1)


def _export(module, args, path, input_names, output_names, dynamic=True):
    """torch.onnx.export with the TorchScript exporter (fast); the dynamo exporter as fallback."""
    dyn = None
    if dynamic:
        dyn = {n: {0: "b", 2: "h", 3: "w"} for n in input_names if n == "image"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=input_names,
                              output_names=output_names, dynamic_axes=dyn)
        except TypeError:  # a torch without the legacy exporter
            torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("teachers")
    seg = SegNet().eval()
    obs = Observer().eval()
    x = torch.rand(1, 3, 16, 16)
    out = {
        "seg": seg,
        "obs": obs,
        "seg_onnx": _export(seg, (x,), d / "seg.onnx", ["image"], ["logits", "features"]),
        "seg_fixed": _export(seg, (x,), d / "seg_fixed.onnx", ["image"], ["logits", "features"], dynamic=False),
        "obs_onnx": None,
        "dir": d,
    }
    feats = seg(x)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(obs, (x, feats), str(d / "obs.onnx"), dynamo=False, input_names=["image", "features"],
                          output_names=["logit"],
                          dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}, "features": {0: "b", 2: "fh", 3: "fw"}})
    out["obs_onnx"] = d / "obs.onnx"
    return out


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)


def _ref_semantic(module, images_u8, size=None, mean=I.IMAGENET_MEAN, std=I.IMAGENET_STD):
    """Reference: the textbook preprocessing written out by hand."""
    x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255.0
    hw = x.shape[-2:]
    if size is not None:
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        lg = module(x)[0] if isinstance(module(x), tuple) else module(x)
    return torch.nn.functional.interpolate(lg, size=hw, mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------- image plumbing


def test_to_float_batch_layouts_agree_and_do_not_modify(images):
    before = images.copy()
    a = I.to_float_batch(images)
    b = I.to_float_batch(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    assert a.shape == (2, 3, 20, 24) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    a.mul_(0)  # a new tensor: the caller's array is untouched
    np.testing.assert_array_equal(images, before)
    f = torch.rand(1, 3, 4, 4)
    g = I.to_float_batch(f)
    g.add_(1)
    assert float(f.max()) <= 1.0


@pytest.mark.parametrize(
    "bad, err, msg",
    [
        (np.zeros((20, 24, 3), np.uint8), ShapeError, "batch axis"),
        (np.zeros((1, 3, 4, 4), np.uint8), ShapeError, "(B,H,W,3)"),
        (torch.zeros(1, 4, 4, 3), ShapeError, "(B,3,H,W)"),
        (torch.full((1, 3, 4, 4), 255.0), ValueRangeError, "uint8"),
        (torch.full((1, 3, 2, 2), float("nan")), ValueRangeError, "NaN"),
        (np.zeros((1, 4, 4, 3), np.int16), DTypeError, "int16"),
        ([[1, 2, 3]], DTypeError, "list"),
    ],
)
def test_to_float_batch_errors(bad, err, msg):
    with pytest.raises(err, match=None) as e:
        I.to_float_batch(bad)
    assert msg in str(e.value)


def test_normalize_bgr_and_pixel_scale():
    x = torch.rand(1, 3, 2, 2)
    y = I.normalize(x, T.MMSEG_MEAN, T.MMSEG_STD, "BGR")
    ref = (x.flip(1) * 255 - torch.tensor(T.MMSEG_MEAN).view(1, 3, 1, 1)) / torch.tensor(T.MMSEG_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(y, ref)
    with pytest.raises(ValueRangeError, match="channel_order"):
        I.normalize(x, channel_order="RGBA")
    with pytest.raises(ValueRangeError, match="std"):
        I.normalize(x, (0, 0, 0), (1, 0, 1))


# ----------------------------------------------------------------------------- ONNX vs torch


def test_onnx_equals_torch_module(models, images):
    ot = T.OnnxTeacher(models["seg_onnx"], class_names=list("abcde"))
    tt = T.TorchTeacher(models["seg"], class_names=list("abcde"))
    a, b = ot(images), tt(images)
    assert isinstance(a, TeacherOutput) and a.kind == b.kind == "semantic"
    assert a.scores.shape == (2, K, 20, 24) and a.class_names == list("abcde")
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.scores, _ref_semantic(models["seg"], images), atol=1e-5, rtol=1e-5)
    assert set(a.features) == {"features"} and a.features["features"].shape == (2, 8, 10, 12)
    # float (B,3,H,W) input gives the same as uint8
    f = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(ot(f).scores, a.scores)


def test_batched_equals_per_image(models, images):
    ot = T.OnnxTeacher(models["seg_onnx"])
    full = ot(images).scores
    for i in range(2):
        torch.testing.assert_close(ot(images[i:i + 1]).scores, full[i:i + 1], atol=1e-5, rtol=1e-5)


def test_edge_sizes(models):
    ot = T.OnnxTeacher(models["seg_onnx"])
    assert ot(np.full((1, 1, 1, 3), 7, np.uint8)).scores.shape == (1, K, 1, 1)  # a 1x1 image
    tiny = np.full((1, 2, 2, 3), 7, np.uint8)  # (the torch test net's 2x2 pooling needs 2x2)
    torch.testing.assert_close(ot(tiny).scores, T.TorchTeacher(models["seg"])(tiny).scores, atol=1e-5, rtol=1e-5)
    with pytest.raises(ShapeError, match="empty batch"):
        ot(np.zeros((0, 4, 4, 3), np.uint8))


def test_fixed_shape_model_resizes_and_loops(models, images):
    ot = T.OnnxTeacher(models["seg_fixed"])
    assert ot.runner.fixed_hw == (16, 16) and ot.runner.batch == 1
    imgs = np.concatenate([images, images[:1]])  # batch 3 through a batch-1 model
    out = ot(imgs)
    assert out.scores.shape == (3, K, 20, 24)
    ref = _ref_semantic(models["seg"], imgs, size=(16, 16))
    torch.testing.assert_close(out.scores, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ShapeError, match="fixed input size"):
        T.OnnxTeacher(models["seg_fixed"], input_size=(32, 32))(images)


def test_dynamic_model_with_input_size(models, images):
    out = T.OnnxTeacher(models["seg_onnx"], input_size=(8, 12))(images)
    assert out.scores.shape == (2, K, 20, 24)
    torch.testing.assert_close(out.scores, _ref_semantic(models["seg"], images, size=(8, 12)), atol=1e-5, rtol=1e-5)


def test_anomaly_onnx_teacher_activation(models, images, tmp_path):
    class Anom(torch.nn.Module):
        def forward(self, x):
            return x[:, :1] * 6 - 3  # a logit

    p = _export(Anom(), (torch.rand(1, 3, 8, 8),), tmp_path / "anom.onnx", ["image"], ["logit"])
    with pytest.raises(ValueRangeError, match="activation='sigmoid'"):
        T.OnnxTeacher(p, kind="anomaly", mean=(0, 0, 0), std=(1, 1, 1))(images)
    out = T.OnnxTeacher(p, kind="anomaly", mean=(0, 0, 0), std=(1, 1, 1), activation="sigmoid")(images)
    assert out.kind == "anomaly" and out.scores.shape == (2, 1, 20, 24) and out.class_names == ["anomaly"]
    ref = torch.sigmoid(torch.from_numpy(images[..., 0]).float()[:, None] / 255 * 6 - 3)
    torch.testing.assert_close(out.scores, ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- errors


def test_io_binding_path_equals_plain_run(models):
    s = O.make_session(models["seg_onnx"], device="cpu")
    x = torch.rand(2, 3, 12, 10, dtype=torch.float64)  # cast to the declared float32 on the way in
    plain = O.run_session(s, {"image": x})
    bound = O.run_session(s, {"image": x}, io_binding=True)
    assert set(bound) == {"logits", "features"}
    for k in plain:
        torch.testing.assert_close(bound[k], plain[k])
    assert O.session_device(s).type == "cpu"


def test_sessions_do_not_spin_unless_asked(models, monkeypatch):
    key = "session.intra_op.allow_spinning"
    monkeypatch.delenv(O.SPINNING_ENV, raising=False)
    assert O.make_session(models["seg_onnx"], device="cpu").get_session_options().get_session_config_entry(key) == "0"
    on = O.make_session(models["seg_onnx"], device="cpu", allow_spinning=True)
    assert on.get_session_options().get_session_config_entry(key) == "1"
    monkeypatch.setenv(O.SPINNING_ENV, "1")
    assert O.make_session(models["seg_onnx"], device="cpu").get_session_options().get_session_config_entry(key) == "1"
    off = O.make_session(models["seg_onnx"], device="cpu", allow_spinning=False)  # the argument wins
    assert off.get_session_options().get_session_config_entry(key) == "0"


def test_missing_and_corrupt_onnx(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        T.OnnxTeacher(tmp_path / "nope.onnx")
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07not a model" * 50)
    with pytest.raises(O.OnnxModelError, match="corrupt.onnx") as e:
        T.OnnxTeacher(bad)
    assert "semantic segmentation model" in str(e.value)
    with pytest.raises(FileNotFoundError, match="not a file"):
        O.make_session(tmp_path)


def test_wrong_input_shape_and_dtype(models, images):
    ot = T.OnnxTeacher(models["seg_onnx"])
    with pytest.raises(ShapeError, match="batch axis"):
        ot(images[0])
    with pytest.raises(DTypeError, match="int32"):
        ot(images.astype(np.int32))
    s = O.make_session(models["seg_fixed"])
    with pytest.raises(ShapeError, match="fixed size 16 on axis 2"):
        O.run_session(s, {"image": np.zeros((1, 3, 8, 16), np.float32)})
    with pytest.raises(ShapeError, match="4 axes"):
        O.run_session(s, {"image": np.zeros((3, 16, 16), np.float32)})
    with pytest.raises(DTypeError, match="tensor\\(float\\)"):
        O.run_session(s, {"image": np.zeros((1, 3, 16, 16), np.int64)})
    with pytest.raises(O.OnnxModelError, match="missing \\['image'\\]"):
        O.run_session(s, {"img": np.zeros((1, 3, 16, 16), np.float32)})
    with pytest.raises(O.OnnxModelError, match="unknown ONNX output"):
        O.run_session(s, {"image": np.zeros((1, 3, 16, 16), np.float32)}, ["nope"])
    with pytest.raises(ShapeError, match="class_names"):
        T.OnnxTeacher(models["seg_onnx"], class_names=["a", "b"])
    with pytest.raises(ShapeError, match="no output"):
        T.OnnxTeacher(models["seg_onnx"], output_name="nope")


def test_missing_onnxruntime_names_the_extra(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'posthoc\[onnx\]'"):
        T.OnnxTeacher(models["seg_onnx"])
    with pytest.raises(MissingExtraError, match=r"posthoc\[onnx\]"):
        get_teacher("onnx", path=models["seg_onnx"])


def test_safe_weight_loading(models, tmp_path, images):
    from safetensors.torch import save_file

    sd = models["seg"].state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": sd, "meta": {"epoch": 3}}, tmp_path / "w.pt")
    fresh = SegNet()
    t1 = T.TorchTeacher(fresh, weights=tmp_path / "w.safetensors")
    torch.testing.assert_close(t1(images).scores, T.TorchTeacher(models["seg"])(images).scores)
    sd2 = T.load_state_dict(tmp_path / "w.pt")
    assert set(sd2) == set(sd)
    torch.save(models["seg"], tmp_path / "whole_module.pt")  # needs unpickling of SegNet
    with pytest.raises(T.UnsafeCheckpointError, match="state_dict") as e:
        T.load_state_dict(tmp_path / "whole_module.pt")
    assert "safetensors" in str(e.value)
    with pytest.raises(T.UnsafeCheckpointError):
        T.TorchTeacher(SegNet(), weights=tmp_path / "whole_module.pt")
    with pytest.raises(ShapeError, match="missing keys"):
        T.TorchTeacher(Observer(), weights=tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError):
        T.load_state_dict(tmp_path / "absent.pt")


# ----------------------------------------------------------------------------- score teachers


def _conf_images(r_values, h=6, w=8):
    """uint8 images whose red channel is constant per image (one value each)."""
    out = np.zeros((len(r_values), h, w, 3), np.uint8)
    for i, r in enumerate(r_values):
        out[i, ..., 0] = r
    return out


@pytest.mark.parametrize("score", ["msp", "entropy", "maxlogit", "energy"])
def test_score_teacher_polarity_and_range(score):
    net = ConfidenceNet()
    t = get_teacher(score, weights=net, mean=(0, 0, 0), std=(1, 1, 1))
    imgs = _conf_images([255, 200, 128])  # confident, less sure, uncertain
    if score in ("maxlogit", "energy"):
        with pytest.raises(T.NotFittedError, match="fit_calibration"):
            t(imgs)
        t.fit_calibration([_conf_images([255, 230, 210, 190])])
    out = t(imgs)
    assert out.kind == "anomaly" and out.scores.shape == (3, 1, 6, 8)
    s = out.scores[:, 0, 0, 0]
    assert float(out.scores.min()) >= 0 and float(out.scores.max()) <= 1
    assert s[0] < s[1] < s[2], s  # the less sure the model, the higher the anomaly score
    assert out.logits is not None and out.logits.shape == (3, K, 6, 8)


def test_score_values_match_definitions():
    lg = torch.randn(2, K, 3, 4)
    p = torch.softmax(lg, 1)
    torch.testing.assert_close(T.raw_score(lg, "msp"), 1 - p.max(1, keepdim=True).values)
    ent = -(p * p.log()).sum(1, keepdim=True) / np.log(K)
    torch.testing.assert_close(T.raw_score(lg, "entropy"), ent)
    torch.testing.assert_close(T.raw_score(lg, "maxlogit"), -lg.max(1, keepdim=True).values)
    torch.testing.assert_close(T.raw_score(lg, "energy"), -torch.logsumexp(lg, 1, keepdim=True))
    with pytest.raises(ValueRangeError, match="msp"):
        T.raw_score(lg, "nope")


def test_calibration_is_global_never_per_image(models):
    t = get_teacher("maxlogit", weights=ConfidenceNet(), mean=(0, 0, 0), std=(1, 1, 1))
    t.fit_calibration([_conf_images([255, 230, 210, 190])])
    confident = _conf_images([255])
    alone = t(confident).scores
    # A per-image min-max would stretch a constant, confident image to 0 or 1 and depend on the batch.
    assert float(alone.max()) < 0.5
    mixed = t(np.concatenate([confident, _conf_images([128])])).scores
    torch.testing.assert_close(mixed[:1], alone)
    # and it is exactly the stored sigmoid of the raw score
    raw = -torch.full((1, 1, 6, 8), 8.0)
    torch.testing.assert_close(alone, torch.sigmoid((raw - t.calibration.shift) / t.calibration.scale))


def test_fit_sigmoid_calibration_quantile_and_platt(tmp_path):
    r = torch.linspace(0, 1, 10001)
    c = T.fit_sigmoid_calibration(r, score="maxlogit")
    q = torch.quantile(r.double(), torch.tensor([0.5, 0.99], dtype=torch.float64))
    torch.testing.assert_close(c(q.float()), torch.tensor([0.1, 0.5]), atol=1e-5, rtol=0)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(200000, generator=g) * 2
    y = (torch.rand(200000, generator=g) < torch.sigmoid((s - 1.0) / 0.5)).long()
    y[:100] = 255  # void is ignored
    c2 = T.fit_sigmoid_calibration(s, y, balanced=False)
    assert c2.fit["mode"] == "platt"
    assert abs(c2.shift - 1.0) < 0.05 and abs(c2.scale - 0.5) < 0.05
    with pytest.raises(T.CalibrationError, match="polarity"):
        T.fit_sigmoid_calibration(-s, y, balanced=False)
    with pytest.raises(T.CalibrationError, match="equal"):
        T.fit_sigmoid_calibration(torch.ones(100))
    # JSON round trip
    p = c2.save(tmp_path / "cal.json")
    d = json.loads(p.read_text())
    assert d["format"] == "posthoc.calibration" and d["method"] == "sigmoid"
    c3 = T.load_calibration(p)
    assert (c3.shift, c3.scale) == (c2.shift, c2.scale)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(T.CalibrationError, match="not valid JSON"):
        T.load_calibration(tmp_path / "bad.json")
    with pytest.raises(T.CalibrationError, match="scale > 0"):
        T.SigmoidCalibration(0.0, -1.0)


def test_score_teacher_calibration_save_load(tmp_path, models, images):
    t = get_teacher("energy", weights=models["seg_onnx"])
    t.fit_calibration([images])
    p = t.save_calibration(tmp_path / "energy.json")
    t2 = get_teacher("energy", weights={"model": models["seg_onnx"], "calibration": p})
    torch.testing.assert_close(t2(images).scores, t(images).scores)
    with pytest.raises(T.CalibrationError, match="fitted for score"):
        get_teacher("maxlogit", weights=models["seg_onnx"], calibration=p)


# ----------------------------------------------------------------------------- SML


def test_sml_fit_save_load_roundtrip(tmp_path, models, images):
    t = get_teacher("sml", weights=models["seg"], boundary_suppression=False, dilated_smoothing=False)
    with pytest.raises(T.NotFittedError):
        t(images)
    frames = [images[:1], images[1:]]
    t.fit(iter(frames))  # an iterator is consumed once and kept for the calibration pass
    # statistics are the per-predicted-class mean / unbiased variance of the max logit
    lg = T.TorchTeacher(models["seg"])(images).scores
    mx, pred = lg.max(1)
    for c in range(K):
        v = mx[pred == c].double()
        if v.numel() > 1:
            assert abs(float(t.mean[c]) - float(v.mean())) < 1e-6
            assert abs(float(t.var[c]) - float(v.var())) < 1e-6
    out = t(images)
    assert out.kind == "anomaly" and out.scores.shape == (2, 1, 20, 24) and out.logits.shape == (2, K, 20, 24)
    sml = (mx - t.mean.float()[pred]) / t.var.float().sqrt()[pred]
    torch.testing.assert_close(out.scores[:, 0], t.calibration(-sml), atol=1e-5, rtol=1e-5)
    p = t.save_stats(tmp_path / "sml.json")
    d = json.loads(p.read_text())
    assert d["format"] == "posthoc.sml_stats" and len(d["mean"]) == K and d["calibration"]["score"] == "sml"
    t2 = get_teacher("sml", weights={"model": models["seg_onnx"], "stats": p})
    torch.testing.assert_close(t2(images).scores, out.scores, atol=1e-5, rtol=1e-5)
    t3 = get_teacher("sml", weights=models["seg"]).load_stats(p)
    assert t3.boundary_suppression is False
    # statistics without a calibration (e.g. converted from the official .npy files): fit only the calibration
    d_nocal = dict(d, calibration=None)
    t4 = get_teacher("sml", weights=models["seg"], stats=d_nocal)
    with pytest.raises(T.NotFittedError, match="calibration"):
        t4(images)
    from collections import namedtuple

    Frame = namedtuple("Frame", "image label classes")  # the shape of posthoc.bench.datasets.Frame
    frame = Frame(images[1], np.zeros((20, 24), np.uint8), np.zeros((20, 24), np.uint8))
    t4.fit_calibration([(images[0], np.zeros((20, 24), np.uint8)), images[1], frame])  # single frames
    with pytest.raises(TypeError, match="frame with .image and .label"):
        t4.fit_calibration([{"image": images[1]}])
    torch.testing.assert_close(t4.mean, t.mean)
    assert t4.calibration.fit["mode"] == "quantile"
    d["mean"] = d["mean"][:2]
    (tmp_path / "short.json").write_text(json.dumps(d))
    with pytest.raises(T.CalibrationError, match="equal-length"):
        t3.load_stats(tmp_path / "short.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(T.CalibrationError, match="posthoc.sml_stats"):
        t3.load_stats(tmp_path / "other.json")


def test_sml_polarity_and_postprocessing():
    pytest.importorskip("posthoc.scores")
    t = get_teacher("sml", weights=ConfidenceNet(), mean=(0, 0, 0), std=(1, 1, 1))
    assert t.boundary_suppression and t.dilated_smoothing
    rng = np.random.default_rng(1)
    train = np.zeros((4, 16, 16, 3), np.uint8)
    train[..., 0] = rng.integers(170, 256, (4, 16, 16))
    t.fit([train])
    img = np.zeros((1, 64, 64, 3), np.uint8)
    img[..., 0] = 250
    img[:, 16:48, 16:48, 0] = 128  # an uncertain square in a confident scene
    s = t(img).scores[0, 0]
    assert float(s[32, 32]) > float(s[2, 2]) + 0.5
    # dilated smoothing spreads the square: just outside it the score is lifted above the far background
    assert float(s[32, 12]) > float(s[2, 2]) + 1e-3


# ----------------------------------------------------------------------------- named teachers


def test_obsnet_onnx_and_torch_agree(models, images):
    w = {"segmenter": models["seg_onnx"], "observer": models["obs_onnx"]}
    t = get_teacher("obsnet", weights=w, input_size=(16, 20))
    out = t(images)
    assert out.kind == "anomaly" and out.scores.shape == (2, 1, 20, 24) and out.logits.shape == (2, K, 20, 24)
    # reference: ImageNet normalization at 16x20, observer(image, features), one sigmoid, upsample
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(16, 20), mode="bilinear", align_corners=False)
    x = (x - torch.tensor(I.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(I.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        _, f = models["seg"](x)
        ref = torch.sigmoid(models["obs"](x, f))
    ref = torch.nn.functional.interpolate(ref, size=(20, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.scores, ref, atol=1e-5, rtol=1e-5)
    tt = T.ObsNetTeacher(weights={"segmenter": models["seg"], "observer": models["obs"]}, input_size=(16, 20),
                         observer_fn=lambda obs, img, raw: obs(img, raw[1]))
    torch.testing.assert_close(tt(images).scores, out.scores, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueRangeError, match="segmenter"):
        T.ObsNetTeacher(weights={"observer": models["obs_onnx"]})


def test_obsnet_default_input_size_is_1024x512(models):
    t = T.ObsNetTeacher(weights={"segmenter": models["seg_onnx"], "observer": models["obs_onnx"]})
    assert t.input_size == (512, 1024)


def test_dacup_batch_of_one_input_in_unit_range(images):
    seen = []

    class Dacup(torch.nn.Module):
        def forward(self, x):
            if x.shape[0] != 1:
                raise RuntimeError("DaCUP runs on a batch of 1")
            seen.append((float(x.min()), float(x.max())))
            return {"anomaly_score": x[:, 1:2] * 0.5 + 0.25, "segmentation": x.repeat(1, 2, 1, 1)[:, :K]}

    t = get_teacher("dacup", weights=Dacup(), logits_name="segmentation")
    out = t(images)
    assert len(seen) == 2 and all(0 <= lo and hi <= 1 for lo, hi in seen)
    assert out.scores.shape == (2, 1, 20, 24) and out.logits.shape == (2, K, 20, 24)
    ref = torch.from_numpy(images[..., 1]).float()[:, None] / 255 * 0.5 + 0.25
    torch.testing.assert_close(out.scores, ref, atol=1e-6, rtol=1e-6)


def test_dacup_onnx_fixed_batch_of_one(images, tmp_path):
    class Dacup(torch.nn.Module):
        def forward(self, x):
            return torch.sigmoid(x[:, 1:2] * 4 - 2)

    p = _export(Dacup(), (torch.rand(1, 3, 20, 24),), tmp_path / "dacup.onnx", ["image"], ["anomaly_score"],
                dynamic=False)
    t = get_teacher("dacup", weights=p)
    assert t.runner.batch == 1 and t.runner.fixed_hw == (20, 24)
    out = t(images)
    ref = torch.sigmoid(torch.from_numpy(images[..., 1]).float()[:, None] / 255 * 4 - 2)
    torch.testing.assert_close(out.scores, ref, atol=1e-5, rtol=1e-5)


def test_zegformer_class_maps_with_seen_calibration(images, tmp_path):
    Q, names = 4, ["road", "car", "sky", "giraffe", "zebra"]

    class Zeg(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cls = torch.nn.Parameter(torch.randn(Q, len(names) + 1))
            self.mask = torch.nn.Conv2d(3, Q, 3, padding=1)

        def forward(self, x):
            return {"pred_logits": self.cls[None].expand(x.shape[0], -1, -1),
                    "pred_masks": torch.nn.functional.avg_pool2d(self.mask(x), 2)}

    torch.manual_seed(0)
    m = Zeg().eval()
    t = get_teacher("zegformer", weights=m, class_names=names, unseen_classes=["giraffe", "zebra"],
                    gzero_calibrate=0.1)
    out = t(images)
    assert out.kind == "semantic" and out.scores.shape == (2, 5, 20, 24) and out.class_names == names
    t0 = T.ZegFormerTeacher(weights=m, class_names=names, seen_classes=["road", "car", "sky"], gzero_calibrate=0)
    raw = t0(images).scores
    diff = raw - out.scores
    torch.testing.assert_close(diff[:, :3], torch.full_like(diff[:, :3], 0.1))
    torch.testing.assert_close(diff[:, 3:], torch.zeros_like(diff[:, 3:]))
    # the class maps are sum_q softmax(cls)[q,c] * sigmoid(mask_q)
    x = I.normalize(I.to_float_batch(images), T.MMSEG_MEAN, T.MMSEG_STD)
    with torch.no_grad():
        o = m(x)
        mk = torch.nn.functional.interpolate(o["pred_masks"], size=(20, 24), mode="bilinear", align_corners=False)
        ref = torch.einsum("bqc,bqhw->bchw", o["pred_logits"].softmax(-1)[..., :-1], mk.sigmoid())
    torch.testing.assert_close(raw, ref, atol=1e-5, rtol=1e-5)
    # the same model exported to ONNX (outputs named pred_logits / pred_masks) gives the same maps
    class ZegTuple(torch.nn.Module):
        def __init__(self, z):
            super().__init__()
            self.z = z

        def forward(self, x):
            o = self.z(x)
            return o["pred_logits"], o["pred_masks"]

    p = _export(ZegTuple(m), (torch.rand(1, 3, 16, 16),), tmp_path / "zeg.onnx", ["image"],
                ["pred_logits", "pred_masks"])
    t_onnx = get_teacher("zegformer", weights=p, class_names=names, unseen_classes=["giraffe", "zebra"])
    torch.testing.assert_close(t_onnx(images).scores, out.scores, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueRangeError, match="not in class_names"):
        T.ZegFormerTeacher(weights=m, class_names=names, seen_classes=["cat"])
    with pytest.raises(ValueRangeError, match="seen_classes or unseen_classes"):
        T.ZegFormerTeacher(weights=m, class_names=names)


def test_daformer_whole_image_mmseg_preprocessing(images):
    torch.manual_seed(0)
    net = SegNet(k=19).eval()
    t = get_teacher("daformer", weights=net, input_size=(16, 20))
    out = t(images)
    assert out.kind == "semantic" and out.class_names == list(T.CITYSCAPES_CLASSES)
    # mmseg normalizes 0..255 pixels: (255x - mean)/std == (x - mean/255)/(std/255)
    ref = _ref_semantic(net, images, size=(16, 20), mean=tuple(m / 255 for m in T.MMSEG_MEAN),
                        std=tuple(s / 255 for s in T.MMSEG_STD))
    torch.testing.assert_close(out.scores, ref, atol=1e-4, rtol=1e-4)
    sm = T.DAFormerTeacher(weights=net, input_size=(16, 20), output="softmax")(images).scores
    torch.testing.assert_close(sm.sum(1), torch.ones(2, 20, 24))
    assert T.DAFormerTeacher(weights=net).base.input_size == (512, 1024)


# ----------------------------------------------------------------------------- bundled defaults


def test_bundled_default_missing_raises_clear_error(monkeypatch):
    from posthoc.adapters import bundled

    monkeypatch.setattr(bundled, "_manifest", dict)
    for name in ("sml", "obsnet", "msp", "maxlogit", "daformer"):
        with pytest.raises(bundled.NoBundledWeightsError, match="weights="):
            get_teacher(name)


def test_bundled_default_is_used(monkeypatch, models, tmp_path, images):
    import shutil

    from posthoc.adapters import bundled

    for f in ("seg_onnx", "obs_onnx"):
        shutil.copy(models[f], tmp_path / models[f].name)
    manifest = {"obsnet": {"segmenter": "seg.onnx", "observer": "obs.onnx",
                           "meta": {"class_names": list("abcde"), "input_size": [16, 20], "mean": [0.5] * 3,
                                    "std": [0.25] * 3, "channel_order": "RGB"}},
                "msp": {"model": "seg.onnx", "meta": {"class_names": list("abcde")}}}
    monkeypatch.setattr(bundled, "BUNDLED_DIR", tmp_path)
    monkeypatch.setattr(bundled, "_manifest", lambda: manifest)
    t = get_teacher("obsnet")
    assert t.input_size == (16, 20) and t.mean == (0.5, 0.5, 0.5)
    assert t.semantic_class_names == list("abcde")  # what the benchmark reads to pick refinement classes
    out = t(images)
    assert out.scores.shape == (2, 1, 20, 24)
    m = get_teacher("msp")
    assert m.semantic_class_names == list("abcde")


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_cuda_session_matches_cpu(models, images):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider")
    cpu = T.OnnxTeacher(models["seg_onnx"], device="cpu")(images).scores
    gpu_t = T.OnnxTeacher(models["seg_onnx"], device="cuda")
    out = gpu_t(torch.from_numpy(images).cuda())
    assert out.scores.is_cuda
    torch.testing.assert_close(out.scores.cpu(), cpu, atol=1e-4, rtol=1e-4)
