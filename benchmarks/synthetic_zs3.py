"""The zero-shot split of the synthetic world and its class descriptors.

The bundled zero-shot teacher (``zegformer`` on the synthetic world, trained by
``scripts/train_zs3.py``) scores every class by the cosine similarity of a pixel
embedding with a fixed *class descriptor*. Real ZegFormer uses CLIP text embeddings of the
class names; nothing like CLIP can be trained or shipped here, so the descriptors are
**hand-written attribute vectors** standing in for them: colour, texture, where the class
typically is (ground, vertical, above the horizon), thin structures, thing or stuff,
man-made or natural, typical size. Each value is read off the generator's own drawing
code (:mod:`posthoc.bench.synthetic_scene`: base colours, texture amplitudes, placement),
so a class never seen in training can still be scored: its descriptor is a combination
of attributes that the seen classes taught the network to see. The real ZegFormer
adapter (``--teacher zegformer --weights export.onnx``) and the CLIP region classifier
remain the path for real weights.

Unseen classes: :data:`UNSEEN` (three of the thirteen); training ignores their pixels,
as ZegFormer's protocol does (the images contain them, their labels are void).
"""
from __future__ import annotations

import numpy as np

from .synthetic_scene import CLASS_NAMES

__all__ = ["ATTRIBUTES", "DESCRIPTORS", "SEEN", "UNSEEN", "descriptor_matrix"]

#: the attribute axes of :data:`DESCRIPTORS`, in order
ATTRIBUTES: tuple[str, ...] = (
    "red", "green", "blue",            # mean colour of the class's palette, 0..1
    "greenness",                       # G - (R+B)/2 of the palette, rescaled
    "saturation",                      # how colourful (signs, car paint vs grey)
    "coarse texture", "fine texture",  # low-/high-frequency texture amplitude of the shading
    "above horizon",                   # 0 = on the ground, 1 = in the upper image
    "ground plane",                    # flat horizontal surface
    "vertical",                        # standing structure
    "thin",                            # poles, fence posts
    "thing",                           # countable object
    "man-made",
    "large",                           # typical area
    "on a pole",                       # mounted high on a pole
)

#: class name -> attribute values (same order as :data:`ATTRIBUTES`)
DESCRIPTORS: dict[str, tuple[float, ...]] = {
    #                 R     G     B    gr   sat   lf   hf  abv  grd  vrt thin thg  man  lrg pole
    "road":          (.39, .39, .41, .0, .05, .15, .08, .0, 1., .0, .0, .0, 1., 1., .0),
    "sidewalk":      (.65, .61, .59, .0, .07, .12, .06, .0, 1., .0, .0, .0, 1., .6, .0),
    "building":      (.53, .47, .43, .0, .15, .12, .07, 1., .0, 1., .0, .0, 1., 1., .0),
    "wall":          (.59, .59, .55, .0, .06, .10, .05, .3, .0, 1., .0, .0, 1., .4, .0),
    "fence":         (.43, .41, .37, .0, .10, .10, .05, .3, .0, 1., 1., .0, 1., .2, .0),
    "pole":          (.35, .35, .37, .0, .05, .05, .03, .8, .0, 1., 1., .0, 1., .05, .0),
    "traffic light": (.14, .14, .15, .0, .30, .03, .02, 1., .0, 1., .0, .0, 1., .03, 1.),
    "traffic sign":  (.69, .55, .48, .0, .80, .03, .02, 1., .0, 1., .0, .0, 1., .03, 1.),
    "vegetation":    (.23, .38, .18, .8, .45, .32, .17, .8, .0, 1., .0, .0, .0, .8, .0),
    "terrain":       (.47, .55, .27, .6, .50, .25, .10, .0, 1., .0, .0, .0, .0, .7, .0),
    "sky":           (.65, .67, .71, .0, .20, .25, .01, 1., .0, .0, .0, .0, .0, 1., .0),
    "person":        (.47, .39, .39, .0, .40, .05, .03, .5, .0, 1., .0, 1., .0, .1, .0),
    "car":           (.46, .38, .36, .0, .50, .04, .02, .2, .0, 1., .0, 1., 1., .3, .0),
}  # fmt: skip

#: the classes held out of training (ZegFormer-style zero-shot split of the synthetic world)
UNSEEN: tuple[str, ...] = ("wall", "traffic sign", "terrain")
SEEN: tuple[str, ...] = tuple(n for n in CLASS_NAMES if n not in UNSEEN)


def descriptor_matrix(names=CLASS_NAMES) -> np.ndarray:
    """(C, A) float32 descriptors of ``names``: each attribute centred over the 13 classes and
    scaled to unit spread, then every row L2-normalized (so the dot product with a unit
    embedding is a cosine similarity)."""
    full = np.asarray([DESCRIPTORS[n] for n in CLASS_NAMES], np.float64)
    z = (full - full.mean(0)) / np.maximum(full.std(0), 1e-6)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    idx = [CLASS_NAMES.index(n) for n in names]
    return z[idx].astype(np.float32)
