#!/usr/bin/env python
"""Wrap your own ONNX model and fuse its output with SAM proposals (CSL scheme 2).

    python examples/wrap_onnx_sam.py --onnx my_model.onnx --kind anomaly \
        --sam-checkpoint sam_vit_b_01ec64.pth --image frame.png --out runs/example

What it does, in the lines a user copies::

    teacher = get_teacher("onnx", path="my_model.onnx", kind="anomaly")      # your model
    proposals = get_proposals("sam", checkpoint="sam_vit_b_01ec64.pth")      # or "superpixels"
    fused = posthoc.fuse(teacher(images).scores, proposals(images))          # CSL Eq. 3

Without ``--sam-checkpoint`` (no SAM weights can be downloaded here) the script says so
and uses superpixel proposals instead. Without ``--onnx`` it uses the bundled semantic
segmenter if the package ships one, else it exports a small random-weight demo model to
the output folder, so that the script always runs end to end; pass your own model for
meaningful output. Without ``--image`` it takes frames of the synthetic world
(``posthoc.bench.synthetic``) or, if that is not available, draws a test image.

Writes ``<out>/<name>_teacher.npy``, ``<name>_fused.npy`` (float32 (C,H,W) in [0,1]),
``<name>_labels.npy`` (int64 (H,W) proposal labels) and ``<name>_fused.png`` (a heat map of
the anomaly score, or the arg-max class), each written atomically.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


def _atomic_save(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _demo_model(out: Path) -> Path:
    """Export a tiny random-weight anomaly net (conv -> sigmoid) so the example runs without a model."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 1),
                              torch.nn.Sigmoid()).eval()
    path = out / "demo_anomaly.onnx"
    _atomic_save(path, lambda tmp: torch.onnx.export(
        net, (torch.zeros(1, 3, 64, 64),), tmp, input_names=["image"], output_names=["anomaly"], dynamo=False,
        dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}, "anomaly": {0: "b", 2: "h", 3: "w"}}))
    return path


def _load_images(paths: list[str], n: int) -> tuple[np.ndarray, list[str]]:
    import cv2

    if paths:
        imgs, names = [], []
        for p in paths:
            im = cv2.imread(p, cv2.IMREAD_COLOR)
            if im is None:
                raise SystemExit(f"error: cannot read image {p!r} (expected a PNG/JPEG file)")
            imgs.append(cv2.cvtColor(im, cv2.COLOR_BGR2RGB))
            names.append(Path(p).stem)
        if len({im.shape for im in imgs}) != 1:
            raise SystemExit("error: all --image files must have the same size to be run as one batch")
        return np.stack(imgs), names
    try:
        from posthoc.bench.synthetic import ensure_world

        folder = ensure_world(split="test") / "images"
        files = sorted(folder.glob("*.png"))[:n]
        if files:
            print(f"[example] no --image given: using {len(files)} synthetic-world frames from {folder}")
            return _load_images([str(f) for f in files], n)
    except Exception as e:
        print(f"[example] synthetic world not available ({type(e).__name__}: {e}); drawing a test image")
    rng = np.random.default_rng(0)
    img = np.full((1, 256, 512, 3), 90, np.uint8)
    img[0, 128:] = (70, 70, 80)  # road
    img[0, :128] = (120, 160, 220)  # sky
    img[0, 150:190, 230:280] = (200, 40, 40)  # an obstacle
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    return img, ["drawn"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Fuse your ONNX model's output with SAM (or superpixel) proposals.")
    ap.add_argument("--onnx", help="your ONNX model: input (B,3,H,W) float, output logits (B,K,h,w) or (B,1,h,w)")
    ap.add_argument("--kind", choices=["anomaly", "semantic"], default=None,
                    help="what the model outputs (default: anomaly for --onnx)")
    ap.add_argument("--activation", choices=["sigmoid"], default=None, help="for anomaly models that output logits")
    ap.add_argument("--sam-checkpoint", help="official SAM checkpoint (e.g. sam_vit_b_01ec64.pth)")
    ap.add_argument("--sam-model-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--image", action="append", default=[], help="input image(s); repeat the flag for several")
    ap.add_argument("--frames", type=int, default=2, help="synthetic frames to use without --image (default 2)")
    ap.add_argument("--out", default="runs/wrap_onnx_sam", help="output folder")
    args = ap.parse_args(argv)

    import posthoc
    from posthoc.adapters import get_proposals, get_teacher

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, names = _load_images(args.image, args.frames)

    # 1. the teacher: your ONNX model
    if args.onnx:
        teacher = get_teacher("onnx", path=args.onnx, kind=args.kind or "anomaly", activation=args.activation)
    else:
        from posthoc.adapters.bundled import NoBundledWeightsError, default_weights

        try:
            w = default_weights("segnet")
            meta = w.get("meta", {})
            print("[example] no --onnx given: using the bundled semantic segmenter (segnet.onnx)")
            teacher = get_teacher("onnx", path=w["model"], kind="semantic",
                                  mean=meta.get("mean", (0.485, 0.456, 0.406)),
                                  std=meta.get("std", (0.229, 0.224, 0.225)), input_size=meta.get("input_size"),
                                  output_name="logits", class_names=meta.get("class_names"))
        except (NoBundledWeightsError, KeyError):
            path = _demo_model(out)
            print(f"[example] no --onnx given and no bundled model: exported a random-weight demo model to {path}; "
                  "pass --onnx your_model.onnx for meaningful output")
            teacher = get_teacher("onnx", path=path, kind="anomaly")

    # 2. the proposals: SAM if you have its checkpoint, else superpixels
    if args.sam_checkpoint:
        source = get_proposals("sam", model_type=args.sam_model_type, checkpoint=args.sam_checkpoint,
                               points_per_side=args.points_per_side)
    else:
        print("[example] no --sam-checkpoint given (SAM weights are not bundled and cannot be downloaded here): "
              "using SLIC superpixel proposals instead. Pass --sam-checkpoint sam_vit_b_01ec64.pth to use SAM.")
        source = get_proposals("superpixels", method="slic", n_segments=300)

    # 3. run both and fuse (CSL scheme 2, Eq. 3)
    t_out = teacher(images)
    props = source(images, t_out)
    fused = posthoc.fuse(t_out.scores, props)
    teacher_probs = t_out.scores if t_out.kind == "anomaly" else torch.softmax(torch.as_tensor(t_out.scores), 1)

    import cv2

    for b, name in enumerate(names):
        f = np.asarray(torch.as_tensor(fused[b]).cpu(), dtype=np.float32)
        t = np.asarray(torch.as_tensor(teacher_probs[b]).cpu(), dtype=np.float32)
        lab = np.asarray(torch.as_tensor(props.labels[b]).cpu())
        _atomic_save(out / f"{name}_teacher.npy", lambda tmp, a=t: np.save(tmp, a))
        _atomic_save(out / f"{name}_fused.npy", lambda tmp, a=f: np.save(tmp, a))
        _atomic_save(out / f"{name}_labels.npy", lambda tmp, a=lab: np.save(tmp, a))
        if f.shape[0] == 1:
            vis = cv2.applyColorMap((np.clip(f[0], 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
        else:
            palette = (np.random.default_rng(0).random((f.shape[0], 3)) * 255).astype(np.uint8)
            vis = palette[f.argmax(0)]
        _atomic_save(out / f"{name}_fused.png", lambda tmp, v=vis: cv2.imwrite(tmp, v) or None)
        n_regions = int(lab.max()) + 1 if lab.size else 0
        print(f"[example] {name}: {n_regions} regions from {props.meta.get('source')}, teacher {t_out.kind} "
              f"C={f.shape[0]}, mean |fused - teacher| = {np.abs(f - t).mean():.4f} -> {out / (name + '_fused.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
