"""Teachers: wrap the user's own segmentation or anomaly model behind one interface.

A teacher is called on a batch of RGB images, (B,H,W,3) uint8 (numpy or torch) or
(B,3,H,W) float in [0,1], and returns a :class:`posthoc.TeacherOutput` at the input
resolution (``adapters.base.Teacher``). Registered names (``get_teacher(name, ...)``):

=============  =====================================================================
``onnx``       :class:`OnnxTeacher`: any ONNX model (semantic logits or an anomaly
               probability), onnxruntime, CUDA when present, IO binding on GPU.
``torch``      :class:`TorchTeacher`: any torch module with pre/post-processing hooks.
``sml``        :class:`SMLTeacher`: standardized max logit (Jung et al., ICCV 2021)
               with boundary suppression and dilated smoothing, negated and
               calibrated to [0,1].
``obsnet``     :class:`ObsNetTeacher`: segmentation net + observer (Besnier et al.,
               ICCV 2021): sigmoid of the observer logit.
``dacup``      :class:`DaCUPTeacher`: DaCUP (Vojir & Matas), batch of 1, input in [0,1].
``zegformer``  :class:`ZegFormerTeacher`: ZegFormer (Ding et al., CVPR 2022) class maps
               over seen+unseen names with the seen-class ("gzero") calibration.
``daformer``   :class:`DAFormerTeacher`: DAFormer (Hoyer et al., CVPR 2022), whole-image
               mmseg inference, 19 Cityscapes classes.
``msp`` ``maxlogit`` ``entropy`` ``energy``
               :class:`ScoreTeacher`: generic post-hoc anomaly scores over any semantic
               model (Hendrycks & Gimpel 2017; Hendrycks et al. 2022; Liu et al. 2020).
=============  =====================================================================

Every registered factory takes ``weights=None`` (a path, a dict ``role -> path``, a
torch module or an already-built semantic teacher; None = the bundled default from
:func:`posthoc.adapters.bundled.default_weights`) and ``device=None``.

Anomaly teachers return ``kind="anomaly"`` scores (B,1,H,W), probabilities in [0,1]
with higher = more anomalous, and put the semantic logits they were computed from in
``TeacherOutput.logits``. Scores that are not probabilities (max logit, energy, SML)
are mapped to [0,1] with one *global* sigmoid fitted on data (DESIGN.md, "Scores"):
never a per-image min-max, since pixel AP/FPR95 pool pixels over a whole data set.

JSON formats (written atomically; WORLD ships bundled files in these formats)
-------------------------------------------------------------------------------
Calibration (``ScoreTeacher.save_calibration`` / ``SigmoidCalibration.save``)::

    {"format": "posthoc.calibration", "version": 1, "method": "sigmoid",
     "score": "maxlogit",            # which raw score it maps (higher = more anomalous)
     "shift": 3.2, "scale": 0.7,     # p = 1 / (1 + exp(-(raw - shift) / scale))
     "fit": {"mode": "quantile"|"platt", "pixels": 200000, ...}}

SML statistics (``SMLTeacher.save_stats`` / ``load_stats``)::

    {"format": "posthoc.sml_stats", "version": 1,
     "class_names": [...K names...],
     "mean": [...K...], "var": [...K...], "count": [...K...],   # max logit per predicted class
     "calibration": {... a calibration object as above, score "sml" ...},
     "postprocess": {"boundary_suppression": true, "dilated_smoothing": true}}

The raw score each calibration maps ("higher = more anomalous"):
``maxlogit``: ``-max_k l_k``; ``energy``: ``-logsumexp_k l_k`` (the energy score with
T=1, Liu et al. 2020 Eq. 1); ``sml``: ``-SML`` after post-processing. ``msp`` (1 - max
softmax) and ``entropy`` (entropy / log K) are already in [0,1] and need none.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posthoc.errors import DTypeError, MissingExtraError, PosthocError, ShapeError, ValueRangeError
from posthoc.types import TeacherOutput
from posthoc.validation import check_finite, shape_str

from ._image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_mean_std,
    normalize,
    parse_size,
    resize,
    resize_to,
    to_float_batch,
)
from .base import Teacher
from .registry import register_teacher

log = logging.getLogger(__name__)

__all__ = [
    "CITYSCAPES_CLASSES",
    "MMSEG_MEAN",
    "MMSEG_STD",
    "CalibrationError",
    "DAFormerTeacher",
    "DaCUPTeacher",
    "NotFittedError",
    "ObsNetTeacher",
    "OnnxTeacher",
    "SMLTeacher",
    "ScoreTeacher",
    "SigmoidCalibration",
    "TorchTeacher",
    "UnsafeCheckpointError",
    "ZegFormerTeacher",
    "fit_sigmoid_calibration",
    "load_calibration",
    "load_state_dict",
    "raw_score",
]

#: Cityscapes' 19 evaluation classes in trainId order (DAFormer, SML, ObsNet default).
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
#: mmsegmentation / detectron2 normalization for 0..255 RGB input (DAFormer, ZegFormer configs).
MMSEG_MEAN = (123.675, 116.28, 103.53)
MMSEG_STD = (58.395, 57.12, 57.375)


class UnsafeCheckpointError(PosthocError, ValueError):
    """A checkpoint would need unpickling arbitrary objects; posthoc refuses to load it."""


class NotFittedError(PosthocError, RuntimeError):
    """A teacher needs statistics or a calibration that were neither fitted nor loaded."""


class CalibrationError(PosthocError, ValueError):
    """A calibration or statistics file is malformed, or a fit is impossible on the data given."""


# =============================================================================== file helpers


def _atomic_write_json(path: Any, obj: dict) -> Path:
    """Write JSON to ``path`` atomically (temp file in the same folder, then os.replace)."""
    from posthoc.adapters.io import write_json_atomic

    return write_json_atomic(Path(path).expanduser(), obj, indent=1)


def _read_json(path: Any, fmt: str) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise CalibrationError(f"{fmt} file {str(p)!r} does not exist")
    try:
        obj = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CalibrationError(f"{fmt} file {str(p)!r} is not valid JSON: {e}") from e
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CalibrationError(f"{str(p)!r} must be a JSON object with \"format\": \"{fmt}\"; got format {got!r}")
    return obj


def load_state_dict(path: Any, *, key: str | None = None) -> dict[str, torch.Tensor]:
    """Load a torch state dict without unpickling arbitrary objects (DESIGN.md, Conventions 6).

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers.
    Checkpoints that wrap the weights (``{"state_dict": ...}`` as mmseg writes,
    ``{"model": ...}`` as detectron2 writes) are unwrapped; ``key`` picks the entry.

    Raises:
        FileNotFoundError (ModelFileNotFoundError): the file does not exist.
        UnsafeCheckpointError: the checkpoint holds pickled objects (a whole module, an
            optimizer with custom classes ...). The message names the safe alternative:
            re-save ``model.state_dict()`` (or convert to safetensors) once, in an
            environment you trust.
        MissingExtraError: a .safetensors file without the safetensors package.
    """
    from .onnx_runtime import ModelFileNotFoundError

    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelFileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    if p.suffix == ".onnx":
        raise DTypeError(f"{str(p)!r} is an ONNX file, not a torch checkpoint; use OnnxTeacher / weights='{p}'")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise MissingExtraError("loading .safetensors needs safetensors: `pip install 'posthoc[bench]'`") from e
        obj: Any = load_file(str(p))
    else:
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(
                f"refusing to unpickle {str(p)!r}: it holds Python objects beyond tensors ({e}). "
                "posthoc only loads weights safely. In an environment you trust, re-save just the weights "
                "once: `torch.save(model.state_dict(), 'weights.pt')` or "
                "`safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')`, "
                "or export the model to ONNX and use weights='model.onnx'."
            ) from e
        except (RuntimeError, EOFError, OSError) as e:
            raise UnsafeCheckpointError(
                f"could not read {str(p)!r} as a torch checkpoint with weights_only=True: {e}. "
                "Save weights with torch.save(model.state_dict(), path) or safetensors."
            ) from e
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            keys = list(obj) if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueRangeError(f"checkpoint {str(p)!r} has no entry {key!r}; it has {keys}")
        obj = obj[key]
    elif isinstance(obj, Mapping):
        for k in ("state_dict", "model", "model_state_dict"):
            if k in obj and isinstance(obj[k], Mapping):
                obj = obj[k]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DTypeError(f"checkpoint {str(p)!r} must hold a state dict of tensors; got {type(obj).__name__}")
    return dict(obj)


# =============================================================================== model runners


def _as_dict(out: Any, names: Sequence[str] | None, what: str) -> dict[str, torch.Tensor]:
    """Name a torch module's raw output: tensor -> {"logits"}, dict as is, tuple -> names."""
    if isinstance(out, torch.Tensor):
        return {(names[0] if names else "logits"): out}
    if isinstance(out, Mapping):
        return {str(k): v for k, v in out.items() if isinstance(v, torch.Tensor)}
    if isinstance(out, (tuple, list)):
        tens = [v for v in out if isinstance(v, torch.Tensor)]
        if names is None:
            names = ["logits", "features"] if len(tens) == 2 else [f"output{i}" for i in range(len(tens))]
        if len(names) < len(tens):
            raise ShapeError(f"{what} returned {len(tens)} tensors; output_names names only {len(names)}")
        return dict(zip(names, tens))
    raise DTypeError(f"{what} must return a tensor, a dict or a tuple of tensors; got {type(out).__name__}")


class _OnnxRunner:
    """One onnxruntime session plus its input/output bookkeeping (fixed sizes, batch loop)."""

    def __init__(self, path: Any, *, device=None, providers=None, input_name: str | None = None,
                 batch_size: int | None = None, expect: str = "an ONNX model") -> None:
        from .onnx_runtime import input_specs, make_session, output_specs, session_device

        self.path = Path(path)
        self.session = make_session(path, device=device, providers=providers, expect=expect)
        self.device = session_device(self.session)
        self.inputs = input_specs(self.session)
        self.outputs = output_specs(self.session)
        self.output_names = [s.name for s in self.outputs]
        imgs = [s for s in self.inputs if s.rank == 4 and s.shape[1] in (3, None)]
        if input_name is not None:
            match = [s for s in self.inputs if s.name == input_name]
            if not match:
                raise ShapeError(
                    f"{self.path.name} has no input {input_name!r}; inputs: {[s.describe() for s in self.inputs]}"
                )
            self.image = match[0]
        elif len(imgs) == 1 or (imgs and any(s.name == "image" for s in imgs)):
            self.image = next((s for s in imgs if s.name == "image"), imgs[0])
        else:
            raise ShapeError(
                f"{self.path.name}: expected {expect} with one image input (B,3,H,W) float; "
                f"found inputs {[s.describe() for s in self.inputs]} (pass input_name=...)"
            )
        if self.image.rank != 4 or self.image.shape[1] not in (3, None):
            raise ShapeError(f"{self.path.name}: image input must be (B,3,H,W); got {self.image.describe()}")
        if self.image.dtype not in (np.float32, np.float16, np.float64):
            raise DTypeError(f"{self.path.name}: image input must be a float tensor; got {self.image.describe()}")
        h, w = self.image.shape[2], self.image.shape[3]
        self.fixed_hw = (h, w) if h is not None and w is not None else None
        fixed_b = self.image.shape[0]
        self.batch = fixed_b if fixed_b is not None else (int(batch_size) if batch_size else None)
        self.fixed_batch = fixed_b is not None

    def run(self, feeds: dict[str, torch.Tensor], output_names: Sequence[str] | None = None) -> dict:
        """Run on batched feeds (axis 0 = batch), looping in chunks when the batch is fixed."""
        from .onnx_runtime import run_session

        b = next(iter(feeds.values())).shape[0]
        names = list(output_names) if output_names is not None else self.output_names
        if b == 0:
            raise ShapeError("an empty batch (B=0) cannot be run through an ONNX model")
        step = self.batch or b
        parts: dict[str, list] = {n: [] for n in names}
        for i in range(0, b, step):
            chunk = {k: v[i:i + step] for k, v in feeds.items()}
            n = next(iter(chunk.values())).shape[0]
            if self.fixed_batch and n < step:  # pad a fixed-batch model's last chunk by repeating the last image
                chunk = {k: torch.cat([v, v[-1:].expand(step - n, *v.shape[1:])]) for k, v in chunk.items()}
            out = run_session(self.session, chunk, names)
            for k in names:
                parts[k].append(out[k][:n])
        return {k: (v[0] if len(v) == 1 else torch.cat(v)) for k, v in parts.items()}


class _TorchRunner:
    """A torch module in eval mode on a device; ``run(x)`` returns (raw output, named outputs)."""

    def __init__(self, module: Any, *, device=None, weights: Any = None, output_names=None,
                 batch_size: int | None = None, what: str = "module") -> None:
        if not isinstance(module, torch.nn.Module):
            raise DTypeError(f"{what} must be a torch.nn.Module; got {type(module).__name__}")
        if weights is not None:
            sd = weights if isinstance(weights, Mapping) else load_state_dict(weights)
            missing, unexpected = module.load_state_dict(sd, strict=False)
            if missing or unexpected:
                raise ShapeError(
                    f"weights do not fit {what} {type(module).__name__}: missing keys {list(missing)[:8]}, "
                    f"unexpected keys {list(unexpected)[:8]}"
                )
        if device is None:
            p = next(iter(module.parameters()), None)
            device = p.device if p is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.output_names = output_names
        self.batch = int(batch_size) if batch_size else None
        self.what = what
        self.fixed_hw = None

    def run(self, x: torch.Tensor, *args) -> tuple[Any, dict]:
        x = x.to(self.device)
        if self.batch is None or x.shape[0] <= self.batch:
            raw = self.module(x, *args)
            return raw, _as_dict(raw, self.output_names, self.what)
        raws, named = [], []
        for i in range(0, x.shape[0], self.batch):
            raw = self.module(x[i:i + self.batch], *[a[i:i + self.batch] if isinstance(a, torch.Tensor) else a
                                                      for a in args])
            raws.append(raw)
            named.append(_as_dict(raw, self.output_names, self.what))
        merged = {k: torch.cat([d[k] for d in named]) for k in named[0]}
        return raws, merged


def _pick_main(outs: dict, output_name: str | None, what: str, prefer: Sequence[str] = ()) -> str:
    if output_name is not None:
        if output_name not in outs:
            raise ShapeError(f"{what} has no output {output_name!r}; outputs: {list(outs)}")
        return output_name
    for n in prefer:
        if n in outs:
            return n
    four = [n for n, v in outs.items() if v.ndim == 4]
    if not four:
        raise ShapeError(
            f"{what} must output a (B,C,h,w) map; got {[(n, shape_str(v.shape)) for n, v in outs.items()]}"
        )
    return four[0]


# =============================================================================== generic teachers


def _run_image(runner: Any, x: torch.Tensor) -> dict:
    """Run a torch or ONNX runner on a prepared image batch; return its outputs by name."""
    if isinstance(runner, _TorchRunner):
        return runner.run(x)[1]
    return runner.run({runner.image.name: x})


class _ImageConfig:
    """Input preprocessing shared by the teachers: layout -> [0,1] float, resize, normalize."""

    def _set_image_config(self, mean, std, channel_order, input_size, pixel_scale) -> None:
        self.mean, self.std = check_mean_std(mean, std)
        self.channel_order = str(channel_order).upper()
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueRangeError(f"channel_order must be 'RGB' or 'BGR'; got {channel_order!r}")
        self.input_size = parse_size(input_size)
        self.pixel_scale = pixel_scale

    def _prepare(self, images: Any, device, fixed_hw=None) -> tuple[torch.Tensor, tuple[int, int]]:
        """images -> ((B,3,h,w) normalized float32 on device, original (H,W))."""
        x = to_float_batch(images, device=device)  # a new tensor we own
        hw = (int(x.shape[2]), int(x.shape[3]))
        size = self.input_size
        if fixed_hw is not None:
            if size is not None and tuple(size) != tuple(fixed_hw):
                raise ShapeError(f"input_size {size} disagrees with the model's fixed input size {fixed_hw}")
            size = fixed_hw
        # bilinear resizing is a convex combination per channel, so it commutes with the per-channel
        # affine normalization: normalize in place first, then resize (one allocation fewer)
        x = normalize(x, self.mean, self.std, self.channel_order, self.pixel_scale, inplace=True)
        return resize(x, size), hw


def _anomaly_from(out: torch.Tensor, activation: str | None, what: str) -> torch.Tensor:
    """(B,1,h,w) or (B,h,w) model output -> probability in [0,1] (optionally via a sigmoid)."""
    if out.ndim == 3:
        out = out[:, None]
    if out.ndim != 4 or out.shape[1] != 1:
        raise ShapeError(f"{what} must output an anomaly map (B,1,h,w); got {shape_str(out.shape)}")
    out = out.float()
    check_finite(out, f"{what} output")
    if activation == "sigmoid":
        return torch.sigmoid(out)
    if activation not in (None, "none"):
        raise ValueRangeError(f"activation must be None or 'sigmoid'; got {activation!r}")
    if out.numel():
        lo, hi = float(out.min()), float(out.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueRangeError(
                f"{what}: an anomaly teacher needs probabilities in [0,1]; the model output has values in "
                f"[{lo:g},{hi:g}]. Pass activation='sigmoid' if it outputs logits, or wrap it as a semantic "
                "teacher and use a calibrated score teacher (maxlogit, energy, sml)."
            )
    return out


def _class_names(names: Sequence[str] | None, k: int, what: str) -> list[str]:
    if names is None:
        return [f"class_{i}" for i in range(k)]
    names = [str(n) for n in names]
    if len(names) != k:
        raise ShapeError(f"{what} outputs {k} classes but class_names has {len(names)} entries")
    return names


class _NamedOutputs:
    """``class_names`` / ``semantic_class_names`` of the generic teachers (held in ``_names``)."""

    _names: list | None
    kind: str

    @property
    def class_names(self) -> list[str]:
        return list(self._names or [])

    @property
    def semantic_class_names(self) -> list[str]:
        """Class names of a semantic model (empty for kind="anomaly", or until first known)."""
        return list(self._names or []) if self.kind == "semantic" else []


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
            self._names = list(class_names) if class_names is not None else None
        else:
            self._names = ["anomaly"]
        self.device = self.runner.device

    def raw(self, images: Any) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
        """Run the model; return ({output name: tensor at model resolution}, input (H,W))."""
        x, hw = self._prepare(images, self.device, self.runner.fixed_hw)
        return self.runner.run({self.runner.image.name: x}), hw

    def __call__(self, images: Any) -> TeacherOutput:
        with torch.inference_mode():
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
        with torch.inference_mode():
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


# =============================================================================== weights resolution


def _bundled(name: str) -> dict:
    """``{role: Path, "meta": dict}`` of the bundled default for ``name`` (NoBundledWeightsError if none)."""
    from . import bundled

    return bundled.default_weights(name)


def _meta_kwargs(meta: Mapping | None) -> dict:
    """Bundled manifest meta -> OnnxTeacher keyword settings."""
    if not meta:
        return {}
    out = {}
    for k in ("mean", "std", "channel_order", "input_size", "class_names"):
        if k in meta:
            out[k] = meta[k]
    return out


def _split_weights(weights: Any, name: str, roles: Sequence[str]) -> tuple[dict, dict]:
    """Normalize ``weights`` to ({role: path/module/teacher}, meta). None -> bundled default."""
    if weights is None:
        w = dict(_bundled(name))
        meta = w.pop("meta", None) or {}
        return w, dict(meta)
    if isinstance(weights, Mapping):
        w = dict(weights)
        meta = w.pop("meta", None) or {}
        unknown = [k for k in w if k not in roles]
        if unknown:
            raise ValueRangeError(f"weights for {name!r} take roles {list(roles)}; got unknown roles {unknown}")
        return w, dict(meta)
    return {roles[0]: weights}, {}


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


def _merge(meta: Mapping, user: Mapping) -> dict:
    """Settings: bundled/meta defaults, overridden by what the user passed explicitly (non-None)."""
    out = _meta_kwargs(meta)
    out.update({k: v for k, v in user.items() if v is not None})
    return out


# =============================================================================== calibration


class SigmoidCalibration:
    """A global monotone map of a raw anomaly score to [0,1]: ``p = sigmoid((raw - shift) / scale)``.

    One map for the whole data set (DESIGN.md, "Scores"), so the pooled ranking of
    pixels, and with it AP/AUROC/FPR95, is unchanged; never a per-image min-max.

    Attributes:
        shift: raw score mapped to p = 0.5.
        scale: > 0; raw-score units per unit of logit.
        score: which raw score this maps ("maxlogit", "energy", "sml", ...).
        fit: how it was fitted (mode, pixel count, quantiles ...), informational.
    """

    FORMAT = "posthoc.calibration"

    def __init__(self, shift: float, scale: float, score: str = "", fit: Mapping | None = None) -> None:
        shift, scale = float(shift), float(scale)
        if not (math.isfinite(shift) and math.isfinite(scale)) or scale <= 0:
            raise CalibrationError(f"calibration needs a finite shift and a finite scale > 0; got {shift}, {scale}")
        self.shift, self.scale, self.score = shift, scale, str(score)
        self.fit = dict(fit or {})

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        """raw (any shape, float, higher = more anomalous) -> probability in [0,1], same shape."""
        return torch.sigmoid((raw.float() - self.shift) / self.scale)

    def to_dict(self) -> dict:
        return {"format": self.FORMAT, "version": 1, "method": "sigmoid", "score": self.score,
                "shift": self.shift, "scale": self.scale, "fit": self.fit}

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "calibration") -> SigmoidCalibration:
        if not isinstance(d, Mapping) or d.get("format", cls.FORMAT) != cls.FORMAT or d.get("method", "sigmoid") != "sigmoid":
            raise CalibrationError(f"{where} must be a {cls.FORMAT!r} object with method 'sigmoid'; got {d!r:.200}")
        try:
            return cls(d["shift"], d["scale"], d.get("score", ""), d.get("fit"))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, CalibrationError):
                raise
            raise CalibrationError(f"{where} needs numeric 'shift' and 'scale'; got {d!r:.200}") from e

    def save(self, path: Any) -> Path:
        """Write the JSON format documented in the module docstring, atomically."""
        return _atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Any) -> SigmoidCalibration:
        return cls.from_dict(_read_json(path, cls.FORMAT), str(path))

    def __repr__(self) -> str:
        return f"SigmoidCalibration(shift={self.shift:.6g}, scale={self.scale:.6g}, score={self.score!r})"


def load_calibration(src: Any) -> SigmoidCalibration:
    """A calibration from a path, a dict (the JSON object) or a SigmoidCalibration."""
    if isinstance(src, SigmoidCalibration):
        return src
    if isinstance(src, Mapping):
        return SigmoidCalibration.from_dict(src)
    if isinstance(src, (str, os.PathLike)):
        return SigmoidCalibration.load(src)
    raise DTypeError(f"calibration must be a path, a dict or a SigmoidCalibration; got {type(src).__name__}")


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def fit_sigmoid_calibration(raw: Any, labels: Any = None, *, score: str = "", quantiles=(0.5, 0.99),
                            probs=(0.1, 0.5), balanced: bool = True, max_iter: int = 100) -> SigmoidCalibration:
    """Fit a global sigmoid to pooled raw anomaly scores.

    Args:
        raw: 1-D float array/tensor of raw scores (higher = more anomalous), pooled over
            frames (a subsample is fine).
        labels: optional 1-D array of the same length, 1 = anomaly, 0 = in-distribution
            (other values, e.g. void 255, are ignored). Given both classes, the fit is
            Platt scaling: a 1-D logistic regression of labels on raw (class-balanced
            by default), fitted by Newton's method.
        quantiles, probs: without labels of both classes (e.g. anomaly-free training
            frames) the map sends the pooled ``quantiles[0]`` of raw to ``probs[0]`` and
            ``quantiles[1]`` to ``probs[1]``: by default the median in-distribution pixel
            to 0.1 and the 99th percentile to 0.5. Pixels labelled 1 are left out of it;
            void/unlabelled ones are kept.
        balanced: weight both classes equally in the Platt fit.

    Returns:
        SigmoidCalibration.

    Raises:
        CalibrationError: no finite scores, a degenerate distribution (all equal), or a
            Platt fit whose slope is not positive (the score ranks anomalies lower:
            wrong polarity).
    """
    r_all = torch.as_tensor(np.asarray(raw.cpu() if isinstance(raw, torch.Tensor) else raw),
                            dtype=torch.float64).flatten()
    finite = torch.isfinite(r_all)
    platt = False
    if labels is not None:
        y_all = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)).flatten()
        if y_all.shape != r_all.shape:
            raise ShapeError(f"labels must match raw scores {shape_str(r_all.shape)}; got {shape_str(y_all.shape)}")
        lab_keep = finite & ((y_all == 0) | (y_all == 1))
        y = y_all[lab_keep].double()
        platt = 0 < float(y.sum()) < y.numel()
    if platt:
        r = r_all[lab_keep]
    else:  # quantile map over every finite pixel not labelled anomalous (void / unlabelled pixels count)
        keep = finite if labels is None else finite & (y_all != 1)
        r = r_all[keep]
    if r.numel() < 2:
        raise CalibrationError(f"calibration needs at least 2 finite scores; got {r.numel()}")
    if platt:
        w = torch.ones_like(y)
        if balanced:
            npos = float(y.sum())
            w = torch.where(y > 0, 0.5 / npos, 0.5 / (y.numel() - npos))
        else:
            w = w / w.sum()
        mu, sd = float(r.mean()), float(r.std())
        if sd <= 0:
            raise CalibrationError("all raw scores are equal; a calibration cannot be fitted")
        z = (r - mu) / sd
        a, b = 1.0, 0.0
        for _ in range(max_iter):
            p = torch.sigmoid(a * z + b)
            g_a = float((w * (p - y) * z).sum()) + 1e-6 * a
            g_b = float((w * (p - y)).sum())
            s = w * p * (1 - p)
            h_aa = float((s * z * z).sum()) + 1e-6
            h_ab = float((s * z).sum())
            h_bb = float(s.sum()) + 1e-12
            det = h_aa * h_bb - h_ab * h_ab
            if det <= 0:
                break
            da = (h_bb * g_a - h_ab * g_b) / det
            db = (h_aa * g_b - h_ab * g_a) / det
            a, b = a - da, b - db
            if abs(da) + abs(db) < 1e-10:
                break
        if not (a > 0 and math.isfinite(a) and math.isfinite(b)):
            raise CalibrationError(
                f"the Platt fit of {score or 'the score'} has slope {a:.3g} <= 0: anomalies score lower than "
                "in-distribution pixels (wrong polarity, or labels swapped)"
            )
        scale = sd / a
        shift = mu - b * scale
        fit = {"mode": "platt", "pixels": int(r.numel()), "positives": int(y.sum()), "balanced": bool(balanced)}
        return SigmoidCalibration(shift, scale, score, fit)
    q0, q1 = (float(v) for v in quantiles)
    p0, p1 = (float(v) for v in probs)
    if not (0 <= q0 < q1 <= 1 and 0 < p0 < p1 < 1):
        raise ValueRangeError(f"need 0<=q0<q1<=1 and 0<p0<p1<1; got quantiles {quantiles}, probs {probs}")
    v0, v1 = (float(v) for v in np.quantile(r.numpy(), [q0, q1]))  # numpy: no size limit (torch.quantile has one)
    if not v1 > v0:
        raise CalibrationError(
            f"raw scores at quantiles {q0} and {q1} are equal ({v0:g}); a calibration cannot be fitted on them"
        )
    scale = (v1 - v0) / (_logit(p1) - _logit(p0))
    shift = v0 - scale * _logit(p0)
    fit = {"mode": "quantile", "pixels": int(r.numel()), "quantiles": [q0, q1], "probs": [p0, p1],
           "values": [v0, v1]}
    return SigmoidCalibration(shift, scale, score, fit)


def _one_batch(img: Any) -> Any:
    """A single (H,W,3) / (3,H,W) image becomes a batch of one; batches pass through."""
    if isinstance(img, (np.ndarray, torch.Tensor)) and img.ndim == 3:
        return img[None]
    return img


def _iter_frames(frames: Any) -> Iterable[tuple[Any, Any]]:
    """Yield (images, labels-or-None) from an image batch, an iterable of batches or single images,
    of (images, labels) pairs, of {"image": ..., "labels": ...} dicts, or of objects with an
    ``image`` and a ``semantic``/``labels`` attribute (``posthoc.bench.synthetic.Frame``)."""
    if isinstance(frames, (np.ndarray, torch.Tensor)):
        yield _one_batch(frames), None
        return
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Iterable):
        raise DTypeError(f"frames must be an image batch or an iterable of image batches; got {type(frames).__name__}")
    for item in frames:
        if isinstance(item, Mapping):
            img = next((item[k] for k in ("images", "image") if k in item), None)
            lab = next((item[k] for k in ("labels", "label", "mask") if k in item), None)
            if img is None:
                raise DTypeError(f"frame dicts need an 'image' or 'images' entry; got keys {list(item)}")
            yield _one_batch(img), lab
        elif hasattr(item, "image") or hasattr(item, "images"):  # e.g. posthoc.bench.synthetic.Frame
            img = getattr(item, "images", None)
            img = getattr(item, "image", None) if img is None else img
            lab = next((getattr(item, k) for k in ("semantic", "labels", "label") if getattr(item, k, None) is not None),
                       None)
            yield _one_batch(img), lab
        elif isinstance(item, (tuple, list)):
            if len(item) != 2:
                raise DTypeError(f"frame tuples must be (images, labels); got {len(item)} items")
            yield _one_batch(item[0]), item[1]
        else:
            yield _one_batch(item), None


def _as_batch_labels(labels: Any, b: int, hw: tuple[int, int]) -> torch.Tensor:
    lab = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels))
    if lab.ndim == 2:
        lab = lab[None]
    if lab.ndim != 3 or lab.shape[0] != b or tuple(lab.shape[1:]) != tuple(hw):
        raise ShapeError(f"frame labels must be (B,H,W)=({b},{hw[0]},{hw[1]}); got {shape_str(lab.shape)}")
    return lab.long()


def _subsample(x: torch.Tensor, lab: torch.Tensor | None, n: int, gen: torch.Generator):
    x = x.flatten()
    idx = torch.randperm(x.numel(), generator=gen)[:n] if x.numel() > n else None
    if idx is None:
        return x.cpu(), (lab.flatten().cpu() if lab is not None else None)
    return x.cpu()[idx], (lab.flatten().cpu()[idx] if lab is not None else None)


# =============================================================================== score teachers

_SCORES = ("msp", "maxlogit", "entropy", "energy")


def raw_score(logits: torch.Tensor, score: str) -> torch.Tensor:
    """Per-pixel anomaly score from semantic logits, higher = more anomalous.

    Args:
        logits: (B,K,H,W) float logits, any range.
        score: "msp": 1 - max_k softmax (Hendrycks & Gimpel, ICLR 2017), in [0,1];
            "entropy": entropy of softmax / log K, in [0,1]; "maxlogit": -max_k l_k
            (Hendrycks et al., ICML 2022), any range; "energy": -logsumexp_k l_k, the
            free energy with T=1 (Liu et al., NeurIPS 2020, Eq. 1), any range.

    Returns:
        (B,1,H,W) float32.
    """
    x = logits.float()
    if score == "msp":
        return 1.0 - torch.softmax(x, dim=1).amax(dim=1, keepdim=True)
    if score == "entropy":
        k = x.shape[1]
        logp = torch.log_softmax(x, dim=1)
        h = -(logp.exp() * logp).sum(dim=1, keepdim=True)
        return (h / math.log(k)).clamp_(0.0, 1.0) if k > 1 else torch.zeros_like(h)
    if score == "maxlogit":
        return -x.amax(dim=1, keepdim=True)
    if score == "energy":
        return -torch.logsumexp(x, dim=1, keepdim=True)
    raise ValueRangeError(f"score must be one of {_SCORES}; got {score!r}")


class _SemanticWrapper(Teacher):
    """Shared plumbing for anomaly teachers computed from a semantic teacher's logits."""

    kind = "anomaly"

    def _semantic(self, images: Any) -> TeacherOutput:
        out = self.base(images)
        if out.kind != "semantic":
            raise ValueRangeError(f"the base teacher must be semantic; got kind {out.kind!r}")
        return out

    @property
    def semantic_class_names(self) -> list[str]:
        return list(self.base.class_names)

    def _collect(self, frames: Any, fn: Callable, *, pixels_per_frame: int, seed: int):
        """Run fn(semantic output) -> raw (B,1,H,W) over frames; pooled subsample of (raw, labels)."""
        gen = torch.Generator().manual_seed(int(seed))
        rs, ls, any_lab = [], [], False
        for images, labels in _iter_frames(frames):
            with torch.inference_mode():
                out = self._semantic(images)
                raw = fn(out)
            lab = None
            if labels is not None:
                lab = _as_batch_labels(labels, raw.shape[0], tuple(raw.shape[-2:]))
                any_lab = True
            r, lb = _subsample(raw, lab, int(pixels_per_frame) * raw.shape[0], gen)
            rs.append(r)
            ls.append(lb if lb is not None else torch.full_like(r, 255, dtype=torch.long))
        if not rs:
            raise CalibrationError("frames is empty: a calibration needs at least one frame")
        return torch.cat(rs), (torch.cat(ls) if any_lab else None)


class ScoreTeacher(_SemanticWrapper):
    """A generic post-hoc anomaly score over any semantic model, as a teacher.

    ``msp`` and ``entropy`` are probabilities already; ``maxlogit`` and ``energy`` are
    mapped to [0,1] by a global :class:`SigmoidCalibration` that must be fitted
    (:meth:`fit_calibration`) or given (``calibration=`` path/dict, or the bundled
    "calibration" file).

    Args:
        score: "msp", "maxlogit", "entropy" or "energy" (see :func:`raw_score`).
        weights: the semantic model: an .onnx path, a torch module, a semantic Teacher,
            or a dict {"model": ..., "calibration": path}; None = bundled default.
        device: where the model runs.
        calibration: path / dict / SigmoidCalibration for maxlogit and energy.
        **settings: forwarded to the semantic teacher (mean, std, channel_order,
            input_size, class_names, output_name, providers, ...).

    Returns (``__call__``):
        TeacherOutput(kind="anomaly", scores (B,1,H,W) in [0,1], logits (B,K,H,W)).
    """

    def __init__(self, score: str, weights: Any = None, device: Any = None, *, calibration: Any = None,
                 **settings: Any) -> None:
        if score not in _SCORES:
            raise ValueRangeError(f"score must be one of {_SCORES}; got {score!r}")
        self.score = score
        self.name = score
        w, meta = _split_weights(weights, score, ("model", "calibration"))
        if "model" not in w:
            raise ValueRangeError(f"weights for {score!r} need a 'model' entry; got roles {list(w)}")
        self.base = _semantic_teacher(w["model"], f"{score} model", device, _merge(meta, settings))
        cal = calibration if calibration is not None else w.get("calibration")
        self.calibration = load_calibration(cal) if cal is not None else None
        if self.calibration is not None and self.calibration.score and self.calibration.score != score:
            raise CalibrationError(f"calibration was fitted for score {self.calibration.score!r}, not {score!r}")

    @property
    def needs_calibration(self) -> bool:
        return self.score in ("maxlogit", "energy")

    def fit_calibration(self, frames: Any, *, pixels_per_frame: int = 20000, seed: int = 0,
                        **fit_kwargs: Any) -> SigmoidCalibration:
        """Fit the global sigmoid on frames (image batches, or (images, labels) pairs).

        Labels (0 = in-distribution, 1 = anomaly, 255 = void) switch the fit to Platt
        scaling; without them the quantile map of :func:`fit_sigmoid_calibration` is used.
        Pixels are subsampled (``pixels_per_frame`` per image, seeded) and pooled.
        """
        raw, lab = self._collect(frames, lambda out: raw_score(out.scores, self.score),
                                 pixels_per_frame=pixels_per_frame, seed=seed)
        self.calibration = fit_sigmoid_calibration(raw, lab, score=self.score, **fit_kwargs)
        log.info("fitted %s calibration %s", self.score, self.calibration)
        return self.calibration

    def save_calibration(self, path: Any) -> Path:
        if self.calibration is None:
            raise NotFittedError(f"{self.score}: no calibration to save; call fit_calibration(frames) first")
        return self.calibration.save(path)

    def load_calibration(self, path: Any) -> ScoreTeacher:
        self.calibration = load_calibration(path)
        return self

    def __call__(self, images: Any) -> TeacherOutput:
        with torch.inference_mode():
            out = self._semantic(images)
            raw = raw_score(out.scores, self.score)
            if self.needs_calibration:
                if self.calibration is None:
                    raise NotFittedError(
                        f"the {self.score} teacher maps an unbounded score to [0,1] with a global calibration; "
                        "call fit_calibration(frames) or pass calibration=path.json"
                    )
                prob = self.calibration(raw)
            else:
                prob = raw.clamp(0.0, 1.0)
            return TeacherOutput(prob, "anomaly", ["anomaly"], features=out.features, logits=out.scores)


# =============================================================================== SML


def _boundary_suppression(score: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    from posthoc import scores as S

    return S.boundary_suppression(score, prediction)


def _dilated_smoothing(score: torch.Tensor) -> torch.Tensor:
    from posthoc import scores as S

    return S.dilated_smoothing(score)


class SMLTeacher(_SemanticWrapper):
    """Standardized Max Logits (Jung et al., ICCV 2021; official code shjung13/Standardized-max-logits).

    SML(p) = (max_k l_k(p) - mu_c) / sigma_c with c = argmax_k l_k(p) and per-class
    statistics of the max logit over the pixels predicted as c (``fit``), computed at
    the input resolution as the official ``DeepV3Plus.forward`` does. Then, as in the
    official ``BoundarySuppressionWithSmoothing``, boundary suppression around the
    predicted label map and dilated smoothing (``posthoc.scores``). The result is high
    for in-distribution pixels; it is negated and mapped to [0,1] with a global
    :class:`SigmoidCalibration` (fitted in ``fit`` on the same frames).

    Args:
        weights: the semantic model (.onnx path, torch module, semantic Teacher) or a
            dict {"model": ..., "stats": path.json}; None = bundled default.
        device: where the model runs.
        stats: path or dict in the "posthoc.sml_stats" format (overrides weights' "stats").
        boundary_suppression, dilated_smoothing: the two post-processing steps (official
            defaults: both on).
        **settings: forwarded to the semantic teacher.
    """

    FORMAT = "posthoc.sml_stats"

    def __init__(self, weights: Any = None, device: Any = None, *, stats: Any = None,
                 boundary_suppression: bool | None = None, dilated_smoothing: bool | None = None,
                 **settings: Any) -> None:
        self.name = "sml"
        w, meta = _split_weights(weights, "sml", ("model", "stats"))
        if "model" not in w:
            raise ValueRangeError(f"weights for 'sml' need a 'model' entry; got roles {list(w)}")
        self.base = _semantic_teacher(w["model"], "sml model", device, _merge(meta, settings))
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None
        self.count: torch.Tensor | None = None
        self.calibration: SigmoidCalibration | None = None
        self.boundary_suppression = True
        self.dilated_smoothing = True
        src = stats if stats is not None else w.get("stats")
        if src is not None:
            self.load_stats(src)
        if boundary_suppression is not None:
            self.boundary_suppression = bool(boundary_suppression)
        if dilated_smoothing is not None:
            self.dilated_smoothing = bool(dilated_smoothing)

    # ------------------------------------------------------------------ statistics
    def fit(self, frames: Any, *, calibrate: bool = True, pixels_per_frame: int = 20000, seed: int = 0,
            **fit_kwargs: Any) -> SMLTeacher:
        """Fit the class statistics (and then the calibration) on frames.

        Args:
            frames: an image batch, or an iterable of image batches or (images, labels)
                pairs (labels (B,H,W): 0 in-distribution, 1 anomaly, 255 void; anomaly and
                void pixels are left out of the statistics). An iterator is consumed
                once and kept in memory for the calibration pass.
            calibrate: also fit the global calibration of -SML (second pass).
            pixels_per_frame, seed, fit_kwargs: as in :meth:`ScoreTeacher.fit_calibration`.

        Returns:
            self. Statistics are exact sums over all pixels (float64): mean and unbiased
            variance of the max logit per predicted class (official
            ``calculate_statistics``); classes predicted on fewer than 2 pixels get the
            pooled variance (and, if never predicted, the pooled mean; count 0 in the file).
        """
        if isinstance(frames, Iterable) and not isinstance(frames, (np.ndarray, torch.Tensor, list, tuple)):
            frames = list(frames)
        k = None
        s1 = s2 = cnt = None
        for images, labels in _iter_frames(frames):
            with torch.inference_mode():
                logits = self._semantic(images).scores.float()
                mx, pred = logits.max(dim=1)
                keep = torch.ones_like(pred, dtype=torch.bool)
                if labels is not None:
                    lab = _as_batch_labels(labels, pred.shape[0], tuple(pred.shape[-2:])).to(pred.device)
                    keep = lab == 0
                if k is None:
                    k = logits.shape[1]
                    s1 = torch.zeros(k, dtype=torch.float64)
                    s2 = torch.zeros(k, dtype=torch.float64)
                    cnt = torch.zeros(k, dtype=torch.float64)
                elif logits.shape[1] != k:
                    raise ShapeError(f"the model gave {logits.shape[1]} classes on one frame and {k} on another")
                pv = pred[keep].cpu()
                mv = mx[keep].double().cpu()
                s1 += torch.bincount(pv, weights=mv, minlength=k)
                s2 += torch.bincount(pv, weights=mv * mv, minlength=k)
                cnt += torch.bincount(pv, minlength=k).double()
        if k is None:
            raise CalibrationError("frames is empty: SML statistics need at least one frame")
        tot = float(cnt.sum())
        if tot == 0:
            raise CalibrationError("no in-distribution pixel in frames (all labelled anomaly/void)")
        g_mean = float(s1.sum()) / tot
        g_var = max((float(s2.sum()) - tot * g_mean**2) / max(tot - 1.0, 1.0), 1e-12)
        has = cnt > 0
        mean = torch.where(has, s1 / cnt.clamp(min=1), torch.full_like(s1, g_mean))
        # unbiased variance, as the official calculate_statistics (np.var(..., ddof=1) semantics)
        var = ((s2 - cnt * mean**2) / (cnt - 1).clamp(min=1)).clamp(min=0)
        var = torch.where((cnt > 1) & (var > 1e-12), var, torch.full_like(var, g_var))
        if not bool(has.all()):
            log.warning("SML: classes %s were never predicted; they get the pooled statistics",
                        [i for i in range(k) if not has[i]])
        self.mean, self.var, self.count = mean, var, cnt.long()
        if calibrate:
            raw, lab = self._collect(frames, lambda out: -self._sml(out.scores), pixels_per_frame=pixels_per_frame,
                                     seed=seed)
            self.calibration = fit_sigmoid_calibration(raw, lab, score="sml", **fit_kwargs)
        return self

    def fit_calibration(self, frames: Any, *, pixels_per_frame: int = 20000, seed: int = 0,
                        **fit_kwargs: Any) -> SigmoidCalibration:
        """Fit only the global calibration of -SML, keeping the current class statistics.

        For statistics that came from elsewhere (e.g. converted from the official
        ``stats/*_mean.npy``) and have no calibration yet. Frames as in :meth:`fit`.
        """
        if self.mean is None:
            raise NotFittedError("SML statistics are not fitted; call fit(frames) or load_stats(path)")
        raw, lab = self._collect(frames, lambda out: -self._sml(out.scores), pixels_per_frame=pixels_per_frame,
                                 seed=seed)
        self.calibration = fit_sigmoid_calibration(raw, lab, score="sml", **fit_kwargs)
        return self.calibration

    def stats_dict(self) -> dict:
        if self.mean is None:
            raise NotFittedError("SML statistics are not fitted; call fit(frames) or load_stats(path)")
        names = list(self.base.class_names) or [f"class_{i}" for i in range(self.mean.numel())]
        return {
            "format": self.FORMAT, "version": 1, "class_names": names,
            "mean": [float(v) for v in self.mean], "var": [float(v) for v in self.var],
            "count": [int(v) for v in self.count],
            "calibration": self.calibration.to_dict() if self.calibration is not None else None,
            "postprocess": {"boundary_suppression": self.boundary_suppression,
                            "dilated_smoothing": self.dilated_smoothing},
        }

    def save_stats(self, path: Any) -> Path:
        """Write the statistics (+ calibration) as "posthoc.sml_stats" JSON, atomically."""
        return _atomic_write_json(path, self.stats_dict())

    def load_stats(self, src: Any) -> SMLTeacher:
        """Load statistics from a path or a dict in the "posthoc.sml_stats" format; returns self."""
        where = str(src) if not isinstance(src, Mapping) else "stats"
        d = src if isinstance(src, Mapping) else _read_json(src, self.FORMAT)
        if d.get("format", self.FORMAT) != self.FORMAT:
            raise CalibrationError(f"{where} must have format {self.FORMAT!r}; got {d.get('format')!r}")
        try:
            mean = torch.tensor([float(v) for v in d["mean"]], dtype=torch.float64)
            var = torch.tensor([float(v) for v in d["var"]], dtype=torch.float64)
            count = torch.tensor([int(v) for v in d.get("count", [0] * len(mean))], dtype=torch.long)
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f"{where} needs lists 'mean' and 'var' of numbers: {e}") from e
        if mean.ndim != 1 or mean.shape != var.shape or mean.numel() == 0:
            raise CalibrationError(f"{where}: 'mean' and 'var' must be equal-length lists; got {len(mean)}, {len(var)}")
        if not bool(torch.isfinite(mean).all() and torch.isfinite(var).all()) or bool((var <= 0).any()):
            raise CalibrationError(f"{where}: 'mean' must be finite and 'var' finite and > 0")
        names = d.get("class_names")
        mine = list(self.base.class_names)
        if names is not None and mine and list(names) != mine:
            raise CalibrationError(f"{where} was fitted for classes {list(names)[:5]}...; the model has {mine[:5]}...")
        self.mean, self.var, self.count = mean, var, count
        self.calibration = load_calibration(d["calibration"]) if d.get("calibration") else None
        pp = d.get("postprocess") or {}
        self.boundary_suppression = bool(pp.get("boundary_suppression", True))
        self.dilated_smoothing = bool(pp.get("dilated_smoothing", True))
        return self

    # ------------------------------------------------------------------ inference
    def _sml(self, logits: torch.Tensor) -> torch.Tensor:
        """(B,K,H,W) logits -> (B,1,H,W) SML after post-processing (high = in-distribution)."""
        if self.mean is None:
            raise NotFittedError("SML statistics are not fitted; call fit(frames) or load_stats(path)")
        k = logits.shape[1]
        if k != self.mean.numel():
            raise ShapeError(f"SML statistics have {self.mean.numel()} classes; the model outputs {k}")
        mx, pred = logits.float().max(dim=1)
        mean = self.mean.to(device=logits.device, dtype=torch.float32)
        std = self.var.to(device=logits.device, dtype=torch.float32).sqrt()
        sml = ((mx - mean[pred]) / std[pred])[:, None]
        if self.boundary_suppression:
            sml = _boundary_suppression(sml, pred)
        if self.dilated_smoothing:
            sml = _dilated_smoothing(sml)
        if sml.ndim == 3:
            sml = sml[:, None]
        return sml

    def __call__(self, images: Any) -> TeacherOutput:
        with torch.inference_mode():
            out = self._semantic(images)
            raw = -self._sml(out.scores)
            if self.calibration is None:
                raise NotFittedError("the SML teacher has no calibration; call fit(frames) or load_stats(path)")
            return TeacherOutput(self.calibration(raw), "anomaly", ["anomaly"], features=out.features,
                                 logits=out.scores)


# =============================================================================== ObsNet


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
        seg, obs = w["segmenter"], w["observer"]
        if isinstance(seg, torch.nn.Module) != isinstance(obs, torch.nn.Module):
            raise DTypeError("obsnet segmenter and observer must both be .onnx paths or both torch modules")
        if isinstance(seg, torch.nn.Module):
            self.seg = _TorchRunner(seg, device=device, what="obsnet segmenter")
            self.obs = _TorchRunner(obs, device=self.seg.device, what="obsnet observer")
            self.device = self.seg.device
        else:
            self.seg = _OnnxRunner(seg, device=device, providers=providers,
                                   expect="an ObsNet segmenter: image -> logits (+ features)")
            self.obs = _OnnxRunner(obs, device=device, providers=providers,
                                   expect="an ObsNet observer: image + segmenter features -> logit (B,1,h,w)")
            self.device = self.seg.device
            seg_names = set(self.seg.output_names)
            for s in self.obs.inputs:
                if s.name not in seg_names and s.name != self.obs.image.name:
                    raise ShapeError(
                        f"observer input {s.name!r} is neither the image nor a segmenter output "
                        f"(segmenter outputs: {sorted(seg_names)})"
                    )
            if self.seg.fixed_hw and self.obs.fixed_hw and self.seg.fixed_hw != self.obs.fixed_hw:
                raise ShapeError(f"segmenter and observer fixed sizes differ: {self.seg.fixed_hw} vs {self.obs.fixed_hw}")

    @property
    def class_names(self) -> list[str]:
        return ["anomaly"]

    @property
    def semantic_class_names(self) -> list[str]:
        """Names of the segmenter's classes (of ``TeacherOutput.logits``); empty until known."""
        return list(self._names or [])

    def __call__(self, images: Any) -> TeacherOutput:
        with torch.inference_mode():
            x, hw = self._prepare(images, self.device, self.seg.fixed_hw)
            if isinstance(self.seg, _TorchRunner):
                raw, seg_out = self.seg.run(x)
                if self.observer_fn is not None:
                    obs_raw = self.observer_fn(self.obs.module, x, raw)
                else:
                    obs_raw = self.obs.module(x, raw)
                obs_out = _as_dict(obs_raw, ["logit"], "obsnet observer")
            else:
                seg_out = self.seg.run({self.seg.image.name: x})
                feeds = {s.name: (x if s.name == self.obs.image.name else seg_out[s.name]) for s in self.obs.inputs}
                obs_out = self.obs.run(feeds)
            logit = obs_out[_pick_main(obs_out, None, "obsnet observer", prefer=("logit",))]
            prob = resize_to(_anomaly_from(logit, "sigmoid", "obsnet observer"), hw).clamp_(0.0, 1.0)
            lg_name = _pick_main(seg_out, self.seg_output, "obsnet segmenter", prefer=("logits",))
            logits = resize_to(seg_out[lg_name].float(), hw)
            names = _class_names(self._names, logits.shape[1], "obsnet segmenter")
            self._names = names
            feats = {n: v for n, v in seg_out.items() if n != lg_name and v.ndim == 4} or None
            return TeacherOutput(prob, "anomaly", ["anomaly"], features=feats, logits=logits)


# =============================================================================== DaCUP


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
        if isinstance(src, torch.nn.Module):
            self.runner: Any = _TorchRunner(src, device=device, batch_size=1, output_names=output_names,
                                            what="DaCUP module")
        elif isinstance(src, (str, os.PathLike)):
            self.runner = _OnnxRunner(src, device=device, providers=providers, batch_size=1,
                                      expect="a DaCUP export: image (1,3,H,W) in [0,1] -> P(anomaly)")
        else:
            raise DTypeError(f"DaCUP weights must be an .onnx path or a torch module; got {type(src).__name__}")
        self.device = self.runner.device
        self.output_name, self.logits_name, self.activation = output_name, logits_name, activation

    @property
    def class_names(self) -> list[str]:
        return ["anomaly"]

    def __call__(self, images: Any) -> TeacherOutput:
        with torch.inference_mode():
            x, hw = self._prepare(images, self.device, self.runner.fixed_hw)
            outs = _run_image(self.runner, x)
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


# =============================================================================== ZegFormer


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
            bad = [n for n in unseen_classes if n not in self._names]
            idx = [i for i, n in enumerate(self._names) if n not in set(unseen_classes)]
        if bad:
            raise ValueRangeError(f"seen/unseen class names {bad} are not in class_names")
        self.seen_index = torch.tensor(idx, dtype=torch.long)
        g = float(gzero_calibrate)
        if not math.isfinite(g) or g < 0:
            raise ValueRangeError(f"gzero_calibrate must be finite and >= 0; got {gzero_calibrate}")
        self.gzero_calibrate = g
        src = w["model"]
        if isinstance(src, torch.nn.Module):
            self.runner: Any = _TorchRunner(src, device=device, output_names=output_names or ["pred_logits", "pred_masks"],
                                            what="ZegFormer module")
        elif isinstance(src, (str, os.PathLike)):
            self.runner = _OnnxRunner(src, device=device, providers=providers,
                                      expect="a ZegFormer export: image -> pred_logits + pred_masks, or class maps")
        else:
            raise DTypeError(f"ZegFormer weights must be an .onnx path or a torch module; got {type(src).__name__}")
        self.device = self.runner.device

    @property
    def class_names(self) -> list[str]:
        return list(self._names)

    @property
    def semantic_class_names(self) -> list[str]:
        return list(self._names)

    def __call__(self, images: Any) -> TeacherOutput:
        with torch.inference_mode():
            x, hw = self._prepare(images, self.device, self.runner.fixed_hw)
            outs = _run_image(self.runner, x)
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


# =============================================================================== DAFormer


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
        with torch.inference_mode():
            out = self.base(images)
            if self.output == "softmax":
                return TeacherOutput(torch.softmax(out.scores, dim=1), "semantic", out.class_names,
                                     features=out.features)
            return out


# =============================================================================== registry


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


def _score_factory(score: str):
    def factory(weights: Any = None, device: Any = None, **kw: Any) -> ScoreTeacher:
        return ScoreTeacher(score, weights=weights, device=device, **kw)

    factory.__name__ = f"{score}_teacher"
    factory.__doc__ = f"``get_teacher({score!r})``: :class:`ScoreTeacher` with score={score!r}."
    return factory


for _s in _SCORES:
    register_teacher(_s)(_score_factory(_s))
register_teacher("sml")(SMLTeacher)
register_teacher("obsnet")(ObsNetTeacher)
register_teacher("dacup")(DaCUPTeacher)
register_teacher("zegformer")(ZegFormerTeacher)
register_teacher("daformer")(DAFormerTeacher)
