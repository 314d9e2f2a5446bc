"""Train the bundled class-agnostic region-proposal net (CSL's way) and export csl_rpn.onnx.

CSL (Zhang et al., "Class-agnostic structure-constrained learning for segmentation
including the unseen", AAAI 2024) trains a class-agnostic Mask2Former-style proposal
network whose soft region scores R (B,N,h,w) and validities V (B,N) are turned into a
partition by soft assignment (CSL Eq. 2) and used to constrain the teacher's scores
(Eq. 3). This script trains a small version of it on the synthetic world:

* N learned queries (default 32) attend, in two cross-attention layers, to the 1/16
  and 1/8 feature maps of a small conv encoder (Mask2Former's multi-scale query
  decoder without masked attention); each query gives a mask embedding, dotted with
  the per-pixel embeddings of a U-Net pixel decoder (1/4 resolution) to give mask
  logits, and a validity logit.
* Targets use CSL's *mask split*: the ground-truth regions are the 8-connected
  components of every class region of the in-distribution class map, with the class
  identity dropped (class-agnostic). Void pixels are ignored.
* Hungarian matching (``scipy.optimize.linear_sum_assignment``) on a mask cost
  = BCE + dice, as in Mask2Former's matcher without the class term; loss = 5*BCE +
  5*dice on matched masks (Mask2Former's weights) + 2*BCE on validity (matched = 1,
  unmatched = 0). There is no class loss.

Export: input ``image`` (B,3,h,w) float32 normalized with ImageNet mean/std (RGB) at
the training size (128x256); outputs ``region_scores`` (B,N,h/2,w/2) probabilities in
[0,1] (sigmoid of the upsampled mask logits) and ``validity`` (B,N) in [0,1].

Usage (from the repository root)::

    python scripts/train_csl_rpn.py --seed 0
"""
from __future__ import annotations

from pathlib import Path

import _train_common as C
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from posthoc.bench import synthetic as syn


class QueryLayer(nn.Module):
    """Cross-attention to image tokens, self-attention among queries, FFN (post-norm, as Mask2Former)."""

    def __init__(self, d: int, heads: int = 4):
        super().__init__()
        self.cross = nn.MultiheadAttention(d, heads, batch_first=True)
        self.self_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(inplace=True), nn.Linear(2 * d, d))
        self.n1, self.n2, self.n3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, q, qpos, mem, mpos):
        q = self.n1(q + self.cross(q + qpos, mem + mpos, mem, need_weights=False)[0])
        q = self.n2(q + self.self_attn(q + qpos, q + qpos, q, need_weights=False)[0])
        return self.n3(q + self.ffn(q))


class RPN(nn.Module):
    """Class-agnostic query-based region proposer: image -> (region_scores (B,N,h/2,w/2), validity (B,N))."""

    def __init__(self, num_queries: int = 32, d: int = 64, emb: int = 32):
        super().__init__()
        self.enc = C.Encoder()
        c = self.enc.channels
        self.dec = C.Decoder()
        self.pix = nn.Conv2d(self.dec.out_channels, emb, 1)
        self.proj3 = nn.Conv2d(c[3], d, 1)
        self.proj2 = nn.Conv2d(c[2], d, 1)
        self.pos = nn.Sequential(nn.Linear(2, d), nn.ReLU(inplace=True), nn.Linear(d, d))
        self.level = nn.Parameter(torch.zeros(2, d))
        self.query = nn.Parameter(torch.randn(num_queries, d) * 0.5)
        self.qpos = nn.Parameter(torch.randn(num_queries, d) * 0.5)
        self.layers = nn.ModuleList([QueryLayer(d), QueryLayer(d), QueryLayer(d)])
        self.mask_embed = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, emb))
        self.valid = nn.Linear(d, 1)

    def _tokens(self, f: torch.Tensor, proj: nn.Module, level: int):
        t = proj(f)
        h, w = t.shape[-2:]
        ys = torch.linspace(-1, 1, h, device=f.device)
        xs = torch.linspace(-1, 1, w, device=f.device)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(h * w, 2)
        pos = self.pos(grid) + self.level[level]
        return t.flatten(2).transpose(1, 2), pos.unsqueeze(0)

    def forward_logits(self, image):
        return self.head_logits(*self.enc(image))

    def head_logits(self, f0, f1, f2, f3):
        """Everything after the encoder (trained alone when the encoder is frozen)."""
        pix = self.pix(self.dec(f0, f1, f2, f3))  # (B,E,h/2,w/2)
        b = f0.shape[0]
        q = self.query.unsqueeze(0).expand(b, -1, -1)
        qpos = self.qpos.unsqueeze(0).expand(b, -1, -1)
        m3, p3 = self._tokens(f3, self.proj3, 0)
        m2, p2 = self._tokens(f2, self.proj2, 1)
        for i, layer in enumerate(self.layers):
            mem, mpos = (m3, p3) if i % 2 == 0 else (m2, p2)
            q = layer(q, qpos, mem, mpos)
        masks = torch.einsum("bne,behw->bnhw", self.mask_embed(q), pix)
        return masks, self.valid(q).squeeze(-1)

    def forward(self, image):
        masks, valid = self.forward_logits(image)
        return torch.sigmoid(masks), torch.sigmoid(valid)


PASTED = 254  # class value of a copy-pasted blob in the augmented class maps (its own class-agnostic region)


def copy_paste(images: np.ndarray, classes: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-agnostic copy-paste augmentation with in-distribution content only.

    Each frame gets 1-3 blobs (ellipse or convex polygon, 6-40 % of the frame height) whose
    pixels are copied from another random *training* frame at a random offset and
    colour-jittered. A blob is its own region in the mask-split targets (class value
    ``PASTED``), so the proposer learns that a patch whose appearance differs from its
    surroundings is a separate region: the object-ness that CSL's class-agnostic
    proposer relies on for unseen objects. Nothing from the val/test anomaly sources is used.

    Returns new (N,h,w,3) uint8 images and (N,h,w) class maps; the inputs are not modified.
    """
    rng = np.random.default_rng(seed)
    n, h, w = classes.shape
    out_i, out_c = images.copy(), classes.copy()
    for i in range(n):
        for _ in range(int(rng.integers(1, 4))):
            bh = int(h * rng.uniform(0.06, 0.4))
            bw = int(bh * rng.uniform(0.5, 2.0))
            bh, bw = max(bh, 4), min(max(bw, 4), w - 1)
            m = np.zeros((bh, bw), np.uint8)
            if rng.random() < 0.5:
                cv2.ellipse(m, (bw // 2, bh // 2), (max(1, bw // 2 - 1), max(1, bh // 2 - 1)), 0, 0, 360, 1, -1)
            else:
                pts = np.stack([rng.uniform(0, bw - 1, 7), rng.uniform(0, bh - 1, 7)], 1).astype(np.float32)
                cv2.fillPoly(m, [cv2.convexHull(pts).astype(np.int32)], 1)
            j = int(rng.integers(n))
            sy, sx = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            ty, tx = int(rng.integers(h // 4, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            src = images[j, sy:sy + bh, sx:sx + bw].astype(np.float32)
            src = np.clip(src * rng.uniform(0.7, 1.3, 3) + rng.uniform(-25, 25), 0, 255)
            mb = m.astype(bool)
            tgt = out_i[i, ty:ty + bh, tx:tx + bw]
            tgt[mb] = src[mb].astype(np.uint8)
            ct = out_c[i, ty:ty + bh, tx:tx + bw]
            ct[mb & (ct != 255)] = PASTED
    return out_i, out_c


def region_targets(classes: np.ndarray, size: tuple[int, int], min_px: int, max_regions: int) -> np.ndarray:
    """CSL mask split: 8-connected components of every class region (class-agnostic) at ``size``.

    Returns (N,h,w) int16 region index per pixel, -1 for void (255) and for dropped tiny
    components; at most ``max_regions`` regions per frame (the largest ones).
    """
    h, w = size
    out = np.full((len(classes), h, w), -1, np.int16)
    for i, cls in enumerate(classes):
        c = cv2.resize(cls.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        comps = []
        for k in np.unique(c):
            if k == 255:
                continue
            n, lab = cv2.connectedComponents((c == k).astype(np.uint8), connectivity=8)
            for j in range(1, n):
                m = lab == j
                area = int(m.sum())
                if area >= min_px:
                    comps.append((area, m))
        comps.sort(key=lambda t: -t[0])
        for r, (_, m) in enumerate(comps[:max_regions]):
            out[i][m] = r
    return out


def match_and_loss(masks: torch.Tensor, valid: torch.Tensor, targets: torch.Tensor):
    """Hungarian matching (BCE + dice cost) and the CSL/Mask2Former loss for a batch.

    masks: (B,N,h,w) logits; valid: (B,N) logits; targets: (B,h,w) int64 region ids, -1 = ignore.
    """
    b, n = valid.shape
    bce_l, dice_l, v_t = [], [], torch.zeros_like(valid)
    for i in range(b):
        t = targets[i].reshape(-1)
        keep = t >= 0
        logit = masks[i].reshape(n, -1)[:, keep]  # (N,P)
        t = t[keep]
        m = int(t.max()) + 1 if t.numel() else 0
        if m == 0:
            continue
        gt = F.one_hot(t, m).T.float()  # (M,P)
        p = logit.sigmoid()
        with torch.no_grad():
            pos = F.softplus(-logit)  # -log sigmoid
            neg = F.softplus(logit)  # -log(1 - sigmoid)
            bce_cost = (pos @ gt.T + neg @ (1 - gt).T) / gt.shape[1]
            dice_cost = 1 - (2 * p @ gt.T + 1) / (p.sum(1, keepdim=True) + gt.sum(1)[None] + 1)
            rows, cols = linear_sum_assignment((bce_cost + dice_cost).numpy())
        rows_t, cols_t = torch.as_tensor(rows), torch.as_tensor(cols)
        lm, g = logit[rows_t], gt[cols_t]
        bce_l.append(F.binary_cross_entropy_with_logits(lm, g, reduction="none").mean(1))
        pm = lm.sigmoid()
        dice_l.append(1 - (2 * (pm * g).sum(1) + 1) / (pm.sum(1) + g.sum(1) + 1))
        v_t[i, rows_t] = 1.0
    bce = torch.cat(bce_l).mean() if bce_l else masks.sum() * 0
    dice = torch.cat(dice_l).mean() if dice_l else masks.sum() * 0
    vloss = F.binary_cross_entropy_with_logits(valid, v_t)
    return 5 * bce + 5 * dice + 2 * vloss, (bce.item(), dice.item(), vloss.item())


@torch.no_grad()
def evaluate(model, images: np.ndarray, targets: np.ndarray, batch_size: int = 16) -> dict:
    """Mean best IoU of each GT region with the soft-assignment partition, and the number of regions used."""
    model.eval()
    ious, used = [], []
    for s in range(0, len(images), batch_size):
        r, v = model(C.to_input(images[s:s + batch_size]))
        lab = (r * v[..., None, None]).argmax(1)  # soft assignment, CSL Eq. 2
        for i in range(lab.shape[0]):
            t = torch.as_tensor(targets[s + i]).long()
            keep = t >= 0
            p, t = lab[i][keep], t[keep]
            m, n = int(t.max()) + 1, r.shape[1]
            inter = torch.bincount(t * n + p, minlength=m * n).view(m, n).double()
            area_t, area_p = inter.sum(1, keepdim=True), inter.sum(0, keepdim=True)
            iou = inter / (area_t + area_p - inter).clamp(min=1)
            ious.append(iou.max(1).values.mean().item())
            used.append(int((inter.sum(0) > 0).sum()))
    return {"mean_best_iou": float(np.mean(ious)), "regions_used": float(np.mean(used))}


def main(argv=None) -> int:
    ap = C.training_parser(__doc__, epochs=8, lr=2e-3, max_minutes=12.0)
    ap.add_argument("--num-queries", type=int, default=32)
    ap.add_argument("--min-region-px", type=int, default=6, help="smaller GT components (at h/2 x w/2) are ignored")
    ap.add_argument("--init-segnet", default=str(C.WORK_DIR / "segnet.pt"),
                    help="initialize encoder and pixel decoder from this SegNet checkpoint ('' = random init)")
    ap.add_argument("--freeze-encoder", type=int, default=1,
                    help="1: keep the segnet-initialized encoder frozen and precompute its features (default)")
    ap.add_argument("--copy-paste", type=int, default=0,
                    help="1: add a class-agnostic copy-paste copy of every train frame (tried on val, not "
                         "adopted for the bundled model; see docs/training.md)")
    args = ap.parse_args(argv)
    timer = C.start(args)
    h, w = syn.DEFAULT.train_size
    train, val = C.load_train_val(args)
    tsize = (h // 2, w // 2)
    if args.copy_paste:
        pi, pc = copy_paste(train["images"], train["classes"], args.seed + 1)
        train["images"] = np.concatenate([train["images"], pi])
        train["classes"] = np.concatenate([train["classes"], pc])
        del pi, pc
    y_train = torch.as_tensor(region_targets(train["classes"], tsize, args.min_region_px,
                                             args.num_queries - 2).astype(np.int64))
    y_val = region_targets(val["classes"], tsize, args.min_region_px, args.num_queries - 2).astype(np.int64)
    C.log.info("data: %d train frames, %.1f regions per frame on average (%.0f s)", len(y_train),
               float((y_train.amax((1, 2)) + 1).float().mean()), timer())
    x_all = C.to_input(train["images"])
    del train

    model = RPN(args.num_queries)
    if args.init_segnet:  # start the encoder / pixel decoder from the segnet (ImageNet-pretraining stand-in)
        seg = C.load_state(C.SegNet(), args.init_segnet)
        model.enc.load_state_dict(seg.enc.state_dict())
        model.dec.load_state_dict(seg.dec.state_dict())
    feats = None
    if args.freeze_encoder:
        # A frozen (segnet-initialized) encoder, as a frozen pretrained backbone: its features are
        # computed once for every frame and its horizontal flip, and only the pixel decoder and the
        # query decoder train. About 3x less compute per step on a shared 2-core CPU.
        if not args.init_segnet:
            raise SystemExit("--freeze-encoder needs --init-segnet")
        model.enc.eval()
        for p_ in model.enc.parameters():
            p_.requires_grad_(False)
        feats = [[], []]
        with torch.no_grad():
            for s0 in range(0, len(x_all), 32):
                for fl in (0, 1):
                    xb = x_all[s0:s0 + 32]
                    feats[fl].append(model.enc(xb.flip(-1) if fl else xb))
        feats = [[torch.cat([b[j] for b in feats[fl]]) for j in range(4)] for fl in (0, 1)]
        C.log.info("encoder features precomputed (%.0f s)", timer())
    C.log.info("RPN: %d parameters, %d queries", C.n_params(model), args.num_queries)

    def train_mode():
        model.train()
        if feats is not None:
            model.enc.eval()

    def step(idx, g):
        if feats is None:
            x, y = C.augment(x_all[idx], y_train[idx], g)
            masks, valid = model.forward_logits(x)
        else:
            flip = torch.rand(len(idx), generator=g) < 0.5
            f = [torch.where(flip.view(-1, 1, 1, 1), feats[1][j][idx], feats[0][j][idx]) for j in range(4)]
            y = torch.where(flip.view(-1, 1, 1), y_train[idx].flip(-1), y_train[idx])
            masks, valid = model.head_logits(*f)
        return match_and_loss(masks, valid, y)

    def log_epoch(epoch, rows, lr):
        C.log.info("epoch %d: loss %.3f (bce %.3f dice %.3f validity %.3f), %.0f s", epoch, *np.mean(rows, 0), timer())

    fit = C.fit_one_cycle(model, step, n=len(x_all), args=args, timer=timer,
                          params=[p_ for p_ in model.parameters() if p_.requires_grad], clip_grad_norm=1.0,
                          train_mode=train_mode, log_epoch=log_epoch)
    ev = evaluate(model, val["images"], y_val)
    C.log.info("val: %s", ev)
    C.save_state(model, C.WORK_DIR / "csl_rpn.pt")
    out = C.export_onnx(model, (torch.zeros(1, 3, h, w),), Path(args.out) / "csl_rpn.onnx", ["image"],
                        ["region_scores", "validity"],
                        {"image": {0: "B"}, "region_scores": {0: "B"}, "validity": {0: "B"}})
    last = fit.mean_last(20)
    C.log_training("csl_rpn", "train_csl_rpn.py", argv, args, model, {
        "num_queries": args.num_queries, **fit.record(), "train_seconds": round(fit.seconds, 1),
        "final_train_loss": {"total": round(float(last[0]), 4), "bce": round(float(last[1]), 4),
                             "dice": round(float(last[2]), 4), "validity": round(float(last[3]), 4)},
        "val_mean_best_iou_of_gt_regions": round(ev["mean_best_iou"], 4),
        "val_regions_used_per_frame": round(ev["regions_used"], 2),
        "init_segnet": bool(args.init_segnet), "freeze_encoder": bool(args.freeze_encoder),
        "copy_paste": bool(args.copy_paste),
        "input_size": [h, w], "output_size": list(tsize),
    })
    C.log_written(out, timer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
