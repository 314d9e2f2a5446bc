"""Proposal sources: class-agnostic regions for the structure-constrained ops.

Every source is a :class:`posthoc.adapters.ProposalSource`: called on a batch of RGB
images ((B,H,W,3) uint8 or (B,3,H,W) float in [0,1]) and, optionally, the teacher's
:class:`posthoc.TeacherOutput`, it returns a :class:`posthoc.Proposals` whose
``labels`` are at the image resolution. Registered names (``get_proposals(name, **kw)``):

============== ====================================================================
``sam``        segment-anything's automatic mask generator; soft scores from the
               mask logits, validity = predicted IoU x stability score
``mask_transformer`` Mask2Former / Mask2Anomaly / CA-M2F outputs (mask + class logits);
               validity = 1 - P(no object)
``superpixels`` SLIC, SEEDS or LSC (OpenCV-contrib ximgproc) or Felzenszwalb (scikit-image); no weights
``meanshift``  mean-shift of per-pixel embeddings as lines on the projective sphere, multi-scale (Dille et al.)
``onnx``       any ONNX model with outputs "region_scores" (B,N,h,w) and "validity" (B,N)
``csl``        ``onnx`` with the bundled CSL region-proposal net as default weights
============== ====================================================================

Soft sources (sam, mask_transformer, onnx, csl) fill ``region_scores`` (B,N,h,w) in [0,1]
and ``validity`` (B,N) in [0,1], and set ``labels = posthoc.assign_labels(R, V,
size=(H,W))`` (CSL scheme 2, Eq. 2 and mask split): every pixel gets a region. Hard
sources (superpixels, meanshift) give labels only. Every built-in source returns
``labels_final=True``: :class:`posthoc.Pipeline` uses these labels as they are.

Heavy optional packages (segment_anything, onnxruntime) are imported inside the
functions that need them; a missing one raises :class:`posthoc.MissingExtraError`
naming the extra to install.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from posthoc.errors import DTypeError, ShapeError, ValueRangeError
from posthoc.types import Proposals, TeacherOutput
from posthoc.validation import check_finite, shape_str

from ._image import IMAGENET_MEAN, IMAGENET_STD, check_mean_std, normalize, parse_size, resize
from ._proposal_common import (
    _images,
    _weights_entry,
    proposals_from_soft,
)
from .base import ProposalSource
from .checkpoints import UnsafeCheckpointError, load_state_dict  # one safe loader for every adapter
from .proposals_sam import SamProposals
from .proposals_superpixels import SuperpixelProposals
from .registry import register_proposals

log = logging.getLogger(__name__)

__all__ = [
    "MaskTransformerProposals",
    "MeanShiftProposals",
    "OnnxProposals",
    "SamProposals",
    "SuperpixelProposals",
    "UnsafeCheckpointError",
    "csl_proposals",
    "load_state_dict",
    "proposals_from_mask_transformer",
    "proposals_from_soft",
]

# ----------------------------------------------------------------------------- mask transformer


def proposals_from_mask_transformer(
    mask_logits: Any,
    class_logits: Any,
    size: Sequence[int] | None = None,
    *,
    min_size: int = 0,
    meta: dict | None = None,
) -> Proposals:
    """Proposals from Mask2Former-style outputs (Mask2Former / Mask2Anomaly / CA-M2F).

    * region scores R = sigmoid(mask logits) (the masks' per-pixel probability, as in
      Mask2Former's ``semantic_inference``);
    * validity V = 1 - softmax(class logits)[..., -1] = 1 - P(no object);
    * labels = split_components(soft_assign(R, V, size)) (CSL scheme 2).

    Args:
        mask_logits: (B,N,h,w) float mask logits, any range ("pred_masks").
        class_logits: (B,N,K+1) float class logits, any range, last = no object ("pred_logits").
        size: (H, W) of the labels; default (h, w).
        min_size: components smaller than this become -1 (default 0).
        meta: stored in ``Proposals.meta``.

    Returns:
        Proposals with region_scores, validity, class_logits and mask_logits filled (float32, CPU
        or the input's device).
    """
    from posthoc.validation import as_torch

    m, _ = as_torch(mask_logits, "mask_logits")
    c, _ = as_torch(class_logits, "class_logits")
    if m.ndim != 4:
        raise ShapeError(f"mask_logits must be (B,N,h,w); got shape {shape_str(m.shape)}")
    if c.ndim != 3 or c.shape[:2] != m.shape[:2] or c.shape[2] < 2:
        raise ShapeError(
            f"class_logits must be (B,N,K+1) with (B,N)={shape_str(m.shape[:2])} and K >= 1; got {shape_str(c.shape)}")
    for t, n in ((m, "mask_logits"), (c, "class_logits")):
        if not t.is_floating_point():
            raise DTypeError(f"{n} must be floating point; got {t.dtype}")
        check_finite(t, n)
    m = m.float()
    c = c.float().to(m.device)
    R = torch.sigmoid(m)
    V = (1.0 - torch.softmax(c, dim=-1)[..., -1]).clamp_(0.0, 1.0)
    size = tuple(m.shape[-2:]) if size is None else tuple(int(s) for s in size)
    meta = {"source": "mask_transformer", **(meta or {})}
    return proposals_from_soft(R, V, size, min_size=min_size, meta=meta, class_logits=c, mask_logits=m)


@register_proposals("mask_transformer")
class MaskTransformerProposals(ProposalSource):
    """Wrap a Mask2Former-style model (Mask2Former, Mask2Anomaly, CA-M2F) as a proposal source.

    The model is one of:

    * a callable (torch module or function) taking the normalized image batch (B,3,h,w)
      float32 and returning ``(mask_logits (B,N,h',w'), class_logits (B,N,K+1))`` or a dict
      with those under ``mask_key`` / ``class_key`` (Mask2Former's "pred_masks" / "pred_logits");
    * a path to an ONNX export (or ``weights=`` path / ``{"model": path, "meta": {...}}``)
      with an "image" input and outputs named ``mask_key`` / ``class_key``;
    * nothing: then call :meth:`from_outputs` with precomputed outputs.

    See :func:`proposals_from_mask_transformer` for how region scores and validity are derived.

    Args:
        model: callable, ONNX path, or None.
        weights: ONNX path or dict (alternative to ``model``).
        mean, std, channel_order: input normalization (default ImageNet on [0,1] RGB, which
            equals detectron2's 0..255 pixel mean/std).
        input_size: (h, w) the model runs at (None = the image size); outputs are resized back.
        mask_key, class_key: output names.
        min_size: components smaller than this become -1.
        device: torch device for a torch model / ONNX session.
    """

    uses_teacher_output = False  # image-only: the benchmark may share them between teachers
    gives_masks = True

    def __init__(self, model: Any = None, *, weights: Any = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, channel_order: str = "RGB", input_size: Any = None,
                 mask_key: str = "pred_masks", class_key: str = "pred_logits", min_size: int = 0,
                 device: Any = None) -> None:
        if model is not None and weights is not None:
            raise ValueRangeError("pass either model= or weights=, not both")
        path, meta = _weights_entry(weights, "model", "mask_transformer")
        if isinstance(model, (str, os.PathLike)):
            path, model = model, None
        self.mean, self.std = check_mean_std(meta.get("mean", mean), meta.get("std", std))
        self.channel_order = meta.get("channel_order", channel_order)
        self.input_size = parse_size(meta.get("input_size", input_size))
        self.mask_key, self.class_key = mask_key, class_key
        self.min_size = int(min_size)
        self.session = None
        self.device = torch.device(device) if device is not None else None
        if path is not None:
            from .onnx_runtime import make_session, output_specs

            self.session = make_session(path, device=device, expect="a mask-transformer model (image -> "
                                        f"{mask_key!r} (B,N,h,w), {class_key!r} (B,N,K+1))")
            outs = [s.name for s in output_specs(self.session)]
            for k in (mask_key, class_key):
                if k not in outs:
                    raise ValueRangeError(f"ONNX model {str(path)!r} has no output {k!r}; its outputs are {outs}")
        elif model is not None and not callable(model):
            raise DTypeError(f"model must be a callable, an ONNX path or None; got {type(model).__name__}")
        self.model = model

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.session is not None:
            from .onnx_runtime import input_specs, run_session

            name = input_specs(self.session)[0].name
            out = run_session(self.session, {name: x}, [self.mask_key, self.class_key])
            return out[self.mask_key], out[self.class_key]
        if isinstance(self.model, torch.nn.Module) and self.device is not None:
            self.model.to(self.device)
            x = x.to(self.device)
        out = self.model(x)
        if isinstance(out, Mapping):
            if self.mask_key not in out or self.class_key not in out:
                raise ValueRangeError(
                    f"model output dict must hold {self.mask_key!r} and {self.class_key!r}; got keys {sorted(out)}")
            return out[self.mask_key], out[self.class_key]
        if isinstance(out, (tuple, list)) and len(out) == 2:
            return out[0], out[1]
        raise DTypeError(
            "model must return (mask_logits, class_logits) or a dict with "
            f"{self.mask_key!r}/{self.class_key!r}; got {type(out).__name__}")

    def from_outputs(self, mask_logits: Any, class_logits: Any, size: Sequence[int] | None = None) -> Proposals:
        """Proposals from precomputed outputs (no model run); see :func:`proposals_from_mask_transformer`."""
        return proposals_from_mask_transformer(mask_logits, class_logits, size, min_size=self.min_size)

    @torch.no_grad()
    def __call__(self, images: Any, teacher_output: TeacherOutput | None = None) -> Proposals:
        if self.model is None and self.session is None:
            raise ValueRangeError(
                "this mask_transformer source has no model; pass model=/weights= or call from_outputs(...)")
        x = _images(images)
        H, W = x.shape[-2:]
        xin = normalize(resize(x, self.input_size), self.mean, self.std, self.channel_order)
        m, c = self._run(xin)
        return proposals_from_mask_transformer(m, c, (H, W), min_size=self.min_size)


# ----------------------------------------------------------------------------- mean-shift


@register_proposals("meanshift")
class MeanShiftProposals(ProposalSource):
    """Mean-shift on the projective sphere over per-pixel embeddings (Dille et al.; docs/architecture.md).

    The embeddings come from (first match wins):

    1. ``features=`` passed to the call: a (B,F,h,w) tensor, or a list of them from coarse to
       fine (the network already run at several resolutions);
    2. ``embedder``: a callable taking the (B,3,H,W) float [0,1] image batch and returning
       (B,F,h,w) embeddings (e.g. the bottom-up paper's network). It is run once per entry of
       ``scales``, on the image resized (bilinear, antialiased when shrinking) by that factor;
    3. ``teacher_output.features[feature_key]`` (``feature_key=None`` takes the only entry).

    One resolution is clustered by :func:`posthoc.meanshift.meanshift_sphere`; several (a list of
    ``features=``, or ``scales=`` with two or more entries) by :func:`posthoc.meanshift_multires`,
    the paper's §4.1 refinement: every resolution is clustered and the segments are merged from
    the smallest resolution up. The cluster map is upsampled to the image size (nearest) and, with
    ``split=True`` (default), every cluster is split into its 8-connected components so that two
    objects sharing one mode become two regions.

    Args:
        feature_key: which entry of ``TeacherOutput.features`` to cluster.
        embedder: optional callable producing embeddings from images.
        scales: input scales the embedder is run at, e.g. ``(0.5, 1.0)``; sorted ascending
            (coarse to fine). Default ``(1.0,)``: one run at the image size.
        bandwidth, angle_deg, projective, n_seeds, n_samples, max_iter, tol, levels, chunk_size, seed:
            see :func:`posthoc.meanshift.meanshift_sphere` (``levels > 1``, the pooled-pyramid warm
            start, cannot be combined with several resolutions).
        iou_threshold, contain_threshold, merge_min_size: the §4.1 merge, see
            :func:`posthoc.multires.merge_levels` (``merge_min_size`` is its ``min_size``; with
            ``split=True`` it merges 8-connected components, ``connectivity=8``).
        split: split clusters into connected components.
        min_size: with ``split``, components smaller than this become -1.
    """

    def __init__(self, feature_key: str | None = None, *, embedder: Callable | None = None,
                 bandwidth: float | None = None, angle_deg: float = 45.0, projective: bool = True,
                 scales: Sequence[float] = (1.0,), iou_threshold: float = 0.8, contain_threshold: float = 0.9,
                 merge_min_size: int = 0, n_seeds: int = 256, n_samples: int = 20000, max_iter: int = 300,
                 tol: float = 1e-3, levels: int = 1, chunk_size: int = 2048, seed: int = 0, split: bool = True,
                 min_size: int = 0, weights: Any = None) -> None:
        from posthoc.meanshift import MeanShiftSphere
        from posthoc.multires import _check_merge_settings

        if weights is not None:
            raise ValueRangeError("the meanshift source takes no weights; pass embedder= or features")
        if embedder is not None and not callable(embedder):
            raise DTypeError(f"embedder must be callable; got {type(embedder).__name__}")
        self.feature_key = feature_key
        self.embedder = embedder
        self.clusterer = MeanShiftSphere(bandwidth, angle_deg=angle_deg, projective=projective, n_seeds=n_seeds,
                                         n_samples=n_samples, max_iter=max_iter, tol=tol, levels=levels,
                                         chunk_size=chunk_size, seed=seed)
        self.scales = self._check_scales(scales)
        if len(self.scales) > 1 and levels > 1:
            raise ValueRangeError(
                f"levels={levels} (one feature map, pooled) and scales={self.scales} (the network at several "
                "resolutions, Dille et al. §4.1) are two multi-resolution methods; use one of them")
        _check_merge_settings(iou_threshold, contain_threshold, merge_min_size)
        # with split=True the regions are connected components, so the merge matches components too
        self.merge_kw: dict[str, Any] = {"iou_threshold": iou_threshold, "contain_threshold": contain_threshold,
                         "min_size": merge_min_size, "connectivity": 8 if split else None}
        self.split, self.min_size = bool(split), int(min_size)

    @staticmethod
    def _check_scales(scales: Any) -> tuple[float, ...]:
        ok = isinstance(scales, Sequence) and not isinstance(scales, str) and len(scales) > 0
        vals = tuple(scales) if ok else ()
        if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > 0
                             for v in vals) or len(set(vals)) != len(vals):
            raise ValueRangeError(
                f"scales must be a non-empty sequence of distinct positive numbers, e.g. (0.5, 1.0); got {scales!r}")
        return tuple(sorted(float(v) for v in vals))

    def _features(self, x: torch.Tensor, teacher_output: TeacherOutput | None, features: Any) -> list[torch.Tensor]:
        """The feature maps to cluster, coarse to fine: (B,F,h_i,w_i) each."""
        from posthoc.validation import as_torch

        H, W = x.shape[-2:]
        if len(self.scales) > 1 and (self.embedder is None or features is not None):
            raise ValueRangeError(
                f"scales={self.scales} runs the embedder at each scale, so it needs embedder= and no features=; "
                "to cluster maps you already have at several resolutions pass features=[coarse, ..., fine]")
        if features is not None:
            fs = list(features) if isinstance(features, (list, tuple)) else [features]
        elif self.embedder is not None:
            fs = []
            for s in self.scales:
                size = (max(1, round(H * s)), max(1, round(W * s)))
                xs = x if size == (H, W) else F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                                            antialias=s < 1)
                fs.append(self.embedder(xs))
        elif teacher_output is not None and teacher_output.features:
            feats = teacher_output.features
            if self.feature_key is None:
                if len(feats) != 1:
                    raise ValueRangeError(
                        f"teacher_output.features has {len(feats)} entries {sorted(feats)}; choose one with "
                        "feature_key=")
                fs = [next(iter(feats.values()))]
            elif self.feature_key not in feats:
                raise ValueRangeError(
                    f"teacher_output.features has no {self.feature_key!r}; it has {sorted(feats)}")
            else:
                fs = [feats[self.feature_key]]
        else:
            raise ValueRangeError(
                "the meanshift source needs per-pixel embeddings: pass features=(B,F,h,w) (or a list of them, "
                "coarse to fine), an embedder=, or a teacher_output whose .features holds them")
        out = []
        for i, f in enumerate(fs):
            f, _ = as_torch(f, "features")
            if f.ndim != 4 or f.shape[0] != x.shape[0]:
                where = f" (resolution {i} of {len(fs)})" if len(fs) > 1 else ""
                raise ShapeError(f"features must be (B,F,h,w) with B={x.shape[0]}; got {shape_str(f.shape)}{where}")
            out.append(f)
        return out

    @torch.no_grad()
    def __call__(self, images: Any, teacher_output: TeacherOutput | None = None, *,
                 features: Any = None) -> Proposals:
        x = _images(images)
        _B, _, H, W = x.shape
        fs = self._features(x, teacher_output, features)
        if len(fs) == 1:
            lab = self.clusterer(fs[0])
        else:
            from posthoc.multires import meanshift_multires

            kw = {k: v for k, v in self.clusterer.kw.items() if k != "levels"}
            lab = meanshift_multires(fs, **kw, **self.merge_kw)
        if tuple(lab.shape[-2:]) != (H, W):
            lab = F.interpolate(lab.unsqueeze(1).float(), size=(H, W), mode="nearest").squeeze(1).long()
        if self.split:
            from posthoc.components import split_components

            lab = split_components(lab, connectivity=8, min_size=self.min_size)
        meta = {"source": "meanshift", **self.clusterer.kw, "scales": self.scales, "resolutions": len(fs),
                **({"merge": self.merge_kw} if len(fs) > 1 else {}), "split": self.split}
        return Proposals(labels=lab, meta=meta, labels_final=True)


# ----------------------------------------------------------------------------- ONNX region proposals


@register_proposals("onnx")
class OnnxProposals(ProposalSource):
    """Any ONNX model that outputs soft region scores and validity (e.g. an exported CSL RPN).

    The model takes one float32 image input (B,3,h,w), normalized with ``mean``/``std`` in
    ``channel_order``, and returns ``scores_name`` (B,N,h',w') in [0,1] and
    ``validity_name`` (B,N) in [0,1] (pass ``scores_activation="sigmoid"`` /
    ``validity_activation="sigmoid"`` for logit outputs). The image is resized to
    ``input_size`` (or to the model's fixed input size when the graph declares one);
    labels = split_components(soft_assign(R, V, size=(H,W))) at the original image size.

    Args:
        path: ONNX file. Alias: ``weights`` = path or ``{"model": path, "meta": {...}}``;
            meta keys "mean", "std", "channel_order", "input_size" override the arguments.
        input_name: image input name (default: the model's only input).
        scores_name, validity_name: output names.
        scores_activation, validity_activation: None (already probabilities) or "sigmoid".
        mean, std, channel_order, input_size: preprocessing (defaults: ImageNet, RGB, image size).
        min_size: components smaller than this become -1.
        device: "cpu", "cuda" or None (CUDA when available); providers: explicit ORT providers.
    """

    uses_teacher_output = False  # image-only: the benchmark may share them between teachers
    gives_masks = True

    source_name = "onnx"

    def __init__(self, path: Any = None, *, weights: Any = None, input_name: str | None = None,
                 scores_name: str = "region_scores", validity_name: str = "validity",
                 scores_activation: str | None = None, validity_activation: str | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 channel_order: str = "RGB", input_size: Any = None, min_size: int = 0, device: Any = None,
                 providers: Sequence[Any] | None = None) -> None:
        from .onnx_runtime import input_specs, make_session, output_specs

        if path is not None and weights is not None:
            raise ValueRangeError("pass the ONNX model as path= or weights=, not both")
        wpath, meta = _weights_entry(weights, "model", self.source_name)
        path = path if path is not None else wpath
        if path is None:
            raise ValueRangeError(
                f"the {self.source_name!r} proposal source needs an ONNX file: pass path= or weights="
            )
        for n, a in (("scores_activation", scores_activation), ("validity_activation", validity_activation)):
            if a not in (None, "sigmoid"):
                raise ValueRangeError(f"{n} must be None or 'sigmoid'; got {a!r}")
        self.path = Path(path)
        self.session = make_session(path, device=device, providers=providers,
                                    expect=f"a region-proposal model (image -> {scores_name!r} (B,N,h,w), "
                                           f"{validity_name!r} (B,N))")
        ins = input_specs(self.session)
        outs = [s.name for s in output_specs(self.session)]
        if input_name is None:
            if len(ins) != 1:
                raise ValueRangeError(
                    f"ONNX model {str(path)!r} has {len(ins)} inputs {[s.name for s in ins]}; "
                    "choose one with input_name=")
            input_name = ins[0].name
        spec = next((s for s in ins if s.name == input_name), None)
        if spec is None:
            raise ValueRangeError(
                f"ONNX model {str(path)!r} has no input {input_name!r}; inputs: {[s.name for s in ins]}"
            )
        if spec.rank != 4 or spec.shape[1] not in (None, 3):
            raise ShapeError(f"ONNX input must be an image (B,3,h,w); the model declares {spec.describe()}")
        for k in (scores_name, validity_name):
            if k not in outs:
                raise ValueRangeError(f"ONNX model {str(path)!r} has no output {k!r}; its outputs are {outs}")
        self.input_name, self.scores_name, self.validity_name = input_name, scores_name, validity_name
        self.scores_activation, self.validity_activation = scores_activation, validity_activation
        self.mean, self.std = check_mean_std(meta.get("mean", mean), meta.get("std", std))
        self.channel_order = meta.get("channel_order", channel_order)
        size = parse_size(meta.get("input_size", input_size))
        fixed = spec.shape[2:]
        if all(d is not None for d in fixed):
            if size is not None and tuple(size) != tuple(fixed):
                log.warning("input_size %s differs from the model's fixed input size %s; using the latter", size, fixed)
            size = (int(fixed[0]), int(fixed[1]))
        self.input_size = size
        self.fixed_batch = spec.shape[0]  # None (dynamic) or the batch size the graph was exported with
        self.min_size = int(min_size)

    def _run(self, xin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from .onnx_runtime import run_session

        names = [self.scores_name, self.validity_name]
        step = self.fixed_batch or max(xin.shape[0], 1)
        if xin.shape[0] == step:
            out = run_session(self.session, {self.input_name: xin}, names)
            return out[names[0]], out[names[1]]
        if xin.shape[0] % step:
            raise ShapeError(f"the ONNX model takes batches of exactly {step} images; got a batch of {xin.shape[0]}")
        parts = [run_session(self.session, {self.input_name: xin[i:i + step]}, names)
                 for i in range(0, xin.shape[0], step)]  # a graph exported with a fixed batch: run it in a loop
        return torch.cat([p[names[0]] for p in parts]), torch.cat([p[names[1]] for p in parts])

    @torch.no_grad()
    def __call__(self, images: Any, teacher_output: TeacherOutput | None = None) -> Proposals:
        x = _images(images)
        B, _, H, W = x.shape
        xin = normalize(resize(x, self.input_size), self.mean, self.std, self.channel_order)
        R, V = self._run(xin)
        R, V = R.float(), V.float()
        if self.scores_activation == "sigmoid":
            R = torch.sigmoid(R)
        if self.validity_activation == "sigmoid":
            V = torch.sigmoid(V)
        if R.ndim != 4 or R.shape[0] != B:
            raise ShapeError(f"ONNX output {self.scores_name!r} must be (B,N,h,w) with B={B}; got {shape_str(R.shape)}")
        meta = {"source": self.source_name, "path": str(self.path), "input_size": self.input_size}
        return proposals_from_soft(R, V, (H, W), min_size=self.min_size, meta=meta)


class CslProposals(OnnxProposals):
    """The ``onnx`` source with the bundled CSL region-proposal net as default weights."""

    source_name = "csl"


@register_proposals("csl")
def csl_proposals(weights: Any = None, **kw: Any) -> OnnxProposals:
    """``onnx`` proposals from the CSL region-proposal net.

    Args:
        weights: ONNX path or ``{"model": path, "meta": {...}}``; None -> the bundled net
            (``posthoc.adapters.bundled.default_weights("csl")``, trained on the synthetic world
            by scripts/train_*.py), which raises ``NoBundledWeightsError`` when absent.
        **kw: any :class:`OnnxProposals` setting.
    """
    if weights is None and kw.get("path") is None:
        from .bundled import default_weights

        weights = default_weights("csl")
    return CslProposals(weights=weights, **kw)
