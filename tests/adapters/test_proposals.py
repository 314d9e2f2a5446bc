"""Proposal sources (adapters/proposals.py): shapes, semantics, ONNX == torch, registry, error branches."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from posthoc import Proposals, TeacherOutput
from posthoc.adapters import get_proposals, list_proposals
from posthoc.adapters import proposals as P
from posthoc.adapters.onnx_runtime import ModelFileNotFoundError, OnnxModelError
from posthoc.adapters.registry import UnknownAdapterError
from posthoc.errors import DTypeError, MissingExtraError, NonFiniteError, ShapeError, ValueRangeError

ALL = {"sam", "mask_transformer", "superpixels", "meanshift", "onnx", "csl"}

# the tests export small nets with torch's TorchScript exporter (dynamo=False: no onnxscript graph
# capture needed for these simple modules), which torch marks as deprecated
pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
]


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label maps induce the same partition (a bijection between labels)."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


# ----------------------------------------------------------------------------- registry


def test_registry_names():
    assert ALL <= set(list_proposals())


def test_unknown_name_lists_known():
    with pytest.raises(UnknownAdapterError, match="known proposal sources: .*superpixels"):
        get_proposals("no-such-source")


# ----------------------------------------------------------------------------- superpixels


def _two_color(B=2, H=48, W=64):
    img = np.zeros((B, H, W, 3), np.uint8)
    img[:, :, : W // 2] = (220, 30, 30)
    img[:, :, W // 2 :] = (20, 40, 200)
    return img


@pytest.mark.parametrize("method", ["slic", "felzenszwalb"])
def test_superpixels_cover_and_respect_edges(method):
    img = _two_color()
    src = get_proposals("superpixels", method=method, n_segments=12, scale=50.0, min_size=10)
    p = src(img)
    assert isinstance(p, Proposals)
    lab = np.asarray(p.labels)
    assert lab.shape == (2, 48, 64) and lab.dtype == np.int64
    assert lab.min() == 0  # every pixel covered
    for b in range(2):
        for n in np.unique(lab[b]):  # no superpixel crosses the colour edge
            cols = np.unique(np.nonzero(lab[b] == n)[1] < 32)
            assert len(cols) == 1
    assert p.region_scores is None and p.meta["method"] == method


def test_superpixels_float_input_equals_uint8_and_downscale():
    img = _two_color(1, 40, 80)
    src = get_proposals("superpixels", n_segments=8, max_side=20)
    a = src(img).labels
    b = src(torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255.0).labels
    assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    assert tuple(a.shape) == (1, 40, 80)


def test_superpixels_bad_settings_and_input():
    with pytest.raises(ValueRangeError, match="method must be"):
        get_proposals("superpixels", method="watershed")
    with pytest.raises(ValueRangeError, match="takes no weights"):
        get_proposals("superpixels", weights="x.onnx")
    src = get_proposals("superpixels")
    with pytest.raises(ShapeError, match=r"add a batch axis"):
        src(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DTypeError):
        src(np.zeros((1, 8, 8, 3), np.int16))


# ----------------------------------------------------------------------------- meanshift


def _quadrant_features(B=2, F=16, h=12, w=16, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(4, F, generator=g), dim=1)
    q = torch.zeros(h, w, dtype=torch.long)
    q[: h // 2, w // 2 :] = 1
    q[h // 2 :, : w // 2] = 2
    q[h // 2 :, w // 2 :] = 3
    f = centers[q].permute(2, 0, 1).unsqueeze(0).repeat(B, 1, 1, 1)
    return 3.0 * (f + noise * torch.randn(f.shape, generator=g)), q


def test_meanshift_source_paths():
    feats, q = _quadrant_features()
    img = np.zeros((2, 24, 32, 3), np.uint8)
    expect = torch.nn.functional.interpolate(q[None, None].float(), size=(24, 32), mode="nearest")[0, 0].long()
    src = get_proposals("meanshift", n_seeds=32)
    p1 = src(img, features=feats)
    p2 = src(img, TeacherOutput(scores=torch.zeros(2, 1, 24, 32), kind="anomaly", class_names=["anomaly"],
                                features={"emb": feats}))
    p3 = get_proposals("meanshift", embedder=lambda x: feats, n_seeds=32)(img)
    for p in (p1, p2, p3):
        lab = np.asarray(p.labels)
        assert lab.shape == (2, 24, 32) and lab.min() >= 0
        for b in range(2):
            assert _same_partition(lab[b], expect.numpy())


def test_meanshift_split_separates_components():
    # two far-apart blobs with the same embedding: one cluster, two components
    f = torch.zeros(1, 4, 10, 10)
    f[:, 0] = 1.0
    f[:, 1, 2:4, 2:4] = 10.0
    f[:, 1, 6:8, 6:8] = 10.0
    img = np.zeros((1, 10, 10, 3), np.uint8)
    joined = get_proposals("meanshift", split=False)(img, features=f).labels
    split = get_proposals("meanshift")(img, features=f).labels
    assert len(torch.unique(joined)) == 2 and len(torch.unique(split)) == 3


def test_meanshift_source_errors():
    img = np.zeros((1, 8, 8, 3), np.uint8)
    src = get_proposals("meanshift", feature_key="emb")
    with pytest.raises(ValueRangeError, match="needs per-pixel embeddings"):
        src(img)
    to = TeacherOutput(scores=torch.zeros(1, 1, 8, 8), kind="anomaly", class_names=["anomaly"],
                       features={"a": torch.zeros(1, 2, 8, 8), "b": torch.zeros(1, 2, 8, 8)})
    with pytest.raises(ValueRangeError, match="has no 'emb'"):
        src(img, to)
    with pytest.raises(ValueRangeError, match="choose one with feature_key"):
        get_proposals("meanshift")(img, to)
    with pytest.raises(ShapeError, match=r"\(B,F,h,w\) with B=1"):
        src(img, features=torch.zeros(2, 3, 8, 8))
    with pytest.raises(NonFiniteError):
        src(img, features=torch.full((1, 3, 8, 8), float("nan")))


# ----------------------------------------------------------------------------- mask transformer


class TinyMaskTransformer(nn.Module):
    """N queries: mask logits from a 1x1 conv over a small conv trunk, class logits from pooled features."""

    def __init__(self, n=5, k=3):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2))
        self.masks = nn.Conv2d(8, n, 1)
        self.cls = nn.Linear(8, n * (k + 1))
        self.n, self.k = n, k

    def forward(self, x):
        f = self.trunk(x)
        m = 4.0 * self.masks(f)
        c = self.cls(f.mean((2, 3))).reshape(x.shape[0], self.n, self.k + 1)
        return m, c


def test_mask_transformer_semantics():
    B, N, K, h, w = 2, 4, 3, 6, 8
    g = torch.Generator().manual_seed(1)
    m = torch.randn(B, N, h, w, generator=g) * 3
    c = torch.randn(B, N, K + 1, generator=g)
    m_in, c_in = m.clone(), c.clone()
    p = get_proposals("mask_transformer").from_outputs(m, c, size=(12, 16))
    assert torch.equal(m, m_in) and torch.equal(c, c_in)  # inputs untouched
    torch.testing.assert_close(p.region_scores, torch.sigmoid(m))
    torch.testing.assert_close(p.validity, 1 - torch.softmax(c, -1)[..., -1])
    assert p.class_logits.shape == (B, N, K + 1) and p.mask_logits.shape == (B, N, h, w)
    assert p.labels.shape == (B, 12, 16) and int(p.labels.min()) >= 0  # soft: every pixel covered


def test_mask_transformer_polarity():
    # query 0 covers the whole image but is probably "no object"; query 1 owns the left half
    # and is a confident object: it wins there, query 0 keeps the rest
    m = torch.full((1, 2, 8, 8), -5.0)
    m[0, 0] = 5.0
    m[0, 1, :, :4] = 5.0
    c = torch.tensor([[[0.0, 0.0, 1.0], [9.0, 0.0, 0.0]]])
    p = P.proposals_from_mask_transformer(m, c)
    assert float(p.validity[0, 0]) < 0.5 and float(p.validity[0, 1]) > 0.99
    left = p.labels[0, :, :4]
    right = p.labels[0, :, 4:]
    assert len(torch.unique(left)) == 1 and len(torch.unique(right)) == 1
    assert int(left[0, 0]) != int(right[0, 0])


def test_mask_transformer_callable_dict_and_onnx(tmp_path):
    net = TinyMaskTransformer().eval()
    img = np.random.default_rng(0).integers(0, 255, (2, 16, 20, 3), dtype=np.uint8)
    p_t = get_proposals("mask_transformer", model=net)(img)
    p_d = get_proposals("mask_transformer",
                        model=lambda x: dict(zip(("pred_masks", "pred_logits"), net(x), strict=False)))(img)
    torch.testing.assert_close(p_t.region_scores, p_d.region_scores)
    path = tmp_path / "m2f.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 16, 20),), str(path), input_names=["image"],
                      output_names=["pred_masks", "pred_logits"], dynamo=False,
                      dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}})
    p_o = get_proposals("mask_transformer", weights=str(path))(img)
    torch.testing.assert_close(p_o.region_scores, p_t.region_scores, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(p_o.class_logits, p_t.class_logits, atol=1e-5, rtol=1e-4)
    assert torch.equal(torch.as_tensor(p_o.labels), torch.as_tensor(p_t.labels))
    assert p_t.labels.shape == (2, 16, 20)


def test_mask_transformer_errors(tmp_path):
    with pytest.raises(ShapeError, match=r"class_logits must be \(B,N,K\+1\)"):
        P.proposals_from_mask_transformer(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4))
    with pytest.raises(ShapeError, match=r"mask_logits must be \(B,N,h,w\)"):
        P.proposals_from_mask_transformer(torch.zeros(3, 4, 4), torch.zeros(1, 3, 4))
    with pytest.raises(NonFiniteError):
        P.proposals_from_mask_transformer(torch.full((1, 2, 4, 4), float("nan")), torch.zeros(1, 2, 3))
    with pytest.raises(DTypeError, match="must be floating point"):
        P.proposals_from_mask_transformer(torch.zeros(1, 2, 4, 4, dtype=torch.long), torch.zeros(1, 2, 3))
    with pytest.raises(ValueRangeError, match="has no model"):
        get_proposals("mask_transformer")(np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(ValueRangeError, match="must hold 'pred_masks'"):
        get_proposals("mask_transformer", model=lambda x: {"masks": 1})(np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(DTypeError, match="must be a callable"):
        get_proposals("mask_transformer", model=3)


# ----------------------------------------------------------------------------- ONNX region proposals


class TinyRPN(nn.Module):
    """image (B,3,h,w) -> region_scores (B,N,h/2,w/2) in [0,1], validity (B,N) in [0,1]."""

    def __init__(self, n=6, logits=False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, n, 1))
        self.val = nn.Linear(n, n)
        self.logits = logits

    def forward(self, image):
        r = 3.0 * self.conv(image)
        v = self.val(r.mean((2, 3)))
        if self.logits:
            return r, v
        return torch.sigmoid(r), torch.sigmoid(v)


def _export(net, path, shape=(1, 3, 16, 20), dynamic=True, names=("region_scores", "validity")):
    torch.onnx.export(net, (torch.zeros(*shape),), str(path), input_names=["image"], output_names=list(names),
                      dynamo=False, dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}} if dynamic else None)
    return path


@pytest.fixture(scope="module")
def rpn_onnx(tmp_path_factory):
    return _export(TinyRPN().eval(), tmp_path_factory.mktemp("rpn") / "rpn.onnx")


def test_onnx_equals_torch(rpn_onnx):
    net = TinyRPN().eval()
    img = np.random.default_rng(1).integers(0, 255, (2, 16, 20, 3), dtype=np.uint8)
    p = get_proposals("onnx", path=rpn_onnx)(img)
    x = (torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) \
        / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        r, v = net(x)
    torch.testing.assert_close(p.region_scores, r, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(p.validity, v, atol=1e-5, rtol=1e-4)
    ref = P.proposals_from_soft(r, v, (16, 20))
    assert torch.equal(torch.as_tensor(p.labels), torch.as_tensor(ref.labels))
    assert p.labels.shape == (2, 16, 20) and int(p.labels.min()) >= 0
    assert p.meta["source"] == "onnx"


def test_onnx_labels_follow_weighted_argmax():
    # region 0 dominates the top half, region 1 the bottom half; region 2 is strong but invalid
    R = torch.zeros(1, 3, 4, 4)
    R[0, 0, :2] = 0.9
    R[0, 1, 2:] = 0.8
    R[0, 2] = 1.0
    V = torch.tensor([[0.9, 0.9, 0.1]])
    lab = P.proposals_from_soft(R, V, (8, 8)).labels[0]
    assert len(torch.unique(lab[:3])) == 1 and len(torch.unique(lab[5:])) == 1
    assert int(lab[0, 0]) != int(lab[-1, 0])


def test_onnx_fixed_size_meta_and_activation(tmp_path):
    path = _export(TinyRPN(logits=True).eval(), tmp_path / "fixed.onnx", shape=(1, 3, 16, 16), dynamic=False)
    img = np.random.default_rng(2).integers(0, 255, (1, 24, 40, 3), dtype=np.uint8)
    with pytest.raises(ValueRangeError, match="set the activation to 'sigmoid'"):
        get_proposals("onnx", path=path)(img)
    w = {"model": path, "meta": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    src = get_proposals("onnx", weights=w, scores_activation="sigmoid", validity_activation="sigmoid")
    assert src.input_size == (16, 16) and src.mean == (0.5, 0.5, 0.5)
    p = src(img)
    assert p.labels.shape == (1, 24, 40) and p.region_scores.shape == (1, 6, 8, 8)
    assert float(p.region_scores.min()) >= 0 and float(p.region_scores.max()) <= 1
    # the graph was exported with a fixed batch of 1: a batch of 3 runs in a loop, image by image
    img3 = np.concatenate([img, img[:, ::-1], img], 0).copy()
    p3 = src(img3)
    assert p3.region_scores.shape == (3, 6, 8, 8)
    torch.testing.assert_close(p3.region_scores[:1], p.region_scores)
    torch.testing.assert_close(p3.region_scores[2:], p.region_scores)


def test_onnx_errors(tmp_path, rpn_onnx):
    with pytest.raises(ModelFileNotFoundError, match="does not exist"):
        get_proposals("onnx", path=tmp_path / "missing.onnx")
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x01garbage that is not a protobuf" * 10)
    with pytest.raises(OnnxModelError, match="could not load"):
        get_proposals("onnx", path=bad)
    with pytest.raises(ValueRangeError, match="has no output 'scores'"):
        get_proposals("onnx", path=rpn_onnx, scores_name="scores")
    with pytest.raises(ValueRangeError, match="needs an ONNX file"):
        get_proposals("onnx")
    with pytest.raises(ValueRangeError, match="must be None or 'sigmoid'"):
        get_proposals("onnx", path=rpn_onnx, scores_activation="softmax")
    src = get_proposals("onnx", path=rpn_onnx)
    with pytest.raises(ShapeError):
        src(np.zeros((1, 16, 20), np.uint8))
    with pytest.raises(DTypeError, match="uint8 .* or floating point"):
        src(np.zeros((1, 16, 20, 3), np.int32))
    with pytest.raises(ValueRangeError, match=r"\[0,1\]"):
        src(torch.full((1, 3, 16, 20), 255.0))


def test_csl_uses_bundled_default(monkeypatch, rpn_onnx):
    from posthoc.adapters import bundled

    monkeypatch.setattr(bundled, "default_weights", lambda name: {"model": rpn_onnx, "meta": {"input_size": [16, 16]}})
    src = get_proposals("csl")
    assert src.input_size == (16, 16)
    p = src(np.zeros((1, 20, 20, 3), np.uint8))
    assert p.meta["source"] == "csl" and p.labels.shape == (1, 20, 20)


def test_csl_without_bundle_raises(monkeypatch):
    from posthoc.adapters import bundled

    def none(name):
        raise bundled.NoBundledWeightsError(f"no bundled weights for {name!r}")

    monkeypatch.setattr(bundled, "default_weights", none)
    with pytest.raises(bundled.NoBundledWeightsError, match="'csl'"):
        get_proposals("csl")


def test_missing_onnxruntime(monkeypatch, rpn_onnx):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'posthoc\[onnx\]'"):
        get_proposals("onnx", path=rpn_onnx)


# ----------------------------------------------------------------------------- SAM


def _tiny_sam(seed=0):
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    d = 32
    sam = Sam(
        image_encoder=ImageEncoderViT(depth=1, embed_dim=32, img_size=64, mlp_ratio=2, num_heads=2, patch_size=16,
                                      qkv_bias=True, use_rel_pos=False, global_attn_indexes=(), window_size=0,
                                      out_chans=d),
        prompt_encoder=PromptEncoder(embed_dim=d, image_embedding_size=(4, 4), input_image_size=(64, 64),
                                     mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=d, mlp_dim=64, num_heads=2),
                                 transformer_dim=d, iou_head_depth=2, iou_head_hidden_dim=16),
    )
    with torch.no_grad():  # a confident IoU head (0.9) and large logits, so masks survive the filters
        last = sam.mask_decoder.iou_prediction_head.layers[-1]
        last.weight.zero_()
        last.bias.fill_(0.9)
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(50.0)
    return sam.eval()


@pytest.fixture(scope="module")
def tiny_sam():
    pytest.importorskip("segment_anything")
    return _tiny_sam()


def test_sam_shapes_and_validity(tiny_sam):
    src = get_proposals("sam", model=tiny_sam, points_per_side=3, pred_iou_thresh=0.5, stability_score_thresh=0.0,
                        box_nms_thresh=1.0)
    img = np.random.default_rng(0).integers(0, 255, (2, 40, 56, 3), dtype=np.uint8)
    p = src(img)
    N = p.region_scores.shape[1]
    assert N > 0 and p.region_scores.shape == (2, N, 12, 16)  # low-res frame (16x16) cropped to the (46,64) input area
    assert p.validity.shape == (2, N)
    assert float(p.validity.max()) <= 1 and float(p.validity.min()) >= 0
    assert p.labels.shape == (2, 40, 56) and int(p.labels.min()) >= 0
    assert p.meta["points_per_side"] == 3


def test_sam_no_masks_leaves_pixels_unassigned(tiny_sam):
    src = get_proposals("sam", model=tiny_sam, points_per_side=2, pred_iou_thresh=1.0)  # IoU head says 0.9
    p = src(np.zeros((1, 24, 24, 3), np.uint8))
    assert p.region_scores.shape[:2] == (1, 0) and p.validity.shape == (1, 0)
    assert p.labels.shape == (1, 24, 24) and int(p.labels.max()) == -1


def test_sam_scores_are_the_predictor_logits(tiny_sam):
    from segment_anything import SamPredictor
    from segment_anything.utils.amg import calculate_stability_score

    img = np.random.default_rng(3).integers(0, 255, (1, 32, 48, 3), dtype=np.uint8)
    src = get_proposals("sam", model=tiny_sam, points_per_side=1, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                        box_nms_thresh=1.0)
    logits, val = src.masks(img[0])
    assert logits.shape[0] > 0
    pred = SamPredictor(tiny_sam)
    pred.set_image(img[0])
    with torch.no_grad():
        masks, iou, low = pred.predict(point_coords=np.array([[24.0, 16.0]]), point_labels=np.array([1]),
                                       multimask_output=True, return_logits=True)
    # the generator keeps the masks that do not touch the crop edge; compare those it kept
    lh, lw = logits.shape[-2:]
    ref = torch.as_tensor(low)[:, :lh, :lw]
    matched = [int(torch.argmin(((ref - lg) ** 2).flatten(1).sum(1))) for lg in logits]
    for lg, j in zip(logits, matched, strict=False):
        torch.testing.assert_close(lg, ref[j], atol=1e-4, rtol=1e-4)
    stab = calculate_stability_score(torch.as_tensor(masks), 0.0, 1.0)
    want = torch.as_tensor(iou).clamp(0, 1) * stab
    torch.testing.assert_close(val, want[matched], atol=1e-5, rtol=1e-5)


def test_sam_checkpoint_loading(tiny_sam, tmp_path, monkeypatch):
    import segment_anything as sa

    monkeypatch.setitem(sa.sam_model_registry, "vit_b", lambda checkpoint=None: _tiny_sam(seed=5))
    ck = tmp_path / "sam.pth"
    torch.save(tiny_sam.state_dict(), ck)
    kw = {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    img = np.random.default_rng(4).integers(0, 255, (1, 32, 32, 3), dtype=np.uint8)
    a = get_proposals("sam", checkpoint=ck, **kw)(img)
    b = get_proposals("sam", model=tiny_sam, **kw)(img)
    torch.testing.assert_close(a.region_scores, b.region_scores)
    # a pickled object is refused, with the safe alternative named
    evil = tmp_path / "evil.pth"
    torch.save({"model": tiny_sam}, evil)
    with pytest.raises(P.UnsafeCheckpointError, match="safetensors"):
        get_proposals("sam", checkpoint=evil)
    wrong = tmp_path / "wrong.pth"
    torch.save({"foo": torch.zeros(2)}, wrong)
    with pytest.raises(ValueRangeError, match="does not match SAM"):
        get_proposals("sam", checkpoint=wrong)


def test_sam_errors(tiny_sam, monkeypatch):
    with pytest.raises(ValueRangeError, match="needs weights"):
        get_proposals("sam")
    with pytest.raises(ValueRangeError, match="model_type must be one of"):
        get_proposals("sam", model_type="vit_x", checkpoint="x.pth")
    with pytest.raises(DTypeError, match="Sam module"):
        get_proposals("sam", model=nn.Linear(2, 2))
    with pytest.raises(ValueRangeError, match="points_per_side"):
        get_proposals("sam", model=tiny_sam, points_per_side=0)
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'posthoc\[sam\]'"):
        get_proposals("sam", model=tiny_sam)


# ----------------------------------------------------------------------------- checkpoints


def test_load_state_dict_safe(tmp_path):
    sd = {"w": torch.arange(4.0)}
    torch.save({"state_dict": sd}, tmp_path / "a.pth")
    assert torch.equal(P.load_state_dict(tmp_path / "a.pth")["w"], sd["w"])
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "b.safetensors"))
    assert torch.equal(P.load_state_dict(tmp_path / "b.safetensors")["w"], sd["w"])
    torch.save({"obj": nn.Linear(1, 1)}, tmp_path / "c.pth")
    with pytest.raises(P.UnsafeCheckpointError, match="refusing to unpickle"):
        P.load_state_dict(tmp_path / "c.pth")
    with pytest.raises(FileNotFoundError):
        P.load_state_dict(tmp_path / "none.pth")
    (tmp_path / "d.pth").write_bytes(b"not a checkpoint")
    with pytest.raises((ValueRangeError, P.UnsafeCheckpointError)):
        P.load_state_dict(tmp_path / "d.pth")


# ----------------------------------------------------------------------------- example


def test_wrap_onnx_sam_example_runs(tmp_path, capsys):
    """examples/wrap_onnx_sam.py runs end to end: own ONNX model + superpixel fallback + fusion."""
    import importlib.util
    from pathlib import Path

    import cv2

    path = Path(__file__).resolve().parents[2] / "examples" / "wrap_onnx_sam.py"
    spec = importlib.util.spec_from_file_location("wrap_onnx_sam", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    img = np.zeros((32, 48, 3), np.uint8)
    img[:, 24:] = (0, 0, 255)
    cv2.imwrite(str(tmp_path / "frame.png"), img)
    onnx = _export(TinyRPN(n=1).eval(), tmp_path / "anom.onnx", names=("anomaly", "validity"))
    assert mod.main(["--onnx", str(onnx), "--kind", "anomaly", "--image", str(tmp_path / "frame.png"),
                     "--out", str(tmp_path / "out")]) == 0
    assert "no --sam-checkpoint given" in capsys.readouterr().out
    fused = np.load(tmp_path / "out" / "frame_fused.npy")
    labels = np.load(tmp_path / "out" / "frame_labels.npy")
    assert fused.shape == (1, 32, 48) and labels.shape == (32, 48) and labels.min() >= 0
    assert (tmp_path / "out" / "frame_fused.png").is_file()
    assert 0.0 <= fused.min() and fused.max() <= 1.0


def test_builtin_sources_return_final_labels_that_pipeline_keeps():
    import posthoc
    from posthoc.adapters import get_proposals
    from posthoc.adapters.proposals import proposals_from_soft

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (1, 32, 48, 3), dtype=np.uint8)
    sp = get_proposals("superpixels", n_segments=12)(img)
    assert sp.labels_final
    R = torch.rand(1, 4, 8, 12)
    soft = proposals_from_soft(R, torch.rand(1, 4), (32, 48))
    assert soft.labels_final
    torch.testing.assert_close(soft.labels, posthoc.assign_labels(R.clamp(0, 1), soft.validity, size=(32, 48)))
    out = posthoc.Pipeline()(torch.rand(1, 1, 32, 48), soft)
    assert "components" not in out and torch.equal(out["labels"], soft.labels)
