"""Zero-shot CLIP region classifier and ZegFormer ensemble (adapters/clip_zs.py)."""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from posthoc import Proposals
from posthoc.adapters import clip_zs
from posthoc.adapters.clip_zs import ClipRegionClassifier, paint_regions, seen_calibrate, zegformer_ensemble
from posthoc.errors import DTypeError, MissingExtraError, ShapeError, ValueRangeError

open_clip = pytest.importorskip("open_clip")

COLORS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


class ColourClip(nn.Module):
    """A CLIP stand-in whose image embedding is the mean normalized colour of the crop and whose
    text embedding of "... <colour> ..." is that colour, normalized the same way."""

    def __init__(self):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))
        m = torch.tensor(clip_zs.OPENAI_CLIP_MEAN)
        s = torch.tensor(clip_zs.OPENAI_CLIP_STD)
        self.table = torch.stack([(torch.tensor(c) - m) / s for c in COLORS.values()])

    def encode_image(self, x):
        return x.mean((2, 3))

    def encode_text(self, tok):
        return self.table[tok]


def colour_tokenizer(texts):
    names = list(COLORS)
    return torch.tensor([next(i for i, n in enumerate(names) if n in t) for t in texts])


def _halves(B=1, H=16, W=24):
    img = np.zeros((B, H, W, 3), np.uint8)
    img[:, :, : W // 2, 0] = 255  # left red
    img[:, :, W // 2 :, 2] = 255  # right blue
    lab = torch.zeros(B, H, W, dtype=torch.long)
    lab[:, :, W // 2 :] = 1
    return img, lab


@pytest.mark.parametrize("style", ["cropmask", "crop", "mask"])
def test_polarity_with_colour_model(style):
    img, lab = _halves()
    clf = ClipRegionClassifier(seen_classes=["red", "green"], unseen_classes=["blue"], model=ColourClip(),
                               tokenizer=colour_tokenizer, image_size=8, style=style, device="cpu")
    rp = clf.region_probs(img, Proposals(labels=lab))
    assert rp.shape == (1, 2, 3)
    torch.testing.assert_close(rp.sum(-1), torch.ones(1, 2))
    if style != "mask":  # a masked whole image is mostly black: only the crop styles isolate the colour
        assert int(rp[0, 0].argmax()) == 0 and int(rp[0, 1].argmax()) == 2
    out = clf(img, Proposals(labels=lab))
    assert out.shape == (1, 3, 16, 24)
    torch.testing.assert_close(out[0, :, 3, 2], rp[0, 0])
    torch.testing.assert_close(out[0, :, 3, 20], rp[0, 1])


def test_unassigned_and_small_regions_are_uniform():
    img, lab = _halves()
    lab[:, :4] = -1
    lab[:, 8, 8] = 2  # a 1-pixel region
    clf = ClipRegionClassifier(seen_classes=["red", "green", "blue"], model=ColourClip(), tokenizer=colour_tokenizer,
                               image_size=8, min_area=2, device="cpu")
    out = clf(img, lab)
    torch.testing.assert_close(out[0, :, 0, 0], torch.full((3,), 1 / 3))
    torch.testing.assert_close(out[0, :, 8, 8], torch.full((3,), 1 / 3))
    assert int(out[0, :, 10, 2].argmax()) == 0


@pytest.fixture(scope="module")
def tiny_clip_name(tmp_path_factory):
    d = tmp_path_factory.mktemp("oc")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (d / "PosthocTinyClip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d)
    return "PosthocTinyClip"


def test_open_clip_random_init(tiny_clip_name, tmp_path):
    torch.manual_seed(0)
    clf = ClipRegionClassifier(tiny_clip_name, None, ["road", "car"], ["cow", "sofa"], templates=["a photo of a {}."],
                               device="cpu")
    assert clf.image_size == 32 and clf.class_names == ["road", "car", "cow", "sofa"]
    img = np.random.default_rng(0).integers(0, 255, (2, 20, 28, 3), dtype=np.uint8)
    lab = torch.from_numpy(np.random.default_rng(1).integers(0, 3, (2, 20, 28)))
    lab[:, :, :10] = 0
    lab[:, :, 10:20] = 1
    lab[:, :, 20:] = 2
    out = clf(img, Proposals(labels=lab))
    assert out.shape == (2, 4, 20, 28) and out.dtype == torch.float32
    torch.testing.assert_close(out.sum(1), torch.ones(2, 20, 28))
    # region 1 of image 0 by hand: mask, box-crop, roi_align to 32, encode, cosine x logit scale, softmax
    from torchvision.ops import roi_align

    x = torch.from_numpy(img[0]).permute(2, 0, 1).float() / 255
    xn = (x - torch.tensor(clf.mean)[:, None, None]) / torch.tensor(clf.std)[:, None, None]
    crop = roi_align((xn * (lab[0] == 1)).unsqueeze(0), torch.tensor([[0.0, 10, 0, 20, 20]]), 32, aligned=True)
    with torch.no_grad():
        f = F.normalize(clf.model.encode_image(crop), dim=-1)
        tok = open_clip.get_tokenizer(tiny_clip_name)
        t = torch.stack([F.normalize(F.normalize(clf.model.encode_text(tok([f"a photo of a {c}."])), dim=-1).mean(0),
                                     dim=-1) for c in clf.class_names])
        want = torch.softmax(clf.model.logit_scale.exp() * f @ t.T, -1)[0]
    torch.testing.assert_close(out[0, :, 5, 15], want, atol=1e-5, rtol=1e-4)
    # a local state-dict checkpoint reproduces the model exactly
    ck = tmp_path / "clip.pth"
    torch.save(clf.model.state_dict(), ck)
    again = ClipRegionClassifier(tiny_clip_name, ck, ["road", "car"], ["cow", "sofa"], templates=["a photo of a {}."],
                                 device="cpu")
    torch.testing.assert_close(again(img, lab), out)
    assert clf.seen_mask.tolist() == [True, True, False, False]


def test_classifier_errors(tiny_clip_name, tmp_path, monkeypatch):
    with pytest.raises(ValueRangeError, match="never downloads"):
        ClipRegionClassifier(tiny_clip_name, "openai", ["a"])
    evil = tmp_path / "evil.pth"
    torch.save({"m": nn.Linear(1, 1)}, evil)
    from posthoc.adapters.teachers import UnsafeCheckpointError

    with pytest.raises(UnsafeCheckpointError, match="safetensors"):
        ClipRegionClassifier(tiny_clip_name, evil, ["a"])
    wrong = tmp_path / "wrong.pth"
    torch.save({"x": torch.zeros(1)}, wrong)
    with pytest.raises(ValueRangeError, match="does not match open_clip"):
        ClipRegionClassifier(tiny_clip_name, wrong, ["a"])
    with pytest.raises(ValueRangeError, match="at least one class"):
        ClipRegionClassifier(tiny_clip_name)
    with pytest.raises(ValueRangeError, match="unique"):
        ClipRegionClassifier(tiny_clip_name, None, ["a"], ["a"])
    with pytest.raises(ValueRangeError, match="exactly one"):
        ClipRegionClassifier(tiny_clip_name, None, ["a"], templates=["no slot"])
    with pytest.raises(ValueRangeError, match="style"):
        ClipRegionClassifier(tiny_clip_name, None, ["a"], style="box")
    with pytest.raises(ValueRangeError, match="tokenizer"):
        ClipRegionClassifier(seen_classes=["a"], model=ColourClip())
    with pytest.raises(DTypeError, match="encode_image"):
        ClipRegionClassifier(seen_classes=["a"], model=object(), tokenizer=colour_tokenizer)
    clf = ClipRegionClassifier(seen_classes=["red"], model=ColourClip(), tokenizer=colour_tokenizer, device="cpu")
    img, lab = _halves()
    with pytest.raises(ShapeError, match="matching the images"):
        clf(img, lab[:, :8])
    with pytest.raises(ValueRangeError, match=">= -1"):
        clf(img, lab - 3)
    with pytest.raises(DTypeError):
        clf(img, lab.float())
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'posthoc\[clip\]'"):
        ClipRegionClassifier(tiny_clip_name, None, ["a"])


def test_paint_regions():
    rp = torch.tensor([[[0.9, 0.1], [0.2, 0.8]]])
    lab = np.array([[[0, 1, -1]]])
    out = paint_regions(rp.numpy(), lab)
    assert isinstance(out, np.ndarray) and out.shape == (1, 2, 1, 3)
    np.testing.assert_allclose(out[0, :, 0], [[0.9, 0.2, 0.5], [0.1, 0.8, 0.5]], rtol=1e-6)
    with pytest.raises(ValueRangeError, match="< N=2"):
        paint_regions(rp, torch.tensor([[[2]]]))
    with pytest.raises(ShapeError):
        paint_regions(rp[0], torch.zeros(1, 1, 1, dtype=torch.long))


def test_zegformer_ensemble_formula():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(2, 5, 3, 4, generator=g), 1)
    q = torch.softmax(torch.randn(2, 5, 3, 4, generator=g), 1)
    seen = [0, 1, 2]
    lam = 2 / 3
    p_in, q_in = p.clone(), q.clone()
    out = zegformer_ensemble(p, q, seen)
    assert torch.equal(p, p_in) and torch.equal(q, q_in)
    qs = q.clone()
    qs[:, :3] = q[:, :3].mean(1, keepdim=True)
    want = torch.cat([p[:, :3] ** lam * qs[:, :3] ** (1 - lam), p[:, 3:] ** (1 - lam) * q[:, 3:] ** lam], 1)
    torch.testing.assert_close(out, want)
    # bool mask == index list; region tables with the class axis last
    torch.testing.assert_close(zegformer_ensemble(p, q, torch.tensor([1, 1, 1, 0, 0], dtype=torch.bool)), want)
    tab = zegformer_ensemble(p.permute(0, 2, 3, 1).numpy(), q.permute(0, 2, 3, 1).numpy(), seen, dim=-1)
    np.testing.assert_allclose(tab, want.permute(0, 2, 3, 1).numpy(), rtol=1e-5)
    # lambda=1: seen classes are the segmenter's, unseen classes CLIP's
    one = zegformer_ensemble(p, q, seen, lambda_balance=1.0, average_seen_clip=False)
    torch.testing.assert_close(one[:, :3], p[:, :3])
    torch.testing.assert_close(one[:, 3:], q[:, 3:])


def test_ensemble_and_calibration_errors():
    p = torch.full((1, 3, 2, 2), 1 / 3)
    with pytest.raises(ShapeError, match="shape of seg_probs"):
        zegformer_ensemble(p, p[:, :2], [0])
    with pytest.raises(ValueRangeError, match=r"\[0,1\]"):
        zegformer_ensemble(p * 4, p, [0])
    with pytest.raises(ValueRangeError, match="lambda_balance"):
        zegformer_ensemble(p, p, [0], lambda_balance=1.5)
    with pytest.raises(ValueRangeError, match=r"indices must lie in \[0,3\)"):
        zegformer_ensemble(p, p, [3])
    with pytest.raises(ShapeError, match="bool mask"):
        zegformer_ensemble(p, p, torch.tensor([True, False]))
    s = seen_calibrate(p, [0, 2], 0.1)
    torch.testing.assert_close(s[:, 1], p[:, 1])
    torch.testing.assert_close(s[:, 0], p[:, 0] - 0.1)
    with pytest.raises(ValueRangeError, match=">= 0"):
        seen_calibrate(p, [0], -1.0)
