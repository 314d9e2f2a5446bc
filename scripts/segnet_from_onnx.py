"""Rebuild the torch SegNet checkpoint (build/train/segnet.pt) from the bundled segnet.onnx.

The ONNX export folds every BatchNorm into the convolution before it. This script walks
the ONNX graph's Conv nodes and the torch net's Conv2d modules in execution order, copies
each folded weight and bias into the conv, and sets the BatchNorm after it to the
identity (gamma 1, running mean 0, running variance 1 - eps, beta = the folded bias), so
the rebuilt net in eval mode computes what segnet.onnx computes (checked on val frames:
the max abs difference of the logits is printed and must stay below 1e-3).
It lets scripts/train_obsnet.py train an observer for the shipped segnet without
retraining the segnet. Usage: ``python scripts/segnet_from_onnx.py [--onnx P] [--out P]``.
"""
from __future__ import annotations

import argparse

import _train_common as C
import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from posthoc.adapters.bundled import BUNDLED_DIR


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", default=str(BUNDLED_DIR / "segnet.onnx"))
    ap.add_argument("--out", default=str(C.WORK_DIR / "segnet.pt"))
    args = ap.parse_args(argv)
    C.setup(0, 2)
    g = onnx.load(args.onnx).graph
    init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    convs = [n for n in g.node if n.op_type == "Conv"]
    model = C.SegNet().eval()
    order: list[nn.Conv2d] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.modules()
             if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, 128, 256))
    for h in hooks:
        h.remove()
    if len(order) != len(convs):
        raise SystemExit(f"{len(convs)} Conv nodes in {args.onnx}, {len(order)} convs in SegNet")
    bn_after = {}
    for a in model.modules():
        if isinstance(a, nn.Sequential):
            kids = list(a.children())
            for x, y in zip(kids, kids[1:], strict=False):
                if isinstance(x, nn.Conv2d) and isinstance(y, nn.BatchNorm2d):
                    bn_after[x] = y
    with torch.no_grad():
        for conv, node in zip(order, convs, strict=True):
            w = torch.from_numpy(init[node.input[1]].copy())
            bias = torch.from_numpy(init[node.input[2]].copy()) if len(node.input) > 2 else None
            if tuple(w.shape) != tuple(conv.weight.shape):
                raise SystemExit(f"shape mismatch at {node.name}: {tuple(w.shape)} vs {tuple(conv.weight.shape)}")
            conv.weight.copy_(w)
            bn = bn_after.get(conv)
            if bn is not None:
                bn.weight.fill_(1.0)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
                bn.bias.copy_(bias if bias is not None else torch.zeros_like(bn.bias))
            elif conv.bias is not None:
                conv.bias.copy_(bias)
            elif bias is not None and float(bias.abs().max()) > 0:
                raise SystemExit(f"{node.name} has a bias but its conv has none and no BatchNorm follows")
    import onnxruntime as ort

    sess = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
    val = C.load_frames("val")
    x = C.to_input(val["images"][:4])
    with torch.no_grad():
        lt, ft = model(x)
    lo, fo = sess.run(["logits", "features"], {"image": x.numpy()})
    d = max(float(np.abs(lt.numpy() - lo).max()), float(np.abs(ft.numpy() - fo).max()))
    C.log.info("max abs difference to %s on 4 val frames: %.2e", args.onnx, d)
    if d > 1e-3:
        raise SystemExit(f"rebuilt SegNet differs from {args.onnx} by {d:.3g}")
    C.save_state(model, args.out)
    C.log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
