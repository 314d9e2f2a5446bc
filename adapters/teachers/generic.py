"""Generic teachers: any ONNX model (:class:`OnnxTeacher`) or torch module (:class:`TorchTeacher`)."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from posthoc.errors import DTypeError, ShapeError, ValueRangeError
from posthoc.types import TeacherOutput
from posthoc.validation import shape_str

from .._image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    resize_to,
    to_float_batch,
)
from ..base import Teacher
from ..registry import register_teacher
from ._common import (
    _anomaly_from,
    _as_dict,
    _class_names,
    _ImageConfig,
    _NamedOutputs,
    _OnnxRunner,
    _pick_main,
    _TorchRunner,
)

log = logging.getLogger(__name__)


class OnnxTeacher(_NamedOutputs, _ImageConfig, Teacher):
    """Any ONNX segmentation or anomaly model on onnxruntime.

    The model takes one image input (B,3,h,w) float (its name is discovered; pass
    ``input_name`` if the graph has several) normalized as ``(x*pixel_scale - mean)/std``
    in ``channel_order``. Fixed input sizes are honoured by resizing to them and back
    (bilinear, align_corners=False); a fixed batch of 1 (or n) is run in a loop.

    Args:
        path: the ``.onnx`` file.
        kind: "semantic" (main output = logits (B,K,h,w), any range) or "anomaly" (main
            output = (B,1,h,w) probability in [0,1]; pass ``activation="sigmoid"`` for logits).
        mean, std: per-channel normalization (default ImageNet on [0,1] pixels; values > 1
            imply 0..255 pixels unless ``pixel_scale`` says otherwise).
        channel_order: "RGB" or "BGR".
        input_size: (H, W) to run dynamic-shape models at (None: the input size).
        output_name: the main output (default: the first (B,C,h,w) output). The other
            4-D outputs are returned as ``TeacherOutput.features`` at model resolution.
        class_names: K names for a semantic model (default class_0..).
        device: None (CUDA when usable, else CPU), "cpu", "cuda[:i]".
        providers: explicit onnxruntime providers.
        input_name, batch_size, activation, pixel_scale: see above.

    Returns (``__call__``):
        TeacherOutput with scores (B,K,H,W) float32 logits (semantic) or (B,1,H,W)
        probability (anomaly) at the input resolution (H,W).
    """

    def __init__(self, path: Any, *, kind: str = "semantic", mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, channel_order: str = "RGB", input_size: Any = None,
                 output_name: str | None = None, class_names: Sequence[str] | None = None, device: Any = None,
                 providers: Sequence[Any] | None = None, input_name: str | None = None,
                 batch_size: int | None = None, activation: str | None = None,
                 pixel_scale: float | None = None) -> None:
        if kind not in ("semantic", "anomaly"):
            raise ValueRangeError(f"kind must be 'semantic' or 'anomaly'; got {kind!r}")
        self.kind = kind
        self._set_image_config(mean, std, channel_order, input_size, pixel_scale)
        expect = ("a semantic segmentation model: image (B,3,H,W) float -> logits (B,K,h,w)" if kind == "semantic"
                  else "an anomaly model: image (B,3,H,W) float -> (B,1,h,w) probability")
        self.runner = _OnnxRunner(path, device=device, providers=providers, input_name=input_name,
                                  batch_size=batch_size, expect=expect)
        if output_name is not None and output_name not in self.runner.output_names:
            raise ShapeError(f"{Path(path).name} has no output {output_name!r}; outputs: {self.runner.output_names}")
        four = [s.name for s in self.runner.outputs if s.rank == 4]
        self.output_name = output_name or (four[0] if four else self.runner.output_names[0])
        spec = next(s for s in self.runner.outputs if s.name == self.output_name)
        self.activation = activation
        k = spec.shape[1] if spec.rank == 4 else None
        if kind == "semantic":
            if class_names is not None and k is not None and len(class_names) != k:
                raise ShapeError(f"{Path(path).name} outputs {k} classes but class_names has {len(class_names)}")
            # names known at construction: the given ones, else class_<i> for a static channel count
            # (what the first call would set); only a dynamic channel axis leaves them unknown
            self._names = (list(class_names) if class_names is not None
                           else _class_names(None, k, Path(path).name) if k is not None else None)
        else:
            self._names = ["anomaly"]
        self.device = self.runner.device

    def raw(self, images: Any) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
        """Run the model; return ({output name: tensor at model resolution}, input (H,W))."""
        x, hw = self._prepare(images, self.device, self.runner.fixed_hw)
        return self.runner.run({self.runner.image.name: x}), hw

    def __call__(self, images: Any) -> TeacherOutput:
        with torch.no_grad():
            outs, hw = self.raw(images)
            main = outs[self.output_name]
            feats = {n: v for n, v in outs.items() if n != self.output_name and v.ndim == 4} or None
            if self.kind == "anomaly":
                score = resize_to(_anomaly_from(main, self.activation, str(self.runner.path.name)), hw)
                return TeacherOutput(score.clamp_(0.0, 1.0), "anomaly", ["anomaly"], features=feats)
            if main.ndim != 4:
                raise ShapeError(f"{self.runner.path.name} must output logits (B,K,h,w); got {shape_str(main.shape)}")
            names = _class_names(self._names, main.shape[1], self.runner.path.name)
            self._names = names
            return TeacherOutput(resize_to(main.float(), hw), "semantic", names, features=feats)


class TorchTeacher(_NamedOutputs, _ImageConfig, Teacher):
    """Any torch module as a teacher.

    Args:
        module: ``torch.nn.Module``; put in eval mode and moved to ``device``.
        preprocess: callable (B,3,H,W) float32 RGB in [0,1] -> model input. Default:
            resize to ``input_size`` (if set) and normalize with mean/std/channel_order.
        postprocess: callable raw module output -> (B,C,h,w) tensor, or a dict of named
            tensors. Default: a tensor as is; a dict/tuple is named (tuple of two ->
            "logits","features") and the main output is ``output_name`` or the first 4-D one.
        kind: "semantic" (logits (B,K,h,w)) or "anomaly" ((B,1,h,w) probability, or
            logits with ``activation="sigmoid"``).
        class_names: K names for a semantic model.
        weights: optional state-dict file (.safetensors, or a .pt read with
            ``torch.load(weights_only=True)``) loaded into ``module`` (strict).
        device: None = where the module's parameters are.
        mean, std, channel_order, input_size, output_name, batch_size, activation: as in
            :class:`OnnxTeacher`.
    """

    def __init__(self, module: Any, preprocess: Callable | None = None, postprocess: Callable | None = None, *,
                 kind: str = "semantic", class_names: Sequence[str] | None = None, weights: Any = None,
                 device: Any = None, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 channel_order: str = "RGB", input_size: Any = None, output_name: str | None = None,
                 output_names: Sequence[str] | None = None, batch_size: int | None = None,
                 activation: str | None = None, pixel_scale: float | None = None) -> None:
        if kind not in ("semantic", "anomaly"):
            raise ValueRangeError(f"kind must be 'semantic' or 'anomaly'; got {kind!r}")
        for nm, fn in (("preprocess", preprocess), ("postprocess", postprocess)):
            if fn is not None and not callable(fn):
                raise DTypeError(f"{nm} must be callable; got {type(fn).__name__}")
        self.kind = kind
        self._set_image_config(mean, std, channel_order, input_size, pixel_scale)
        self.runner = _TorchRunner(module, device=device, weights=weights, output_names=output_names,
                                   batch_size=batch_size, what="module")
        self.device = self.runner.device
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.output_name = output_name
        self.activation = activation
        self._names = list(class_names) if class_names is not None else (["anomaly"] if kind == "anomaly" else None)

    def raw(self, images: Any) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
        """Run the module; return ({name: tensor at model resolution}, input (H,W))."""
        if self.preprocess is None:
            x, hw = self._prepare(images, self.device)
        else:
            x0 = to_float_batch(images, device=self.device)
            hw = (int(x0.shape[2]), int(x0.shape[3]))
            x = self.preprocess(x0)
        raw, named = self.runner.run(x)
        if self.postprocess is not None:
            pp = self.postprocess(raw)
            named = {"logits" if self.kind == "semantic" else "anomaly": pp} if isinstance(pp, torch.Tensor) else \
                _as_dict(pp, None, "postprocess")
        return named, hw

    def __call__(self, images: Any) -> TeacherOutput:
        with torch.no_grad():
            outs, hw = self.raw(images)
            main_name = _pick_main(outs, self.output_name, type(self.runner.module).__name__)
            main = outs[main_name]
            feats = {n: v for n, v in outs.items() if n != main_name and v.ndim == 4} or None
            what = type(self.runner.module).__name__
            if self.kind == "anomaly":
                score = resize_to(_anomaly_from(main, self.activation, what), hw)
                return TeacherOutput(score.clamp_(0.0, 1.0), "anomaly", ["anomaly"], features=feats)
            if main.ndim != 4:
                raise ShapeError(f"{what} must output logits (B,K,h,w); got {shape_str(main.shape)}")
            self._names = _class_names(self._names, main.shape[1], what)
            return TeacherOutput(resize_to(main.float(), hw), "semantic", self._names, features=feats)


_TORCH_SETTINGS = ("mean", "std", "channel_order", "input_size", "class_names", "output_name", "batch_size",
                   "pixel_scale", "output_names", "preprocess", "postprocess")
_ONNX_SETTINGS = ("mean", "std", "channel_order", "input_size", "class_names", "output_name", "batch_size",
                  "pixel_scale", "providers", "input_name")


def _semantic_teacher(src: Any, what: str, device: Any, settings: dict) -> Teacher:
    """A semantic teacher from a path (.onnx), a torch module, or a semantic Teacher.

    Unknown keys in ``settings`` raise TypeError (a misspelt option is never ignored silently).
    """
    allowed = (() if isinstance(src, Teacher) else _TORCH_SETTINGS if isinstance(src, torch.nn.Module)
               else _ONNX_SETTINGS)
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise TypeError(
            f"{what}: unexpected setting(s) {unknown} for a {type(src).__name__} model; "
            f"accepted: {list(allowed) or 'none (the teacher is already built)'}"
        )
    if isinstance(src, Teacher):
        if getattr(src, "kind", None) != "semantic":
            raise ValueRangeError(f"{what} must be a semantic teacher (logits); got kind {src.kind!r}")
        return src
    if isinstance(src, torch.nn.Module):
        kw = dict(settings)
        pre, post = kw.pop("preprocess", None), kw.pop("postprocess", None)
        return TorchTeacher(src, pre, post, kind="semantic", device=device, **kw)
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        if p.suffix.lower() != ".onnx":
            raise DTypeError(
                f"{what}: {str(p)!r} is not an .onnx file. Pass an ONNX export, or build the torch module "
                "yourself, load its weights with posthoc.adapters.teachers.load_state_dict(path), and pass the module"
            )
        return OnnxTeacher(p, kind="semantic", device=device, **settings)
    raise DTypeError(f"{what} must be an .onnx path, a torch.nn.Module or a semantic Teacher; got {type(src).__name__}")


@register_teacher("onnx")
def onnx_teacher(path: Any = None, *, weights: Any = None, device: Any = None, **kw: Any) -> OnnxTeacher:
    """``get_teacher("onnx", path=...)``: :class:`OnnxTeacher` (``weights`` is an alias of ``path``)."""
    src = path if path is not None else weights
    if src is None:
        raise ValueRangeError("the 'onnx' teacher needs path=... (an .onnx file)")
    return OnnxTeacher(src, device=device, **kw)


@register_teacher("torch")
def torch_teacher(module: Any = None, *, weights: Any = None, device: Any = None, **kw: Any) -> TorchTeacher:
    """``get_teacher("torch", module=...)``: :class:`TorchTeacher`; ``weights`` = optional state-dict file."""
    if module is None:
        raise ValueRangeError("the 'torch' teacher needs module=... (a torch.nn.Module)")
    return TorchTeacher(module, weights=weights, device=device, **kw)
