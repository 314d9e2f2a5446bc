"""Train the bundled zero-shot teacher (pixel embeddings x class descriptors) and export zs3net.onnx.

The net is the segnet encoder-decoder (``_train_common.Encoder``/``Decoder``) with a 1x1 head
to an embedding of ``len(ATTRIBUTES)`` dimensions, L2-normalized per pixel. A class's score is
the cosine similarity of that embedding with the class descriptor
(:func:`posthoc.bench.synthetic_zs3.descriptor_matrix`: hand-written attribute vectors that
stand in for CLIP text embeddings). Training sees the **seen classes only**: pixels of the
unseen classes (``synthetic_zs3.UNSEEN``) are void, and the cross-entropy runs over the seen
classes' cosine logits (scale ``--logit-scale``), plus ``--align`` x (1 - cosine with the
pixel's own descriptor). At test time every class, seen or unseen, is scored the same way.

Export: input ``image`` (B,3,h,w) float32 normalized with ImageNet mean/std (RGB), output
``class_maps`` (B,13,h,w) = softmax over the 13 classes of scale x cosine, the
probability-like class maps the ``zegformer`` adapter expects (it then subtracts its
seen-class calibration ``gzero_calibrate`` as ZegFormer's inference does).

Resumable: a checkpoint (model, optimizer, schedule, generator, epoch) is written to
build/train/zs3net_ckpt.pt after every epoch; rerunning the same command continues from it.
Usage (from the repository root)::

    nice -n 15 python scripts/train_zs3.py --threads 1
"""
from __future__ import annotations

import math
from pathlib import Path

import _train_common as C
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from posthoc.adapters.io import atomic_path
from posthoc.bench import synthetic as syn
from posthoc.bench import synthetic_zs3 as zs

TRAIN_SIZE = (96, 192)


class ZS3Net(nn.Module):
    """image (B,3,h,w) normalized -> unit pixel embeddings (B,A,h/2,w/2)."""

    def __init__(self, dim: int):
        super().__init__()
        self.enc = C.Encoder()
        self.dec = C.Decoder()
        self.head = nn.Conv2d(self.dec.out_channels, dim, 1)

    def forward(self, image):
        return F.normalize(self.head(self.dec(*self.enc(image))), dim=1)


class Export(nn.Module):
    """The exported graph: class maps = softmax_c(scale * <embedding, descriptor_c>) at the input size."""

    def __init__(self, net: ZS3Net, desc: torch.Tensor, scale: float):
        super().__init__()
        self.net = net
        self.register_buffer("desc", desc.clone())
        self.scale = float(scale)

    def forward(self, image):
        e = self.net(image)
        logits = torch.einsum("bahw,ca->bchw", e, self.desc) * self.scale
        logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return torch.softmax(logits, dim=1)


def evaluate(export: Export, data, calibrate: float, batch_size: int = 16) -> dict:
    """mIoU over all classes, seen, unseen and hIoU (ZegFormer's), with the seen-class calibration."""
    export.eval()
    k = C.NUM_CLASSES
    seen = torch.tensor([syn.CLASS_NAMES.index(n) for n in zs.SEEN])
    conf = torch.zeros(k, k, dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(data["images"]), batch_size):
            p = export(C.to_input(data["images"][i:i + batch_size]))
            p[:, seen] -= calibrate
            conf += C.confusion(p.argmax(1), torch.as_tensor(data["classes"][i:i + batch_size]), k)
    _, iou = C.miou(conf)
    iou = np.asarray(iou)
    present = (conf.sum(1) > 0).numpy()
    smask = np.zeros(k, bool)
    smask[seen.numpy()] = True
    s = float(iou[smask & present].mean())
    u = float(iou[~smask & present].mean())
    return {"miou": round(float(iou[present].mean()), 4), "miou_seen": round(s, 4), "miou_unseen": round(u, 4),
            "hiou": round(2 * s * u / (s + u) if s + u > 0 else 0.0, 4),
            "iou_per_class": dict(zip(syn.CLASS_NAMES, [round(float(v), 4) for v in iou], strict=False))}


def main(argv=None) -> int:
    ap = C.training_parser(__doc__, epochs=20, lr=4e-3, max_minutes=8.0)
    ap.add_argument("--logit-scale", type=float, default=10.0)
    ap.add_argument("--align", type=float, default=0.5)
    ap.add_argument("--calibrate", type=float, default=0.1, help="seen-class calibration used for the val numbers")
    args = ap.parse_args(argv)
    timer = C.start(args)
    th, tw = TRAIN_SIZE
    train = C.load_frames("train", n_frames=args.n_train, seed=args.world_seed, train_size=TRAIN_SIZE)
    val = C.load_frames("val", seed=args.world_seed, train_size=TRAIN_SIZE)
    C.log.info("data: %d train / %d val frames at %s (%.0f s)", len(train["images"]), len(val["images"]),
               (th, tw), timer())
    x_all = C.to_input(train["images"])
    y_all = torch.as_tensor(train["classes"]).clone()
    unseen = [syn.CLASS_NAMES.index(n) for n in zs.UNSEEN]
    seen = [syn.CLASS_NAMES.index(n) for n in zs.SEEN]
    for u in unseen:  # ZS3 protocol: unseen pixels are in the images, their labels are void
        y_all[y_all == u] = 255
    # seen labels -> 0..S-1 for the cross-entropy over the seen classes
    remap = torch.full((256,), 255, dtype=torch.long)
    remap[torch.tensor(seen)] = torch.arange(len(seen))
    y_seen = remap[y_all]
    desc = torch.from_numpy(zs.descriptor_matrix())
    desc_seen = desc[seen]
    freq = torch.bincount(y_seen[y_seen != 255], minlength=len(seen)).double()
    weight = ((freq.sum() / freq.clamp(min=1)).sqrt())
    weight = (weight / weight.mean()).float()

    model = ZS3Net(desc.shape[1])
    C.log.info("ZS3Net: %d parameters, %d seen / %d unseen classes (%s)", C.n_params(model), len(seen), len(unseen),
               ", ".join(zs.UNSEEN))
    n = len(x_all)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    spe = math.ceil(n / args.batch_size)
    total = args.epochs * spe
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total,
                                                pct_start=min(0.3, max(0.1, 2.5 / total)))
    g = torch.Generator().manual_seed(args.seed)
    ckpt = C.WORK_DIR / "zs3net_ckpt.pt"
    start_epoch, steps, hist, spent = 0, 0, [], 0.0
    if ckpt.is_file():
        st = torch.load(ckpt, map_location="cpu", weights_only=True)
        if st.get("config") == [args.seed, args.world_seed, args.epochs, args.batch_size, args.lr, n]:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["opt"])
            sched.load_state_dict(st["sched"])
            g.set_state(st["gen"])
            start_epoch, steps, spent = int(st["epoch"]), int(st["steps"]), float(st["seconds"])
            hist = [tuple(h) for h in st["hist"].tolist()]
            C.log.info("resumed from %s at epoch %d (%d steps, %.0f s spent)", ckpt, start_epoch, steps, spent)
    t_resume = timer()
    stopped_early = False
    for epoch in range(start_epoch, args.epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, args.batch_size):
            idx = perm[i:i + args.batch_size]
            x, y = C.augment(x_all[idx], y_seen[idx], g)
            y = y[:, ::2, ::2]
            e = model(x)
            cos = torch.einsum("bahw,sa->bshw", e, desc_seen)
            ce = F.cross_entropy(cos * args.logit_scale, y, weight=weight, ignore_index=255)
            valid = y != 255
            own = cos.gather(1, y.clamp(max=len(seen) - 1)[:, None])[:, 0]
            align = (1 - own[valid]).mean() if valid.any() else cos.sum() * 0
            loss = ce + args.align * align
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
            hist.append((loss.item(), ce.item(), align.item()))
            if spent + timer() - t_resume > args.max_minutes * 60 or (args.max_steps and steps >= args.max_steps):
                stopped_early = True
                break
        rows = hist[-spe:]
        C.log.info("epoch %d: loss %.4f (ce %.4f, align %.4f), %.0f s", epoch, *np.mean(rows, 0),
                   spent + timer() - t_resume)
        with atomic_path(ckpt, suffix=".pt") as tmp:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"config": [args.seed, args.world_seed, args.epochs, args.batch_size, args.lr, n],
                        "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "gen": g.get_state(), "epoch": epoch + 1 if not stopped_early else epoch,
                        "steps": steps, "seconds": spent + timer() - t_resume,
                        "hist": torch.tensor(hist, dtype=torch.float64)}, tmp)
        if stopped_early:
            C.log.info("stopped after %d/%d steps (time cap %.1f min)", steps, total, args.max_minutes)
            break
    export = Export(model, desc, args.logit_scale)
    res = evaluate(export, val, args.calibrate)
    res0 = evaluate(export, val, 0.0)
    C.log.info("val (calibration %.2f): %s", args.calibrate, res)
    C.log.info("val (no calibration): mIoU seen %.4f unseen %.4f hIoU %.4f", res0["miou_seen"], res0["miou_unseen"],
               res0["hiou"])
    out = C.export_onnx(export, (torch.zeros(1, 3, th, tw),), Path(args.out) / "zs3net.onnx", ["image"],
                        ["class_maps"], {"image": {0: "B", 2: "h", 3: "w"}, "class_maps": {0: "B", 2: "h", 3: "w"}})
    last = np.mean(hist[-20:], 0)
    C.log_training("zs3net", "train_zs3.py", argv, args, model, {
        "train_frames": n, "steps": steps, "epochs_planned": args.epochs, "stopped_early": stopped_early,
        "train_seconds": round(spent + timer() - t_resume, 1), "final_train_loss": round(float(last[0]), 4),
        "seen_classes": list(zs.SEEN), "unseen_classes": list(zs.UNSEEN), "logit_scale": args.logit_scale,
        "val_calibrate": args.calibrate, "val": res, "val_no_calibration": {k: res0[k] for k in
                                                                           ("miou_seen", "miou_unseen", "hiou")},
        "input_size": [th, tw],
    })
    C.log_written(out, timer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
