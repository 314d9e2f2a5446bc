"""ObsNet (Besnier et al., ICCV 2021): segmentation net plus observer."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from posthoc.errors import DTypeError, ShapeError, ValueRangeError
from posthoc.types import TeacherOutput

from .._image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    resize_to,
)
from ..base import Teacher
from ..registry import register_teacher
from ._common import (
    _anomaly_from,
    _as_dict,
    _class_names,
    _ImageConfig,
    _merge,
    _OnnxRunner,
    _pick_main,
    _split_weights,
    _TorchRunner,
)

log = logging.getLogger(__name__)


class _TorchPair:
    """Segmenter and observer as torch modules: the observer is called as
    ``observer(image, segmenter_output)`` with the segmenter's raw return (the official
    ``obsnet(img, segnet_feat)``), or through ``observer_fn(observer, image, raw)``."""

    def __init__(self, seg: Any, obs: Any, device: Any, observer_fn: Callable | None) -> None:
        self.seg = _TorchRunner(seg, device=device, what="obsnet segmenter")
        self.obs = _TorchRunner(obs, device=self.seg.device, what="obsnet observer")
        self.observer_fn = observer_fn

    def __call__(self, x: torch.Tensor) -> tuple[dict, dict]:
        raw, seg_out = self.seg.run(x)
        fn = self.observer_fn
        obs_raw = fn(self.obs.module, x, raw) if fn is not None else self.obs.module(x, raw)
        return seg_out, _as_dict(obs_raw, ["logit"], "obsnet observer")


class _OnnxPair:
    """Segmenter and observer as ONNX graphs: the observer's inputs are the image and
    segmenter outputs, fed by name."""

    def __init__(self, seg: Any, obs: Any, device: Any, providers: Sequence[Any] | None) -> None:
        self.seg = _OnnxRunner(seg, device=device, providers=providers,
                               expect="an ObsNet segmenter: image -> logits (+ features)")
        self.obs = _OnnxRunner(obs, device=device, providers=providers,
                               expect="an ObsNet observer: image + segmenter features -> logit (B,1,h,w)")
        seg_names = set(self.seg.output_names)
        for s in self.obs.inputs:
            if s.name not in seg_names and s.name != self.obs.image.name:
                raise ShapeError(
                    f"observer input {s.name!r} is neither the image nor a segmenter output "
                    f"(segmenter outputs: {sorted(seg_names)})"
                )
        if self.seg.fixed_hw and self.obs.fixed_hw and self.seg.fixed_hw != self.obs.fixed_hw:
            raise ShapeError(f"segmenter and observer fixed sizes differ: {self.seg.fixed_hw} vs {self.obs.fixed_hw}")

    def num_classes(self, seg_output: str | None) -> int | None:
        """The segmenter's static class count (None when the graph's class axis is dynamic)."""
        four = [s for s in self.seg.outputs if s.rank == 4]
        spec = next((s for s in four if s.name == (seg_output or "logits")), four[0] if four else None)
        return spec.shape[1] if spec is not None else None

    def __call__(self, x: torch.Tensor) -> tuple[dict, dict]:
        seg_out = self.seg.run_image(x)
        feeds = {s.name: (x if s.name == self.obs.image.name else seg_out[s.name]) for s in self.obs.inputs}
        return seg_out, self.obs.run(feeds)


def _observer_pair(seg: Any, obs: Any, device: Any, providers: Any, observer_fn: Callable | None):
    """The backend of an ObsNet: both torch modules or both ONNX files."""
    if isinstance(seg, torch.nn.Module) != isinstance(obs, torch.nn.Module):
        raise DTypeError("obsnet segmenter and observer must both be .onnx paths or both torch modules")
    if isinstance(seg, torch.nn.Module):
        return _TorchPair(seg, obs, device, observer_fn)
    return _OnnxPair(seg, obs, device, providers)


@register_teacher("obsnet")
class ObsNetTeacher(_ImageConfig, Teacher):
    """ObsNet (Besnier et al., ICCV 2021; official code valeoai/obsnet).

    The segmentation net runs on the image resized to ``input_size`` (default 512x1024,
    i.e. W x H = 1024 x 512 as the official ``img2tensor`` resizes) with ImageNet
    normalization; the observer gets the same image and the segmenter's outputs whose
    names match its inputs; P(anomaly) = sigmoid(observer logit), upsampled
    (bilinear) to the original size.

    Args:
        weights: {"segmenter": ..., "observer": ...}: two .onnx paths (ONNX observer
            inputs: "image" plus the segmenter outputs it needs, e.g. "features"), or two
            torch modules (the observer is called as ``observer(image, segmenter_output)``
            with the segmenter's raw return, as in the official ``obsnet(img, segnet_feat)``).
            None = bundled default.
        device: where the models run.
        input_size, mean, std, channel_order, class_names: preprocessing / names.
        seg_output: the segmenter's logits output (default "logits" or the first 4-D one).

    Returns (``__call__``):
        TeacherOutput(kind="anomaly", scores (B,1,H,W) in [0,1], logits (B,K,H,W)).
    """

    kind = "anomaly"

    def __init__(self, weights: Any = None, device: Any = None, *, input_size: Any = None, mean=None, std=None,
                 channel_order: str | None = None, class_names: Sequence[str] | None = None,
                 seg_output: str | None = None, providers: Sequence[Any] | None = None,
                 observer_fn: Callable | None = None) -> None:
        self.name = "obsnet"
        w, meta = _split_weights(weights, "obsnet", ("segmenter", "observer"))
        for r in ("segmenter", "observer"):
            if r not in w:
                raise ValueRangeError(f"obsnet weights need 'segmenter' and 'observer'; got roles {list(w)}")
        cfg = _merge(meta, {"input_size": input_size, "mean": mean, "std": std, "channel_order": channel_order,
                            "class_names": class_names})
        self._set_image_config(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD),
                               cfg.get("channel_order", "RGB"), cfg.get("input_size", (512, 1024)), None)
        self._names = cfg.get("class_names")
        self.seg_output = seg_output
        self.observer_fn = observer_fn
        self.pair = _observer_pair(w["segmenter"], w["observer"], device, providers, observer_fn)
        self.seg, self.obs = self.pair.seg, self.pair.obs
        self.device = self.seg.device
        if self._names is None:  # a static class axis of the segmenter names the classes at construction
            k = getattr(self.pair, "num_classes", lambda _name: None)(seg_output)
            if k is not None:
                self._names = _class_names(None, k, "obsnet segmenter")

    @property
    def class_names(self) -> list[str]:
        return ["anomaly"]

    @property
    def semantic_class_names(self) -> list[str]:
        """Names of the segmenter's classes (of ``TeacherOutput.logits``): from ``class_names`` or the
        bundled meta, else ``class_<i>`` for an ONNX segmenter with a static class axis, all known
        at construction; a torch segmenter without names learns them on the first call."""
        return list(self._names or [])

    def __call__(self, images: Any) -> TeacherOutput:
        with torch.no_grad():
            x, hw = self._prepare(images, self.device, self.seg.fixed_hw)
            seg_out, obs_out = self.pair(x)
            logit = obs_out[_pick_main(obs_out, None, "obsnet observer", prefer=("logit",))]
            prob = resize_to(_anomaly_from(logit, "sigmoid", "obsnet observer"), hw).clamp_(0.0, 1.0)
            lg_name = _pick_main(seg_out, self.seg_output, "obsnet segmenter", prefer=("logits",))
            logits = resize_to(seg_out[lg_name].float(), hw)
            names = _class_names(self._names, logits.shape[1], "obsnet segmenter")
            self._names = names
            feats = {n: v for n, v in seg_out.items() if n != lg_name and v.ndim == 4} or None
            return TeacherOutput(prob, "anomaly", ["anomaly"], features=feats, logits=logits)
