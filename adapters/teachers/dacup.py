"""DaCUP (Vojir & Matas)."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from posthoc.types import TeacherOutput

from .._image import (
    resize_to,
)
from ..base import Teacher
from ..registry import register_teacher
from ._common import _anomaly_from, _ImageConfig, _merge, _pick_main, _split_weights, make_runner

log = logging.getLogger(__name__)


@register_teacher("dacup")
class DaCUPTeacher(_ImageConfig, Teacher):
    """DaCUP (Vojir & Matas; official code vojirt/DaCUP, non-commercial licence).

    posthoc calls the user's own export or install and copies none of its code. The
    model runs with a batch of 1 (the batch is looped over), on the image in [0,1]
    without normalization, and outputs P(anomaly).

    Args:
        weights: an .onnx export or a torch module returning the anomaly probability
            (a tensor, or a dict / tuple holding it). None = bundled default.
        device: where the model runs.
        output_name: which output is P(anomaly) (default: "anomaly_score", "anomaly",
            "score", else the first (B,1,h,w) output).
        logits_name: optional semantic logits output, returned as TeacherOutput.logits.
        activation: "sigmoid" if the output is a logit.
        input_size: optional (H, W) to run at.
    """

    kind = "anomaly"

    def __init__(self, weights: Any = None, device: Any = None, *, output_name: str | None = None,
                 logits_name: str | None = None, activation: str | None = None, input_size: Any = None,
                 providers: Sequence[Any] | None = None, output_names: Sequence[str] | None = None) -> None:
        self.name = "dacup"
        w, meta = _split_weights(weights, "dacup", ("model",))
        cfg = _merge(meta, {"input_size": input_size})
        self._set_image_config((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "RGB", cfg.get("input_size"), 1.0)
        src = w["model"]
        self.runner = make_runner(src, "DaCUP", device=device, providers=providers, batch_size=1,
                                  output_names=output_names,
                                  expect="a DaCUP export: image (1,3,H,W) in [0,1] -> P(anomaly)")
        self.device = self.runner.device
        self.output_name, self.logits_name, self.activation = output_name, logits_name, activation

    @property
    def class_names(self) -> list[str]:
        return ["anomaly"]

    def __call__(self, images: Any) -> TeacherOutput:
        with torch.no_grad():
            x, hw = self._prepare(images, self.device, self.runner.fixed_hw)
            outs = self.runner.run_image(x)
            if self.output_name is None:
                one = [n for n, v in outs.items() if v.ndim == 4 and v.shape[1] == 1]
                name = _pick_main(outs, None, "DaCUP", prefer=("anomaly_score", "anomaly", "score", *one[:1]))
            else:
                name = _pick_main(outs, self.output_name, "DaCUP")
            prob = resize_to(_anomaly_from(outs[name], self.activation, "DaCUP"), hw).clamp_(0.0, 1.0)
            logits = None
            if self.logits_name is not None:
                logits = resize_to(outs[_pick_main(outs, self.logits_name, "DaCUP")].float(), hw)
            return TeacherOutput(prob, "anomaly", ["anomaly"], logits=logits)
