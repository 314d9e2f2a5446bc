"""Zero-shot region classification with CLIP (open_clip) and ZegFormer's seen/unseen ensemble.

:class:`ClipRegionClassifier` classifies every proposal of a :class:`posthoc.Proposals`
against text embeddings of the seen and unseen class names and paints the class
probabilities back onto the pixels, giving (B,C,H,W) per-pixel class probabilities.
:func:`zegformer_ensemble` fuses them with a zero-shot (ZS3) segmenter's probabilities.

How a region is classified follows ZegFormer's inference (Ding et al., "Decoupling
Zero-Shot Semantic Segmentation", CVPR 2022; official code dingjiansw101/ZegFormer,
``mask_former/mask_former_model.py``, ``clip_cls_style="cropmask"``):

1. the image is normalized with CLIP's mean/std, multiplied by the binary region mask
   (pixels outside the region become 0, i.e. the mean colour), and the region's bounding
   box is cropped and resized to CLIP's input size with ``roi_align(aligned=True)``;
2. ``f = normalize(encode_image(crop))``; text embeddings ``t_c`` are the normalized mean
   over prompt templates of ``normalize(encode_text(template.format(name)))`` (CLIP's
   prompt ensembling);
3. ``P(c | region) = softmax_c(logit_scale.exp() * f . t_c)``.

ZegFormer appends the mask head's "no object" logit before that softmax; post hoc we
have no such logit, so the softmax runs over the C class names only. Regions come from
``Proposals.labels`` (for soft sources: the connected components of the soft
assignment), so they are disjoint and every labelled pixel gets its region's
probabilities; unassigned pixels (-1) and regions smaller than ``min_area`` get the
uniform distribution 1/C.

open_clip is imported lazily; a missing install raises :class:`posthoc.MissingExtraError`
naming ``pip install 'posthoc[clip]'``. Weights are never downloaded: ``pretrained`` must
be a local file (state dict or safetensors), loaded without unpickling.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from posthoc.errors import DTypeError, MissingExtraError, ShapeError, ValueRangeError
from posthoc.types import Proposals
from posthoc.validation import as_torch, check_finite, check_labels, check_range, restore, shape_str

from ._image import check_mean_std, to_float_batch

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TEMPLATES",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "ClipRegionClassifier",
    "paint_regions",
    "seen_calibrate",
    "zegformer_ensemble",
]

#: CLIP's image statistics for [0,1] RGB input (open_clip's OPENAI_DATASET_MEAN/STD).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: A short prompt ensemble (a subset of the templates used by CLIP/ZegFormer for segmentation).
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "there is a {} in the scene.",
    "a photo of a {} in the scene.",
    "a cropped photo of a {}.",
)

_STYLES = ("cropmask", "crop", "mask")


def _require_open_clip():
    try:
        import open_clip
    except ImportError as e:
        raise MissingExtraError(
            "the CLIP region classifier needs open_clip, which is not installed; run "
            f"`pip install 'posthoc[clip]'`. Import error: {e}"
        ) from e
    return open_clip


def _require_roi_align():
    try:
        from torchvision.ops import roi_align
    except ImportError as e:
        raise MissingExtraError(
            f"the CLIP region classifier needs torchvision; run `pip install 'posthoc[clip]'`. Import error: {e}"
        ) from e
    return roi_align


def paint_regions(region_probs: Any, labels: Any) -> Any:
    """Paint per-region class probabilities onto the pixels.

    Args:
        region_probs: (B,N,C) float probabilities in [0,1] (rows sum to 1).
        labels: (B,H,W) integer region index per pixel, -1 = unassigned, values < N.

    Returns:
        (B,C,H,W) float32: ``region_probs[b, labels[b,p]]`` at every labelled pixel and
        the uniform distribution 1/C at pixels labelled -1. numpy in -> numpy out.
    """
    rp, was_np = as_torch(region_probs, "region_probs")
    lab, _ = as_torch(labels, "labels")
    if rp.ndim != 3:
        raise ShapeError(f"region_probs must be (B,N,C); got shape {shape_str(rp.shape)}")
    if lab.ndim != 3 or lab.shape[0] != rp.shape[0]:
        raise ShapeError(f"labels must be (B,H,W) with B={rp.shape[0]}; got {shape_str(lab.shape)}")
    n = check_labels(lab, "labels")
    B, N, C = rp.shape
    if n > N:
        raise ValueRangeError(f"labels must be < N={N} (the number of regions in region_probs); got max label {n - 1}")
    lab = lab.to(rp.device).long()
    table = torch.cat([rp.float(), torch.full((B, 1, C), 1.0 / max(C, 1), device=rp.device)], 1)  # slot N = uniform
    idx = torch.where(lab >= 0, lab, torch.full_like(lab, N)).reshape(B, -1)
    out = torch.gather(table, 1, idx.unsqueeze(-1).expand(-1, -1, C))  # (B,HW,C)
    out = out.permute(0, 2, 1).reshape(B, C, *lab.shape[1:]).contiguous()
    return restore(out, was_np)


class ClipRegionClassifier:
    """Classify proposals with CLIP against seen + unseen class names (ZegFormer's "cropmask").

    See the module docstring for the exact procedure.

    Args:
        model_name: open_clip architecture name (e.g. "ViT-B-16"), or any name registered with
            ``open_clip.add_model_config``.
        pretrained: None (random initialization: only useful for tests; a warning is logged) or a
            local checkpoint file (``.safetensors`` or a state dict for ``torch.load(weights_only=True)``).
            Pretrained *tags* are refused: posthoc never downloads.
        seen_classes: class names the ZS3 segmenter was trained on.
        unseen_classes: class names it was not trained on. Output channel order: seen then unseen.
        templates: prompt templates with one ``{}`` each.
        model: an already built CLIP-like module with ``encode_image``, ``encode_text`` and
            ``logit_scale`` (overrides model_name/pretrained); then pass ``tokenizer`` too.
        tokenizer: callable list[str] -> token tensor (default ``open_clip.get_tokenizer(model_name)``).
        mean, std: CLIP's image normalization (default OpenAI CLIP's, or the model's preprocess config).
        image_size: CLIP input size (default: the model's ``visual.image_size``, else 224).
        style: "cropmask" (masked and box-cropped, ZegFormer's default), "crop" (box crop, no
            masking) or "mask" (masked whole image).
        min_area: regions with fewer pixels get the uniform distribution.
        batch_size: crops encoded per forward pass.
        device: torch device (default CUDA if available, else CPU).
    """

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        pretrained: Any | None = None,
        seen_classes: Sequence[str] = (),
        unseen_classes: Sequence[str] = (),
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        *,
        model: Any = None,
        tokenizer: Callable | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        image_size: int | None = None,
        style: str = "cropmask",
        min_area: int = 1,
        batch_size: int = 32,
        device: Any = None,
    ) -> None:
        seen = [str(c) for c in seen_classes]
        unseen = [str(c) for c in unseen_classes]
        if not seen and not unseen:
            raise ValueRangeError("ClipRegionClassifier needs at least one class name (seen_classes/unseen_classes)")
        dup = sorted({c for c in seen + unseen if (seen + unseen).count(c) > 1})
        if dup:
            raise ValueRangeError(f"class names must be unique across seen and unseen; duplicated: {dup}")
        templates = [str(t) for t in templates]
        if not templates or any(t.count("{}") != 1 for t in templates):
            raise ValueRangeError(
                f"templates must be a non-empty list of strings with exactly one '{{}}'; got {templates}"
            )
        if style not in _STYLES:
            raise ValueRangeError(f"style must be one of {_STYLES}; got {style!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueRangeError(f"batch_size must be an integer >= 1; got {batch_size!r}")
        self.seen_classes, self.unseen_classes = seen, unseen
        self.class_names = seen + unseen
        self.templates = templates
        self.style, self.min_area, self.batch_size = style, int(min_area), batch_size
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        pp: dict = {}
        if model is None:
            open_clip = _require_open_clip()
            if pretrained is not None and not (isinstance(pretrained, (str, os.PathLike))
                                               and os.path.isfile(pretrained)):
                raise ValueRangeError(
                    f"pretrained must be None or a local checkpoint file; got {pretrained!r} (posthoc never "
                    "downloads weights: fetch them yourself, e.g. with open_clip, and pass the file path)")
            try:
                model = open_clip.create_model(model_name, pretrained=None)
            except RuntimeError as e:
                raise ValueRangeError(f"unknown open_clip model {model_name!r}: {e}") from e
            if pretrained is None:
                log.warning("ClipRegionClassifier(%r) has random weights (pretrained=None); its predictions are "
                            "meaningless until you pass a checkpoint", model_name)
            else:
                from .checkpoints import load_state_dict

                sd = load_state_dict(pretrained)
                sd = {k.removeprefix("module."): v for k, v in sd.items()}
                try:
                    model.load_state_dict(sd)
                except RuntimeError as e:
                    raise ValueRangeError(
                        f"{str(pretrained)!r} does not match open_clip {model_name!r}: {str(e).splitlines()[0]}") from e
            tokenizer = tokenizer or open_clip.get_tokenizer(model_name)
            pp = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        else:
            for attr in ("encode_image", "encode_text"):
                if not callable(getattr(model, attr, None)):
                    raise DTypeError(f"model must have a callable {attr}(); got {type(model).__name__}")
            if tokenizer is None:
                raise ValueRangeError("pass tokenizer= together with model=")
        if not callable(tokenizer):
            raise DTypeError(f"tokenizer must be callable; got {type(tokenizer).__name__}")
        self.model: Any = model.to(self.device).eval() if isinstance(model, torch.nn.Module) else model
        self.tokenizer = tokenizer
        self.mean, self.std = check_mean_std(mean if mean is not None else pp.get("mean", OPENAI_CLIP_MEAN),
                                             std if std is not None else pp.get("std", OPENAI_CLIP_STD))
        if image_size is None:
            vis = getattr(model, "visual", None)
            image_size = getattr(vis, "image_size", None) or pp.get("size") or 224
        if isinstance(image_size, (tuple, list)):
            image_size = int(image_size[0])
        self.image_size = int(image_size)
        self._text: torch.Tensor | None = None

    # ------------------------------------------------------------------ text side
    @torch.no_grad()
    def text_features(self) -> torch.Tensor:
        """(C,D) float32 unit-norm text embeddings (mean over templates, renormalized); cached."""
        if self._text is None:
            feats = []
            for name in self.class_names:
                tok = self.tokenizer([t.format(name) for t in self.templates])
                tok = tok.to(self.device) if isinstance(tok, torch.Tensor) else tok
                e = F.normalize(self.model.encode_text(tok).float(), dim=-1)
                feats.append(F.normalize(e.mean(0), dim=-1))
            self._text = torch.stack(feats)
        return self._text

    def _logit_scale(self) -> float:
        ls = getattr(self.model, "logit_scale", None)
        if ls is None:
            return 100.0
        return float(torch.as_tensor(ls).float().exp())

    # ------------------------------------------------------------------ image side
    def _crops(self, x: torch.Tensor, lab: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x (3,H,W) normalized image, lab (H,W) labels, ids (n,) region ids -> (n,3,S,S) crops."""
        roi_align = _require_roi_align()
        H, W = lab.shape
        masks = lab.unsqueeze(0) == ids.view(-1, 1, 1)  # (n,H,W)
        if self.style == "crop":
            src = x.unsqueeze(0).expand(len(ids), -1, -1, -1)
        else:
            src = x.unsqueeze(0) * masks.unsqueeze(1).to(x.dtype)  # outside the region -> 0 (the mean colour)
        if self.style == "mask":
            return F.interpolate(src, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        rows = masks.any(2)  # (n,H)
        cols = masks.any(1)  # (n,W)
        ar_h = torch.arange(H, device=x.device)
        ar_w = torch.arange(W, device=x.device)
        y0 = torch.where(rows, ar_h, H).min(1).values
        y1 = torch.where(rows, ar_h, -1).max(1).values + 1
        x0 = torch.where(cols, ar_w, W).min(1).values
        x1 = torch.where(cols, ar_w, -1).max(1).values + 1
        boxes = torch.stack([torch.arange(len(ids), device=x.device), x0, y0, x1, y1], 1).to(x.dtype)
        return roi_align(src.contiguous(), boxes, output_size=self.image_size, spatial_scale=1.0, sampling_ratio=-1,
                         aligned=True)

    @torch.no_grad()
    def region_probs(self, images: Any, proposals: Proposals | Any) -> torch.Tensor:
        """Class probabilities of every region.

        Args:
            images: (B,H,W,3) uint8 or (B,3,H,W) float in [0,1].
            proposals: :class:`posthoc.Proposals` (or a (B,H,W) label map, -1 = unassigned) at the
                image resolution.

        Returns:
            (B,N,C) float32 probabilities (rows sum to 1), N = max label + 1 over the batch; regions
            that are empty in an image or smaller than ``min_area`` get 1/C.
        """
        x = to_float_batch(images, "images", device=self.device)
        lab = proposals.labels if isinstance(proposals, Proposals) else proposals
        lab, _ = as_torch(lab, "proposals.labels")
        if lab.ndim != 3 or lab.shape[0] != x.shape[0] or tuple(lab.shape[-2:]) != tuple(x.shape[-2:]):
            raise ShapeError(f"proposal labels must be (B,H,W) matching the images "
                             f"{shape_str((x.shape[0], *x.shape[-2:]))}; got {shape_str(lab.shape)}")
        N = check_labels(lab, "proposals.labels")
        lab = lab.to(self.device).long()
        B, C = x.shape[0], len(self.class_names)
        out = torch.full((B, N, C), 1.0 / C, dtype=torch.float32, device=self.device)
        if N == 0 or B == 0:
            return out
        text = self.text_features()
        scale = self._logit_scale()
        m = torch.tensor(self.mean, device=self.device).view(3, 1, 1)
        s = torch.tensor(self.std, device=self.device).view(3, 1, 1)
        for b in range(B):
            counts = torch.bincount(lab[b][lab[b] >= 0].reshape(-1), minlength=N)
            ids = torch.nonzero(counts >= max(self.min_area, 1)).squeeze(1)
            xn = (x[b] - m) / s
            for i0 in range(0, len(ids), self.batch_size):
                chunk = ids[i0:i0 + self.batch_size]
                crops = self._crops(xn, lab[b], chunk)
                f = F.normalize(self.model.encode_image(crops).float(), dim=-1)
                out[b, chunk] = torch.softmax(scale * f @ text.T, dim=-1)
        return out

    @torch.no_grad()
    def __call__(self, images: Any, proposals: Proposals | Any) -> torch.Tensor:
        """Per-pixel class probabilities (B,C,H,W) float32 in [0,1], channels = seen + unseen names.

        Pixels of a region carry the region's probabilities; unassigned pixels carry 1/C.
        """
        lab = proposals.labels if isinstance(proposals, Proposals) else proposals
        return paint_regions(self.region_probs(images, proposals), as_torch(lab, "labels")[0].to(self.device))

    @property
    def seen_mask(self) -> torch.Tensor:
        """(C,) bool, True for the seen classes (channel order: seen then unseen)."""
        return torch.tensor([True] * len(self.seen_classes) + [False] * len(self.unseen_classes))


def _seen_tensor(seen: Any, C: int, device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(seen) if not isinstance(seen, torch.Tensor) else seen, device=device)
    if t.dtype == torch.bool:
        if t.ndim != 1 or t.numel() != C:
            raise ShapeError(
                f"seen must be a (C,)=({C},) bool mask or a list of class indices; got shape {shape_str(t.shape)}"
            )
        return t
    if t.is_floating_point():
        raise DTypeError(f"seen must be a bool mask or integer class indices; got dtype {t.dtype}")
    t = t.reshape(-1).long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= C):
        raise ValueRangeError(f"seen class indices must lie in [0,{C}); got values in [{int(t.min())},{int(t.max())}]")
    mask = torch.zeros(C, dtype=torch.bool, device=device)
    mask[t] = True
    return mask


def zegformer_ensemble(
    seg_probs: Any,
    clip_probs: Any,
    seen: Any,
    *,
    lambda_balance: float = 2.0 / 3.0,
    average_seen_clip: bool = True,
    dim: int = 1,
) -> Any:
    """ZegFormer's ensemble of a ZS3 segmenter's probabilities with CLIP's (official code).

    Following ``mask_former/mask_former_model.py`` (``ensembling=True``), per class c:

    * the CLIP probabilities of the *seen* classes are first replaced by their mean over
      the seen classes ("remove the influence of clip on seen classes"; ``average_seen_clip``);
    * seen c:   ``out_c = p_c ** lambda * q_c ** (1 - lambda)``
    * unseen c: ``out_c = p_c ** (1 - lambda) * q_c ** lambda``

    with p the segmenter's and q CLIP's probabilities and lambda = 2/3 (the official
    value). ZegFormer applies this per mask query (N,C) and then sums over masks; it works
    the same on per-pixel maps (B,C,H,W) (``dim=1``) or per-region tables (B,N,C) (``dim=-1``).
    The result is not renormalized (as in the official code); take argmax over ``dim``.

    Args:
        seg_probs: segmenter probabilities in [0,1], any shape with the class axis at ``dim``.
        clip_probs: CLIP probabilities in [0,1], same shape.
        seen: (C,) bool mask of the seen classes, or a list of seen class indices.
        lambda_balance: lambda in [0,1].
        average_seen_clip: replace CLIP's seen-class probabilities by their mean (official).
        dim: the class axis.

    Returns:
        Ensembled scores, same shape/kind as ``seg_probs``, float32, values in [0,1].
    """
    p, was_np = as_torch(seg_probs, "seg_probs")
    q, _ = as_torch(clip_probs, "clip_probs")
    if p.shape != q.shape:
        raise ShapeError(f"clip_probs must have the shape of seg_probs {shape_str(p.shape)}; got {shape_str(q.shape)}")
    if p.ndim == 0:
        raise ShapeError("seg_probs must have a class axis")
    if not (0.0 <= float(lambda_balance) <= 1.0):
        raise ValueRangeError(f"lambda_balance must lie in [0,1]; got {lambda_balance!r}")
    check_range(p, "seg_probs", 0.0, 1.0)
    check_range(q, "clip_probs", 0.0, 1.0)
    p = p.float()
    q = q.float().to(p.device)
    d = dim % p.ndim
    C = p.shape[d]
    seen_m = _seen_tensor(seen, C, p.device)
    shape = [1] * p.ndim
    shape[d] = C
    sm = seen_m.view(shape)
    if average_seen_clip and bool(seen_m.any()):
        mean_seen = (q * sm).sum(d, keepdim=True) / int(seen_m.sum())
        q = torch.where(sm, mean_seen, q)
    lam = float(lambda_balance)
    seen_out = p.pow(lam) * q.pow(1.0 - lam)
    unseen_out = p.pow(1.0 - lam) * q.pow(lam)
    return restore(torch.where(sm, seen_out, unseen_out), was_np)


def seen_calibrate(scores: Any, seen: Any, value: float, *, dim: int = 1) -> Any:
    """ZegFormer's generalized zero-shot calibration: subtract ``value`` from the seen classes.

    (``gzero_calibrate`` in the official code, applied to the final per-pixel scores.)

    Args:
        scores: per-class scores, class axis at ``dim`` (e.g. (B,C,H,W)).
        seen: (C,) bool mask or seen class indices.
        value: the amount subtracted (>= 0; 0 is a no-op).

    Returns:
        A new tensor/array, same shape and kind.
    """
    s, was_np = as_torch(scores, "scores")
    check_finite(s, "scores")
    if not np.isfinite(value) or value < 0:
        raise ValueRangeError(f"value must be a finite number >= 0; got {value!r}")
    d = dim % s.ndim
    seen_m = _seen_tensor(seen, s.shape[d], s.device)
    shape = [1] * s.ndim
    shape[d] = s.shape[d]
    out = s.float() - float(value) * seen_m.view(shape).float()
    return restore(out, was_np)
