"""DAFormer (Hoyer et al., CVPR 2022): whole-image mmseg inference, 19 Cityscapes classes."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from posthoc.errors import ValueRangeError
from posthoc.types import TeacherOutput

from ..base import Teacher
from ..registry import register_teacher
from ._common import CITYSCAPES_CLASSES, MMSEG_MEAN, MMSEG_STD, _ImageConfig, _merge, _split_weights
from .generic import _semantic_teacher

log = logging.getLogger(__name__)


@register_teacher("daformer")
class DAFormerTeacher(_ImageConfig, Teacher):
    """DAFormer (Hoyer et al., CVPR 2022; official code lhoyer/DAFormer, mmseg).

    Whole-image inference (mmseg ``test_cfg.mode='whole'``): the image is resized to
    ``input_size`` (default 512x1024, the Cityscapes test scale), normalized with
    mmseg's ``img_norm_cfg`` (mean 123.675/116.28/103.53, std 58.395/57.12/57.375 on
    0..255 RGB), the logits resized back (bilinear, align_corners=False).

    Args:
        weights: .onnx export or torch module (logits (B,19,h,w)); None = bundled default.
        output: "logits" (default) or "softmax" (probabilities over the 19 classes).
        class_names: default the 19 Cityscapes classes.
        **settings: mean, std, channel_order, input_size, output_name, providers.
    """

    kind = "semantic"

    def __init__(self, weights: Any = None, device: Any = None, *, output: str = "logits",
                 class_names: Sequence[str] | None = None, **settings: Any) -> None:
        self.name = "daformer"
        if output not in ("logits", "softmax"):
            raise ValueRangeError(f"output must be 'logits' or 'softmax'; got {output!r}")
        self.output = output
        w, meta = _split_weights(weights, "daformer", ("model",))
        defaults = {"mean": MMSEG_MEAN, "std": MMSEG_STD, "channel_order": "RGB", "input_size": (512, 1024),
                    "class_names": list(CITYSCAPES_CLASSES)}
        cfg = {**defaults, **_merge(meta, {**settings, "class_names": class_names})}
        self.base = _semantic_teacher(w["model"], "daformer model", device, cfg)

    @property
    def class_names(self) -> list[str]:
        return list(self.base.class_names)

    @property
    def semantic_class_names(self) -> list[str]:
        return list(self.base.class_names)

    def __call__(self, images: Any) -> TeacherOutput:
        with torch.no_grad():
            out = self.base(images)
            if self.output == "softmax":
                return TeacherOutput(torch.softmax(out.scores, dim=1), "semantic", out.class_names,
                                     features=out.features)
            return out
