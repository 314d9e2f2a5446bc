"""What a user's type checker sees: checked by mypy in tests/typing/test_typing.py, never imported by pytest.

Every ``assert_type`` is a claim about the public signatures: numpy in gives numpy out, torch in gives torch out.
"""

from __future__ import annotations

import numpy as np
import torch
from typing_extensions import assert_type

import posthoc

x_np = np.zeros((1, 3, 4, 4), np.float32)
x_t = torch.zeros(1, 3, 4, 4)
lab_np = np.zeros((1, 4, 4), np.int64)
lab_t = torch.zeros(1, 4, 4, dtype=torch.int64)

assert_type(posthoc.fuse(x_np, lab_np), np.ndarray)
assert_type(posthoc.fuse(x_t, lab_t), torch.Tensor)
assert_type(posthoc.region_means(x_np, lab_np), np.ndarray)
assert_type(posthoc.region_means(x_t, lab_t, return_counts=True), tuple[torch.Tensor, torch.Tensor])
assert_type(posthoc.region_class_logits(x_t, lab_t), torch.Tensor)
assert_type(posthoc.soft_assign(x_np, np.ones((1, 3), np.float32)), np.ndarray)
assert_type(posthoc.hard_assign(x_t, torch.ones(1, 3)), torch.Tensor)
assert_type(posthoc.assign_labels(x_t, torch.ones(1, 3)), torch.Tensor)
assert_type(posthoc.split_components(lab_np), np.ndarray)
assert_type(posthoc.split_components(lab_t), torch.Tensor)
assert_type(posthoc.refine(x_np, x_np, np.zeros((1, 3, 20), np.float32)), np.ndarray)
assert_type(posthoc.refine(x_t, x_t, torch.zeros(1, 3, 20), return_mask=True), tuple[torch.Tensor, torch.Tensor])
assert_type(posthoc.refinement_mask(x_t, torch.zeros(1, 3, 20)), torch.Tensor)
assert_type(posthoc.mine_unknown_instances(x_np, np.zeros((1, 3, 20), np.float32), [0], [1]), np.ndarray)
assert_type(posthoc.offset_resample(x_t, torch.zeros(1, 2, 4, 4), torch.ones(1, 1, 4, 4)), torch.Tensor)
assert_type(posthoc.offsets_from_proposals(lab_np), tuple[np.ndarray, np.ndarray])
assert_type(posthoc.meanshift_sphere(x_t), torch.Tensor)
assert_type(posthoc.meanshift_sphere(x_np, return_modes=True), tuple[np.ndarray, list[np.ndarray]])
assert_type(posthoc.meanshift_multires([x_t, x_t]), torch.Tensor)
