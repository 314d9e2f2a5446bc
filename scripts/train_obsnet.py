"""Train the bundled ObsNet observer on the segmentation net's errors and export observer.onnx.

ObsNet (Besnier et al., "Triggering Failures: Out-Of-Distribution detection by learning
from local adversarial attacks in semantic segmentation", ICCV 2021; official code
valeoai/obsnet) keeps the segmentation net frozen and trains a second net, the
*observer*, to predict where the segmentation net is wrong. Following the official
training loop (``train.py``, ``Utils/adv_attacks.py``, ``main.py``):

* Local Adversarial Attack (LAA, the ``min_random_patch`` mode): a random patch of
  random shapes (``skimage.draw.random_shapes``) is perturbed with one FGSM step that
  *increases* the cross-entropy of the true labels, ``x + eps * sign(grad)`` inside the
  mask, after adding ``0.03 * N(0,1)`` noise inside the mask for diversity; values are
  clamped to [-3, 3] in normalized space. Every training batch is attacked.
* Supervision: the segmentation net's error map on the (attacked) image,
  ``argmax(segnet(x)) != label``, with void pixels ignored.
* Loss: ``BCEWithLogitsLoss(pos_weight=3)`` (the official Cityscapes/StreetHazards value).
* The observer starts from the segmentation net's weights (the official
  ``reinitialize``) and receives the segmentation net's features as a residual input
  (the official observer adds the target net's feature maps at its stages; our
  contract exposes one feature map, the decoder output the classifier reads, which is
  added through a 1x1 projection before the observer's head).

* Optional outlier exposure (``--outlier-exposure P``, off by default; not part of
  ObsNet): with probability ``P`` a training frame gets 1-3 *procedurally generated*
  outliers pasted onto it (:func:`paste_procedural_outliers`: ellipses / convex polygons
  filled with a random colour, a smoothed colour-noise field, or two-colour stripes /
  checkers, all drawn from the seeded generator; no photograph is used, in particular
  none of the scikit-image photos the synthetic anomalies are cut from). Their pixels
  are targets 1 for the observer and void for the attack. This is outlier exposure
  (Hendrycks et al., "Deep Anomaly Detection with Outlier Exposure", ICLR 2019) in the
  pasted-object form used for segmentation by Chan et al. ("Entropy Maximization and
  Meta Classification for Out-of-Distribution Detection in Semantic Segmentation",
  ICCV 2021) and Mask2Anomaly (Rai et al., ICCV 2023), with synthetic instead of COCO
  objects.

Export: inputs ``image`` (B,3,h,w) float32 normalized with ImageNet mean/std (RGB) and
``features`` (B,32,h/2,w/2), the segnet.onnx output of that name; output ``logit``
(B,1,h,w), sigmoid = P(segmentation error / anomaly).

Usage (from the repository root, after scripts/train_segnet.py)::

    python scripts/train_obsnet.py --seed 0
"""
from __future__ import annotations

from pathlib import Path

import _train_common as C
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from skimage.draw import random_shapes
from torch import nn

from posthoc.bench import synthetic as syn


class Observer(nn.Module):
    """ObsNet observer: (image (B,3,h,w), segnet features (B,F,h/2,w/2)) -> error logit (B,1,h,w)."""

    def __init__(self, feat_channels: int = 32):
        super().__init__()
        self.enc = C.Encoder()
        self.dec = C.Decoder()
        d = self.dec.out_channels
        self.feat_proj = nn.Conv2d(feat_channels, d, 1)
        self.head = nn.Sequential(C.cbr(d, d), nn.Conv2d(d, 1, 1))

    def init_from(self, segnet: C.SegNet) -> Observer:
        self.enc.load_state_dict(segnet.enc.state_dict())
        self.dec.load_state_dict(segnet.dec.state_dict())
        return self

    def forward(self, image, features):
        f = self.dec(*self.enc(image)) + self.feat_proj(features)
        return F.interpolate(self.head(f), size=image.shape[-2:], mode="bilinear", align_corners=False)


def random_patch_mask(b: int, h: int, w: int, rng: np.random.Generator, patch=(48, 96), shape_size=(12, 40)):
    """(B,1,h,w) float mask: a random patch filled with 3-8 random shapes (official generate_mask_random_patch)."""
    mask = np.zeros((b, 1, h, w), np.float32)
    ph, pw = min(patch[0], h), min(patch[1], w)
    for i in range(b):
        img, _ = random_shapes((ph, pw), max_shapes=8, min_shapes=3, min_size=shape_size[0],
                               max_size=shape_size[1], num_channels=1, intensity_range=(0, 50),
                               allow_overlap=True, rng=int(rng.integers(2**31)))
        y = int(rng.integers(0, h - ph + 1))
        x = int(rng.integers(0, w - pw + 1))
        mask[i, 0, y:y + ph, x:x + pw] = img[..., 0] < 255
    return torch.from_numpy(mask)


def _texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h,w,3) float32 RGB in [0,1]: flat colour + noise, smoothed colour noise, or stripes/checker."""
    kind = int(rng.integers(3))
    if kind == 0:
        t = rng.random(3)[None, None] + rng.normal(0, rng.uniform(0.02, 0.15), (h, w, 3))
    elif kind == 1:
        small = rng.random((max(2, h // int(rng.integers(2, 8))), max(2, w // int(rng.integers(2, 8))), 3))
        t = cv2.resize(small.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    else:
        c0, c1 = rng.random(3), rng.random(3)
        period = int(rng.integers(2, 10))
        yy, xx = np.mgrid[:h, :w]
        a = rng.uniform(0, np.pi)
        u = (np.cos(a) * xx + np.sin(a) * yy) // period
        sel = (u % 2) if rng.random() < 0.5 else ((u + (yy // period)) % 2)
        t = np.where(sel[..., None] > 0, c0, c1)
    return np.clip(t, 0, 1).astype(np.float32)


def paste_procedural_outliers(x: torch.Tensor, y: torch.Tensor, p: float, rng: np.random.Generator
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outlier exposure with procedural objects (see the module docstring).

    Args:
        x: (B,3,h,w) normalized images; y: (B,h,w) class labels (255 = void).
    Returns:
        (x', y', ood) with the outliers pasted into copies: ``y'`` is 255 on them and
        ``ood`` (B,h,w) bool marks them. Frames are chosen with probability ``p``.
    """
    x, y = x.clone(), y.clone()
    b, _, h, w = x.shape
    ood = torch.zeros(b, h, w, dtype=torch.bool)
    mean = torch.tensor(C.MEAN).view(3, 1, 1)
    std = torch.tensor(C.STD).view(3, 1, 1)
    for i in range(b):
        if rng.random() >= p:
            continue
        for _ in range(int(rng.integers(1, 4))):
            sh = int(rng.integers(8, h // 2))
            sw = int(np.clip(sh * rng.uniform(0.5, 2.0), 6, w // 2))
            m = np.zeros((sh, sw), np.uint8)
            if rng.random() < 0.5:
                cv2.ellipse(m, (sw // 2, sh // 2), (max(1, sw // 2 - 1), max(1, sh // 2 - 1)), 0, 0, 360, 1, -1)
            else:
                pts = np.stack([rng.integers(0, sw, 7), rng.integers(0, sh, 7)], 1).astype(np.int32)
                cv2.fillConvexPoly(m, cv2.convexHull(pts), 1)
            top = int(rng.integers(h // 3, h - sh + 1))  # mostly below the horizon, like objects on the ground
            left = int(rng.integers(0, w - sw + 1))
            mt = torch.from_numpy(m.astype(bool))
            tex = (torch.from_numpy(_texture(sh, sw, rng)).permute(2, 0, 1) - mean) / std
            region = x[i, :, top:top + sh, left:left + sw]
            region[:, mt] = tex[:, mt]
            y[i, top:top + sh, left:left + sw][mt] = 255
            ood[i, top:top + sh, left:left + sw] |= mt
    return x, y, ood


def laa(segnet: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, eps: float,
        g: torch.Generator) -> torch.Tensor:
    """One FGSM step inside ``mask`` that increases the true-label cross-entropy (ObsNet 'min' mode)."""
    x = (x + 0.03 * torch.randn(x.shape, generator=g) * mask).detach().requires_grad_(True)
    logits, _ = segnet(x)
    loss = F.cross_entropy(logits, y, ignore_index=255)
    (grad,) = torch.autograd.grad(loss, x)
    return torch.clamp(x + eps * grad.sign() * mask, -3, 3).detach()


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(labels, scores)) if labels.any() else float("nan")


@torch.no_grad()
def evaluate(segnet, observer, data, batch_size=16) -> dict:
    """Val split: AP of the observer / of 1-MSP for anomaly pixels, and AP for segnet errors."""
    obs, msp, err, lab = [], [], [], []
    for s in range(0, len(data["images"]), batch_size):
        x = C.to_input(data["images"][s:s + batch_size])
        logits, feats = segnet(x)
        p = torch.sigmoid(observer(x, feats))[:, 0]
        prob = logits.softmax(1)
        y = torch.as_tensor(data["classes"][s:s + batch_size])
        obs.append(p.numpy().ravel())
        msp.append((1 - prob.max(1).values).numpy().ravel())
        err.append(((logits.argmax(1) != y) & (y != 255)).numpy().ravel())
        lab.append(data["label"][s:s + batch_size].ravel())
    obs, msp, err, lab = map(np.concatenate, (obs, msp, err, lab))
    valid = lab != 255
    known = valid & (lab == 0)
    return {
        "anomaly_ap_observer": average_precision(obs[valid], lab[valid] == 1),
        "anomaly_ap_msp": average_precision(msp[valid], lab[valid] == 1),
        "error_ap_observer_on_known": average_precision(obs[known], err[known]),
        "error_ap_msp_on_known": average_precision(msp[known], err[known]),
        "segnet_error_rate_on_known": float(err[known].mean()),
    }


def main(argv=None) -> int:
    ap = C.training_parser(__doc__, epochs=2, lr=2e-3, max_minutes=12.0)
    ap.add_argument("--epsilon", type=float, default=0.05, help="FGSM step in normalized units")
    ap.add_argument("--pos-weight", type=float, default=3.0)
    ap.add_argument("--segnet", default=str(C.WORK_DIR / "segnet.pt"))
    ap.add_argument("--outlier-exposure", type=float, default=0.0,
                    help="probability that a train frame gets procedural outliers pasted (0 = plain ObsNet)")
    args = ap.parse_args(argv)
    timer = C.start(args)
    segnet = C.load_state(C.SegNet(), args.segnet).eval()
    for p in segnet.parameters():
        p.requires_grad_(False)
    train, val = C.load_train_val(args)
    x_all = C.to_input(train["images"])
    y_all = torch.as_tensor(train["classes"])
    n = len(x_all)
    h, w = x_all.shape[-2:]

    observer = Observer().init_from(segnet)
    C.log.info("Observer: %d parameters; %d train frames (%.0f s)", C.n_params(observer), n, timer())
    rng = np.random.default_rng(args.seed)
    pos_weight = torch.tensor([args.pos_weight])

    def step(idx, g):
        x, y = C.augment(x_all[idx], y_all[idx], g)
        ood = None
        if args.outlier_exposure > 0:
            x, y, ood = paste_procedural_outliers(x, y, args.outlier_exposure, rng)
        mask = random_patch_mask(len(idx), h, w, rng)
        x = laa(segnet, x, y, mask, args.epsilon, g)
        with torch.no_grad():
            logits, feats = segnet(x)
            wrong = logits.argmax(1) != y
            valid = known = y != 255
            target = wrong.float()
            if ood is not None:
                target[ood] = 1.0
                valid = valid | ood
        out = observer(x, feats)[:, 0]
        loss = F.binary_cross_entropy_with_logits(out[valid], target[valid], pos_weight=pos_weight)
        m = mask[:, 0].bool() & known
        return loss, (float(wrong[known].float().mean()), float(wrong[m].float().mean()) if m.any() else 0.0)

    def log_epoch(epoch, rows, lr):
        C.log.info("epoch %d: loss %.4f, segnet error rate %.3f (inside attacked patches %.3f), %.0f s",
                   epoch, *np.mean(rows, 0), timer())

    fit = C.fit_one_cycle(observer, step, n=n, args=args, timer=timer, log_epoch=log_epoch)
    observer.eval()
    ev = evaluate(segnet, observer, val)
    C.log.info("val: %s", ev)
    C.save_state(observer, C.WORK_DIR / "observer.pt")
    th, tw = syn.DEFAULT.train_size
    out = C.export_onnx(observer, (torch.zeros(1, 3, th, tw), torch.zeros(1, 32, th // 2, tw // 2)),
                        Path(args.out) / "observer.onnx", ["image", "features"], ["logit"],
                        {"image": {0: "B", 2: "h", 3: "w"}, "features": {0: "B", 2: "h2", 3: "w2"},
                         "logit": {0: "B", 2: "h", 3: "w"}})
    last = fit.mean_last(20)
    C.log_training("obsnet", "train_obsnet.py", argv, args, observer, {
        **fit.record(), "epsilon": args.epsilon, "pos_weight": args.pos_weight,
        "outlier_exposure": args.outlier_exposure,
        "train_seconds": round(fit.seconds, 1),
        "final_train_loss": round(float(last[0]), 4),
        "segnet_error_rate_under_laa": round(float(last[1]), 4),
        "segnet_error_rate_inside_patches": round(float(last[2]), 4),
        "val": {k: round(v, 4) for k, v in ev.items()},
        "input_size": [th, tw],
    })
    C.log_written(out, timer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
