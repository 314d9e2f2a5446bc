"""Train the bundled semantic segmentation net on the synthetic world and export segnet.onnx.

The net (``_train_common.SegNet``, ~0.2M parameters) is trained with pixel-wise
cross-entropy on the in-distribution classes of the synthetic world's ``train`` split
(no anomalies; void = 255 ignored) at 128x256, and exported with input ``image``
(B,3,h,w) float32 normalized with ImageNet mean/std (RGB) and outputs ``logits``
(B,13,h,w) and ``features`` (B,32,h/2,w/2), the decoder features the classifier reads
(ObsNet's observer consumes them).

It is the base of the ``segnet``, ``msp``, ``maxlogit``, ``entropy``, ``energy`` and
``sml`` teachers. Usage (from the repository root)::

    python scripts/train_segnet.py --seed 0

The torch checkpoint (needed by scripts/train_obsnet.py) goes to build/train/segnet.pt;
the ONNX file and a training record go to adapters/bundled/.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import _train_common as C
import torch
import torch.nn.functional as F
from posthoc.adapters.bundled import BUNDLED_DIR
from posthoc.bench import synthetic as syn


def evaluate(model, data, batch_size=16) -> tuple[float, list[float], float]:
    model.eval()
    conf = torch.zeros(C.NUM_CLASSES, C.NUM_CLASSES, dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(data["images"]), batch_size):
            x = C.to_input(data["images"][i:i + batch_size])
            y = torch.as_tensor(data["classes"][i:i + batch_size])
            logits, _ = model(x)
            conf += C.confusion(logits.argmax(1), y, C.NUM_CLASSES)
    m, per_class = C.miou(conf)
    acc = float(conf.diag().sum() / conf.sum().clamp(min=1))
    return m, per_class, acc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--world-seed", type=int, default=0, help="seed of the synthetic world")
    ap.add_argument("--n-train", type=int, default=None, help="train frames (default: synthetic.DEFAULT)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--max-minutes", type=float, default=10.0, help="stop early when this wall time is spent")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="stop after this many steps (reproduces a run that the time cap stopped early)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(BUNDLED_DIR))
    args = ap.parse_args(argv)
    C.setup(args.seed, args.threads)
    timer = C.Timer()

    train = C.load_frames("train", n_frames=args.n_train, seed=args.world_seed)
    val = C.load_frames("val", seed=args.world_seed)
    C.log.info("data: %d train / %d val frames at %s (%.0f s)", len(train["images"]), len(val["images"]),
               train["images"].shape[1:3], timer())
    x_all = C.to_input(train["images"])
    y_all = torch.as_tensor(train["classes"])
    # class-balanced-ish weights: inverse square root of frequency (small classes: poles, signs, people)
    freq = torch.bincount(y_all[y_all != 255], minlength=C.NUM_CLASSES).double()
    weight = (freq.sum() / freq.clamp(min=1)).sqrt()
    weight = (weight / weight.mean()).float()

    model = C.SegNet()
    C.log.info("SegNet: %d parameters", C.n_params(model))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(args.seed)
    n = len(x_all)
    steps_per_epoch = math.ceil(n / args.batch_size)
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=max(0.1, 2.5 / total))
    step, stopped_early, losses = 0, False, []
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, args.batch_size):
            idx = perm[i:i + args.batch_size]
            x, y = C.augment(x_all[idx], y_all[idx], g)
            logits, _ = model.forward_half(x)  # the loss at 1/2 resolution: 4x cheaper, same boundaries
            loss = F.cross_entropy(logits, y[:, ::2, ::2], weight=weight, ignore_index=255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            if timer() > args.max_minutes * 60 or (args.max_steps is not None and step >= args.max_steps):
                stopped_early = True
                break
        C.log.info("epoch %d: loss %.4f, lr %.2e, %.0f s", epoch, sum(losses[-steps_per_epoch:]) /
                   len(losses[-steps_per_epoch:]), sched.get_last_lr()[0], timer())
        if stopped_early:
            C.log.info("stopped after %d/%d steps (time cap %.1f min, --max-steps %s)", step, total, args.max_minutes,
                       args.max_steps)
            break
    train_time = timer()
    val_miou, per_class, val_acc = evaluate(model, val)
    C.log.info("val mIoU %.4f, pixel acc %.4f; per class %s", val_miou, val_acc,
               dict(zip(syn.CLASS_NAMES, per_class)))

    C.save_state(model, C.WORK_DIR / "segnet.pt")
    h, w = syn.DEFAULT.train_size
    out = C.export_onnx(model, (torch.zeros(1, 3, h, w),), Path(args.out) / "segnet.onnx",
                        ["image"], ["logits", "features"],
                        {"image": {0: "B", 2: "h", 3: "w"}, "logits": {0: "B", 2: "h", 3: "w"},
                         "features": {0: "B", 2: "h2", 3: "w2"}})
    C.update_log("segnet", {
        "command": "python scripts/train_segnet.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed, "world_seed": args.world_seed, "params": C.n_params(model),
        "train_frames": n, "steps": step, "epochs_planned": args.epochs, "stopped_early": stopped_early,
        "train_seconds": round(train_time, 1), "final_train_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
        "val_miou": round(val_miou, 4), "val_pixel_acc": round(val_acc, 4),
        "val_iou_per_class": dict(zip(syn.CLASS_NAMES, per_class)),
        "input_size": [h, w], "torch": torch.__version__,
    }, args.out)
    C.log.info("wrote %s (%.0f KB) in %.0f s total", out, out.stat().st_size / 1024, timer())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
