"""What the teachers share: one model backend interface (ONNX or torch, chosen by :func:`make_runner`),
input preprocessing, output checks and the resolution of ``weights=`` (explicit or bundled)."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posthoc.errors import DTypeError, ShapeError, ValueRangeError
from posthoc.validation import check_finite, shape_str

from .._image import (
    check_mean_std,
    normalize,
    parse_size,
    resize,
    to_float_batch,
)
from ..checkpoints import load_state_dict

log = logging.getLogger(__name__)


CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
#: mmsegmentation / detectron2 normalization for 0..255 RGB input (DAFormer, ZegFormer configs).
MMSEG_MEAN = (123.675, 116.28, 103.53)
MMSEG_STD = (58.395, 57.12, 57.375)


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
        return dict(zip(names, tens, strict=False))
    raise DTypeError(f"{what} must return a tensor, a dict or a tuple of tensors; got {type(out).__name__}")


class _OnnxRunner:
    """One onnxruntime session plus its input/output bookkeeping (fixed sizes, batch loop)."""

    def __init__(self, path: Any, *, device=None, providers=None, input_name: str | None = None,
                 batch_size: int | None = None, expect: str = "an ONNX model") -> None:
        from ..onnx_runtime import input_specs, make_session, output_specs, session_device

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

    def run_image(self, x: torch.Tensor) -> dict:
        """The backend interface: run on a prepared image batch, return the outputs by name."""
        return self.run({self.image.name: x})

    def run(self, feeds: dict[str, torch.Tensor], output_names: Sequence[str] | None = None) -> dict:
        """Run on batched feeds (axis 0 = batch), looping in chunks when the batch is fixed."""
        from ..onnx_runtime import run_session

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

    def run_image(self, x: torch.Tensor) -> dict:
        """The backend interface: run on a prepared image batch, return the outputs by name."""
        return self.run(x)[1]

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


def make_runner(src: Any, name: str, *, device: Any = None, providers: Sequence[Any] | None = None,
                batch_size: int | None = None, output_names: Sequence[str] | None = None,
                expect: str = "an ONNX model") -> _OnnxRunner | _TorchRunner:
    """The model backend for ``src``: a torch module runs on :class:`_TorchRunner`, an ``.onnx``
    path on :class:`_OnnxRunner`; both answer ``run_image(x) -> {output name: tensor}``, so a
    teacher never branches on the kind of model it was given.

    Raises:
        DTypeError: ``src`` is neither (the message names the teacher, ``name``).
    """
    if isinstance(src, torch.nn.Module):
        return _TorchRunner(src, device=device, batch_size=batch_size, output_names=output_names,
                            what=f"{name} module")
    if isinstance(src, (str, os.PathLike)):
        return _OnnxRunner(src, device=device, providers=providers, batch_size=batch_size, expect=expect)
    raise DTypeError(f"{name} weights must be an .onnx path or a torch module; got {type(src).__name__}")


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


def _bundled(name: str) -> dict:
    """``{role: Path, "meta": dict}`` of the bundled default for ``name`` (NoBundledWeightsError if none)."""
    from .. import bundled

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


def _merge(meta: Mapping, user: Mapping) -> dict:
    """Settings: bundled/meta defaults, overridden by what the user passed explicitly (non-None)."""
    out = _meta_kwargs(meta)
    out.update({k: v for k, v in user.items() if v is not None})
    return out
