"""ZegFormer (Ding et al., CVPR 2022) zero-shot class maps."""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from posthoc.errors import ShapeError, ValueRangeError
from posthoc.types import TeacherOutput
from posthoc.validation import shape_str

from .._image import (
    resize,
    resize_to,
)
from ..base import Teacher
from ..registry import register_teacher
from ._common import MMSEG_MEAN, MMSEG_STD, _ImageConfig, _merge, _pick_main, _split_weights, make_runner

log = logging.getLogger(__name__)


@register_teacher("zegformer")
class ZegFormerTeacher(_ImageConfig, Teacher):
    """ZegFormer (Ding et al., CVPR 2022; official code dingjiansw101/ZegFormer, non-commercial).

    Runs the user's export/module and forms C x H x W class maps over seen+unseen class
    names as the official ``MaskFormer.semantic_inference`` does, then applies the
    seen-class calibration of the official inference: ``r[seen] -= gzero_calibrate``
    on the per-class maps (``cfg.MODEL.MASK_FORMER.GZERO_CALIBRATE``).

    The model either outputs
      * "pred_logits" (B,Q,C+1) query class logits (last = no object) and "pred_masks"
        (B,Q,h,w) mask logits: class maps = sum_q softmax(pred_logits)[q,:C] *
        sigmoid(upsampled pred_masks)[q]; or
      * one (B,C,h,w) class-map output (already combined), used as is.

    Args:
        weights: .onnx path or torch module; None = bundled default.
        class_names: the C seen+unseen names (required unless bundled meta has them).
        seen_classes / unseen_classes: names (subset of class_names) of one of the two sets.
        gzero_calibrate: the calibration factor (>= 0; 0 turns it off).
        mean, std: detectron2 defaults (0..255 RGB, ImageNet statistics).
        input_size: optional (H, W) to run at.

    Returns (``__call__``):
        TeacherOutput(kind="semantic", scores (B,C,H,W) calibrated class scores
        (probability-like, minus the calibration on seen classes), class_names).
    """

    kind = "semantic"

    def __init__(self, weights: Any = None, device: Any = None, *, class_names: Sequence[str] | None = None,
                 seen_classes: Sequence[str] | None = None, unseen_classes: Sequence[str] | None = None,
                 gzero_calibrate: float = 0.1, mean=None, std=None, input_size: Any = None,
                 providers: Sequence[Any] | None = None, output_names: Sequence[str] | None = None) -> None:
        self.name = "zegformer"
        w, meta = _split_weights(weights, "zegformer", ("model",))
        cfg = _merge(meta, {"class_names": class_names, "mean": mean, "std": std, "input_size": input_size})
        self._set_image_config(cfg.get("mean", MMSEG_MEAN), cfg.get("std", MMSEG_STD), cfg.get("channel_order", "RGB"),
                               cfg.get("input_size"), None)
        names = cfg.get("class_names")
        if not names:
            raise ValueRangeError("zegformer needs class_names (the seen+unseen names the model was run with)")
        self._names = [str(n) for n in names]
        seen = meta.get("seen_classes") if seen_classes is None and unseen_classes is None else seen_classes
        if seen is None and unseen_classes is None:
            raise ValueRangeError("zegformer needs seen_classes or unseen_classes for the seen-class calibration")
        if seen is not None:
            bad = [n for n in seen if n not in self._names]
            idx = [i for i, n in enumerate(self._names) if n in set(seen)]
        else:
            unseen = set(unseen_classes or ())
            bad = [n for n in unseen_classes or () if n not in self._names]
            idx = [i for i, n in enumerate(self._names) if n not in unseen]
        if bad:
            raise ValueRangeError(f"seen/unseen class names {bad} are not in class_names")
        self.seen_index = torch.tensor(idx, dtype=torch.long)
        g = float(gzero_calibrate)
        if not math.isfinite(g) or g < 0:
            raise ValueRangeError(f"gzero_calibrate must be finite and >= 0; got {gzero_calibrate}")
        self.gzero_calibrate = g
        src = w["model"]
        self.runner = make_runner(src, "ZegFormer", device=device, providers=providers,
                                  output_names=output_names or ["pred_logits", "pred_masks"],
                                  expect="a ZegFormer export: image -> pred_logits + pred_masks, or class maps")
        self.device = self.runner.device

    @property
    def class_names(self) -> list[str]:
        return list(self._names)

    @property
    def semantic_class_names(self) -> list[str]:
        return list(self._names)

    def __call__(self, images: Any) -> TeacherOutput:
        with torch.no_grad():
            x, hw = self._prepare(images, self.device, self.runner.fixed_hw)
            outs = self.runner.run_image(x)
            c = len(self._names)
            if "pred_logits" in outs and "pred_masks" in outs:
                cls, masks = outs["pred_logits"].float(), outs["pred_masks"].float()
                if cls.ndim != 3 or cls.shape[-1] != c + 1 or masks.ndim != 4 or masks.shape[:2] != cls.shape[:2]:
                    raise ShapeError(
                        f"ZegFormer outputs must be pred_logits (B,Q,C+1) with C={c} and pred_masks (B,Q,h,w); "
                        f"got {shape_str(cls.shape)} and {shape_str(masks.shape)}"
                    )
                masks = resize(masks, x.shape[-2:])
                prob = torch.softmax(cls, dim=-1)[..., :-1]
                maps = torch.einsum("bqc,bqhw->bchw", prob, masks.sigmoid())
            else:
                name = _pick_main(outs, None, "ZegFormer")
                maps = outs[name].float()
                if maps.shape[1] != c:
                    raise ShapeError(f"ZegFormer class maps have {maps.shape[1]} channels; class_names has {c}")
            maps = resize_to(maps, hw)
            if self.gzero_calibrate > 0 and self.seen_index.numel():
                maps = maps.clone()
                maps[:, self.seen_index.to(maps.device)] -= self.gzero_calibrate
            return TeacherOutput(maps, "semantic", list(self._names))
