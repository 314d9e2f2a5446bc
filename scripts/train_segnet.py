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

from pathlib import Path

import _train_common as C
import torch
import torch.nn.functional as F

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
    ap = C.training_parser(__doc__, epochs=5, lr=4e-3, max_minutes=10.0)
    args = ap.parse_args(argv)
    timer = C.start(args)

    train, val = C.load_train_val(args)
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

    def step(idx, g):
        x, y = C.augment(x_all[idx], y_all[idx], g)
        logits, _ = model.forward_half(x)  # the loss at 1/2 resolution: 4x cheaper, same boundaries
        return F.cross_entropy(logits, y[:, ::2, ::2], weight=weight, ignore_index=255), ()

    def log_epoch(epoch, rows, lr):
        losses = [r[0] for r in rows]
        C.log.info("epoch %d: loss %.4f, lr %.2e, %.0f s", epoch, sum(losses) / len(losses), lr, timer())

    fit = C.fit_one_cycle(model, step, n=len(x_all), args=args, timer=timer, log_epoch=log_epoch)
    val_miou, per_class, val_acc = evaluate(model, val)
    C.log.info("val mIoU %.4f, pixel acc %.4f; per class %s", val_miou, val_acc,
               dict(zip(syn.CLASS_NAMES, per_class, strict=False)))

    C.save_state(model, C.WORK_DIR / "segnet.pt")
    h, w = syn.DEFAULT.train_size
    out = C.export_onnx(model, (torch.zeros(1, 3, h, w),), Path(args.out) / "segnet.onnx",
                        ["image"], ["logits", "features"],
                        {"image": {0: "B", 2: "h", 3: "w"}, "logits": {0: "B", 2: "h", 3: "w"},
                         "features": {0: "B", 2: "h2", 3: "w2"}})
    losses = [r[0] for r in fit.hist[-20:]]
    C.log_training("segnet", "train_segnet.py", argv, args, model, {
        **fit.record(), "train_seconds": round(fit.seconds, 1),
        "final_train_loss": round(sum(losses) / len(losses), 4),
        "val_miou": round(val_miou, 4), "val_pixel_acc": round(val_acc, 4),
        "val_iou_per_class": dict(zip(syn.CLASS_NAMES, per_class, strict=False)),
        "input_size": [h, w],
    })
    C.log_written(out, timer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
