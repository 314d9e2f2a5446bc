"""The ``sam`` proposal source: segment-anything's automatic masks as soft proposals."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from posthoc.errors import DTypeError, ValueRangeError
from posthoc.types import Proposals, TeacherOutput

from ._proposal_common import _images, _pad_stack, _require, _to_uint8_hwc, _weights_entry, proposals_from_soft
from .base import ProposalSource
from .checkpoints import load_state_dict  # one safe loader for every adapter
from .registry import register_proposals

log = logging.getLogger(__name__)

__all__ = ["SamProposals", "build_sam", "sam_point_predictor"]

# ----------------------------------------------------------------------------- SAM


def _sam_generator_class():
    """A SamAutomaticMaskGenerator that keeps each mask's soft logits.

    The official generator binarizes the mask logits inside ``_process_batch`` and keeps
    only RLEs. This subclass runs the same steps (point grid, predicted-IoU filter,
    stability score, box NMS) but also keeps SAM's *low-resolution* mask logits (the
    256x256 frame of the padded 1024 input) cropped to the un-padded image area, and
    skips the RLE encoding we do not need.
    """
    sa: Any = _require("segment_anything", "sam", "the 'sam' proposal source")
    amg = _require("segment_anything.utils.amg", "sam", "the 'sam' proposal source")

    class _SoftMaskGenerator(sa.SamAutomaticMaskGenerator):
        def _process_batch(self, points, im_size, crop_box, orig_size):
            pred = self.predictor
            tp = pred.transform.apply_coords(points, im_size)
            in_points = torch.as_tensor(tp, device=pred.device)
            in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
            masks, iou_preds, low_res = pred.predict_torch(
                in_points[:, None, :], in_labels[:, None], multimask_output=True, return_logits=True
            )
            # valid (un-padded) part of the low-res frame: input_size / 4 (the decoder upsamples 4x)
            ih, iw = pred.input_size
            scale = low_res.shape[-1] / pred.model.image_encoder.img_size
            lh, lw = max(1, round(ih * scale)), max(1, round(iw * scale))
            data = amg.MaskData(
                masks=masks.flatten(0, 1),
                iou_preds=iou_preds.flatten(0, 1),
                logits=low_res[..., :lh, :lw].flatten(0, 1),
                points=torch.as_tensor(points.repeat(masks.shape[1], axis=0)),
            )
            del masks
            if self.pred_iou_thresh > 0.0:
                data.filter(data["iou_preds"] > self.pred_iou_thresh)
            data["stability_score"] = amg.calculate_stability_score(
                data["masks"], pred.model.mask_threshold, self.stability_score_offset
            )
            if self.stability_score_thresh > 0.0:
                data.filter(data["stability_score"] >= self.stability_score_thresh)
            data["masks"] = data["masks"] > pred.model.mask_threshold
            data["boxes"] = amg.batched_mask_to_box(data["masks"])
            orig_h, orig_w = orig_size
            keep = ~amg.is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
            if not torch.all(keep):
                data.filter(keep)
            # the crop is the whole image (crop_n_layers=0), so there is nothing to uncrop;
            # the parent class only needs an "rles" list of the right length for bookkeeping
            data["rles"] = [None] * len(data["iou_preds"])
            del data["masks"]
            return data

    return _SoftMaskGenerator


@register_proposals("sam")
class SamProposals(ProposalSource):
    """Segment Anything automatic masks as soft proposals.

    Runs ``segment_anything.SamAutomaticMaskGenerator`` (Kirillov et al. 2023; official
    code facebookresearch/segment-anything) with its point grid, predicted-IoU and
    stability filters and box NMS, on one image at a time, and keeps for every kept mask:

    * region score R_n = sigmoid of SAM's low-resolution mask logits (256x256 frame of the
      padded 1024 input, cropped to the un-padded area, i.e. about input_size/4), so
      ``Proposals.region_scores`` is (B,N,h',w'); ``soft_assign`` upsamples it bilinearly;
    * validity V_n = clamp(predicted IoU, 0, 1) x stability score (both in [0,1]).

    Images with fewer masks than the batch maximum are padded with R = V = 0.

    Args:
        model_type: "vit_h", "vit_l" or "vit_b" (segment-anything's ``sam_model_registry``).
        checkpoint: path to the official ``sam_vit_*.pth`` (a plain state dict, loaded with
            ``torch.load(weights_only=True)``) or a ``.safetensors`` file. Alias: ``weights``.
        model: an already built ``segment_anything.modeling.Sam`` (overrides the two above).
        points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh,
        stability_score_offset, box_nms_thresh: the generator's settings (official defaults).
        min_size: components smaller than this become -1 after the mask split (default 0).
        device: torch device for SAM (default: CUDA if available, else CPU).
    """

    uses_teacher_output = False  # image-only: the benchmark may share them between teachers
    gives_masks = True

    def __init__(
        self,
        model_type: str = "vit_b",
        checkpoint: Any = None,
        *,
        weights: Any = None,
        model: Any = None,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        min_size: int = 0,
        device: Any = None,
    ) -> None:
        sa = _require("segment_anything", "sam", "the 'sam' proposal source")
        if checkpoint is not None and weights is not None:
            raise ValueRangeError("pass the SAM checkpoint as checkpoint= or weights=, not both")
        checkpoint = checkpoint if checkpoint is not None else _weights_entry(weights, "model", "sam")[0]
        for name, v in (("points_per_side", points_per_side), ("points_per_batch", points_per_batch)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueRangeError(f"{name} must be an integer >= 1; got {v!r}")
        for name, t in (("pred_iou_thresh", pred_iou_thresh), ("stability_score_thresh", stability_score_thresh)):
            if not (0.0 <= float(t) <= 1.0):
                raise ValueRangeError(f"{name} must lie in [0,1]; got {t!r}")
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        if model is None:
            if model_type not in sa.sam_model_registry:
                raise ValueRangeError(
                    f"model_type must be one of {sorted(sa.sam_model_registry)}; got {model_type!r}")
            if checkpoint is None:
                raise ValueRangeError(
                    "the 'sam' proposal source needs weights: pass checkpoint='sam_vit_b_01ec64.pth' (the official "
                    "SAM checkpoint for model_type) or model=<a segment_anything Sam module>; "
                    "no SAM weights are bundled"
                )
            model = sa.sam_model_registry[model_type](checkpoint=None)
            sd = load_state_dict(checkpoint)
            try:
                model.load_state_dict(sd)
            except RuntimeError as e:
                raise ValueRangeError(
                    f"{str(checkpoint)!r} does not match SAM {model_type!r}: {str(e).splitlines()[0]}") from e
        elif not isinstance(model, sa.modeling.Sam):
            raise DTypeError(f"model must be a segment_anything Sam module; got {type(model).__name__}")
        self.model = model.to(self.device).eval()
        self.model_type = model_type
        self.checkpoint = checkpoint
        self.min_size = int(min_size)
        self.settings = {"points_per_side": points_per_side, "points_per_batch": points_per_batch,
                             "pred_iou_thresh": float(pred_iou_thresh),
                             "stability_score_thresh": float(stability_score_thresh),
                             "stability_score_offset": float(stability_score_offset),
                             "box_nms_thresh": float(box_nms_thresh)}
        self.generator = _sam_generator_class()(self.model, output_mode="binary_mask", **self.settings)

    @torch.no_grad()
    def masks(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the generator on one (H,W,3) uint8 image.

        Returns:
            (logits (N,h',w') float32 low-res mask logits, validity (N,) float32 in [0,1]).
        """
        data = self.generator._generate_masks(image)
        n = len(data["iou_preds"])
        if n == 0:
            return torch.zeros(0, 1, 1), torch.zeros(0)
        logits = torch.as_tensor(np.asarray(data["logits"]), dtype=torch.float32)
        iou = torch.as_tensor(np.asarray(data["iou_preds"]), dtype=torch.float32).clamp(0.0, 1.0)
        stab = torch.as_tensor(np.asarray(data["stability_score"]), dtype=torch.float32).clamp(0.0, 1.0)
        return logits, iou * stab

    @torch.no_grad()
    def __call__(self, images: Any, teacher_output: TeacherOutput | None = None) -> Proposals:
        x = _images(images)
        B, _, H, W = x.shape
        u8 = _to_uint8_hwc(x)
        logits, vals = [], []
        for b in range(B):
            lg, v = self.masks(u8[b])
            logits.append(lg)
            vals.append(v)
        hw = next((tuple(lg.shape[-2:]) for lg in logits if lg.shape[0]), (1, 1))
        R = _pad_stack([torch.sigmoid(lg) for lg in logits], hw)
        V = _pad_stack(vals, ())
        meta = {"source": "sam", "model_type": self.model_type, **self.settings}
        return proposals_from_soft(R, V, (H, W), min_size=self.min_size, meta=meta)


def build_sam(checkpoint: Any, model_type: str = "vit_b", device: Any = None) -> Any:
    """A segment-anything ``Sam`` with the official weights at ``checkpoint`` (safe loading)."""
    sa = _require("segment_anything", "sam", "SAM point prompts (the 'ugains' variant)")
    if model_type not in sa.sam_model_registry:
        raise ValueRangeError(f"model_type must be one of {sorted(sa.sam_model_registry)}; got {model_type!r}")
    model = sa.sam_model_registry[model_type](checkpoint=None)
    try:
        model.load_state_dict(load_state_dict(checkpoint))
    except RuntimeError as e:
        raise ValueRangeError(f"{str(checkpoint)!r} does not match SAM {model_type!r}: {str(e).splitlines()[0]}") from e
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(dev).eval()


def sam_point_predictor(model: Any, images: Any, points_per_batch: int = 64):
    """The ``predict(i, points)`` callable :func:`posthoc.peers.ugains` needs, on a SAM model.

    ``segment_anything.SamPredictor`` embeds image ``i`` of ``images`` (once per image,
    on first use), then every (x, y) point (in the image's pixel frame) is one positive
    single-point prompt with ``multimask_output=True`` (UGainS, official ``forward``):
    returns masks (Q,3,H,W) bool (logits > ``mask_threshold``) and predicted IoU (Q,3).

    Args:
        model: a ``segment_anything.modeling.Sam``.
        images: (B,H,W,3) uint8 RGB, or what the adapters accept as images.
    """
    sa = _require("segment_anything", "sam", "SAM point prompts (the 'ugains' variant)")
    if not isinstance(model, sa.modeling.Sam):
        raise DTypeError(f"model must be a segment_anything Sam module; got {type(model).__name__}")
    u8 = _to_uint8_hwc(_images(images))
    pred = sa.SamPredictor(model)
    state: dict[str, int | None] = {"i": None}

    @torch.no_grad()
    def predict(i: int, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if state["i"] != i:
            pred.set_image(u8[i])
            state["i"] = i
        h, w = u8[i].shape[:2]
        if points.shape[0] == 0:
            return torch.zeros(0, 3, h, w, dtype=torch.bool), torch.zeros(0, 3)
        tp = pred.transform.apply_coords(points.cpu().numpy().astype(np.float64), (h, w))
        ms, ious = [], []
        for s in range(0, len(tp), points_per_batch):
            c = torch.as_tensor(tp[s:s + points_per_batch], dtype=torch.float32, device=pred.device)[:, None, :]
            lab = torch.ones(c.shape[0], 1, dtype=torch.int, device=pred.device)
            m, iou, _ = pred.predict_torch(c, lab, multimask_output=True)
            ms.append(m.cpu())
            ious.append(iou.float().cpu())
        return torch.cat(ms), torch.cat(ious)

    return predict
