import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import posthoc
from posthoc import DTypeError, NonFiniteError, ShapeError, ValueRangeError
from tests.reference import ops as ref

HYP = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def fields(draw):
    B = draw(st.integers(1, 2))
    C = draw(st.integers(1, 3))
    H = draw(st.integers(1, 6))
    W = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    s = (rng.normal(size=(B, C, H, W)) * 10).astype(np.float32)
    o = (rng.normal(size=(B, 2, H, W)) * 3).astype(np.float32)
    f = rng.random((B, 1, H, W)).astype(np.float32)
    return s, o, f


@HYP
@given(fields())
def test_zero_offset_is_bit_exact_identity(p):
    s, _, f = p
    out = posthoc.offset_resample(s, np.zeros((s.shape[0], 2) + s.shape[2:], np.float32), f)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, s)  # bit for bit, whatever the confidence


@HYP
@given(fields())
def test_matches_reference(p):
    s, o, f = p
    np.testing.assert_allclose(posthoc.offset_resample(s, o, f), ref.offset_resample(s, o, f), rtol=1e-4, atol=1e-4)


def test_integer_shift_and_border(rng):
    s = np.arange(20, dtype=np.float32).reshape(1, 1, 4, 5)
    o = np.zeros((1, 2, 4, 5), np.float32)
    o[:, 0] = 1.0  # read from the right neighbour
    one = np.ones((1, 1, 4, 5), np.float32)
    out = posthoc.offset_resample(s, o, one)
    expect = np.concatenate([s[..., 1:], s[..., -1:]], axis=-1)  # border padding repeats the last column
    np.testing.assert_array_equal(out, expect)
    o2 = np.zeros_like(o)
    o2[:, 1] = -10.0  # far above the image: the first row
    np.testing.assert_array_equal(posthoc.offset_resample(s, o2, one), np.broadcast_to(s[:, :, :1], s.shape))
    half = posthoc.offset_resample(s, o * 0.5, one)
    np.testing.assert_allclose(half[0, 0, :, :4], s[0, 0, :, :4] + 0.5)
    # confidence blends: F = 0.25 -> 0.75 * S + 0.25 * S_s
    np.testing.assert_allclose(posthoc.offset_resample(s, o, one * 0.25), 0.75 * s + 0.25 * expect, rtol=1e-6)


def test_normalized_units(rng):
    s = rng.normal(size=(1, 2, 5, 9)).astype(np.float32)
    o = rng.normal(size=(1, 2, 5, 9)).astype(np.float32) * 0.3
    f = rng.random((1, 1, 5, 9)).astype(np.float32)
    pix = o.copy()
    pix[:, 0] *= (9 - 1) / 2
    pix[:, 1] *= (5 - 1) / 2
    np.testing.assert_allclose(posthoc.offset_resample(s, o, f, units="normalized"),
                               posthoc.offset_resample(s, pix, f), rtol=1e-5, atol=1e-6)
    # same convention as grid_sample(align_corners=True, padding_mode="border") away from clamping
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 5), torch.linspace(-1, 1, 9), indexing="ij")
    grid = torch.stack([xs + torch.from_numpy(o[0, 0]), ys + torch.from_numpy(o[0, 1])], -1)[None]
    gs = torch.nn.functional.grid_sample(torch.from_numpy(s), grid, align_corners=True, padding_mode="border")
    full = posthoc.offset_resample(s, o, np.ones_like(f), units="normalized")
    np.testing.assert_allclose(full, gs.numpy(), rtol=1e-4, atol=1e-4)


def test_kinds_shapes_unchanged(rng):
    s = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    o = rng.normal(size=(2, 2, 4, 5)).astype(np.float32)
    f = rng.random((2, 1, 4, 5)).astype(np.float32)
    s0, o0, f0 = s.copy(), o.copy(), f.copy()
    out = posthoc.offset_resample(s, o, f)
    for a, b in ((s, s0), (o, o0), (f, f0)):
        np.testing.assert_array_equal(a, b)
    t = posthoc.offset_resample(torch.from_numpy(s).half(), torch.from_numpy(o), torch.from_numpy(f))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(posthoc.offset_resample(s[0], o[0], f[0]), out[0], rtol=1e-6)
    np.testing.assert_allclose(posthoc.offset_resample(s[0, 0], o[0], f[0, 0]), out[0, 0], rtol=1e-6)
    assert posthoc.offset_resample(np.zeros((0, 1, 3, 3), np.float32), np.zeros((0, 2, 3, 3), np.float32),
                                   np.zeros((0, 1, 3, 3), np.float32)).shape == (0, 1, 3, 3)
    one = np.array([[[[7.0]]]], np.float32)
    np.testing.assert_array_equal(posthoc.offset_resample(one, np.full((1, 2, 1, 1), 3.0, np.float32),
                                                          np.ones((1, 1, 1, 1), np.float32)), one)


def test_resample_errors(rng):
    s = rng.normal(size=(2, 1, 4, 5)).astype(np.float32)
    o = np.zeros((2, 2, 4, 5), np.float32)
    f = np.ones((2, 1, 4, 5), np.float32)
    with pytest.raises(ValueRangeError, match=r"confidence must lie in \[0,1\]"):
        posthoc.offset_resample(s, o, f * 2)
    with pytest.raises(ShapeError, match=r"offsets must be \(B,2,H,W\)=\(2,2,4,5\) \(channel 0 = x, 1 = y\)"):
        posthoc.offset_resample(s, o[:, :1], f)
    with pytest.raises(ShapeError, match=r"mismatch in the spatial axes"):
        posthoc.offset_resample(s, o[..., :4], f)
    with pytest.raises(ShapeError, match=r"confidence must be \(B,1,H,W\)"):
        posthoc.offset_resample(s, o, f[:, 0])
    bad = o.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="offsets must be finite"):
        posthoc.offset_resample(s, bad, f)
    with pytest.raises(ValueRangeError, match="units must be 'pixels' or 'normalized'"):
        posthoc.offset_resample(s, o, f, units="meters")
    with pytest.raises(DTypeError, match="offsets must be a floating-point tensor"):
        posthoc.offset_resample(s, o.astype(np.int64), f)


# ----------------------------------------------------------------------------- offsets from proposals


def test_offsets_point_inward_and_stay_in_region():
    lab = np.zeros((1, 20, 24), np.int64)
    lab[:, :, 12:] = 1
    lab[:, 6:14, 3:9] = 2
    lab[:, 0, 0] = -1
    o, c = posthoc.offsets_from_proposals(lab, max_offset=4.0, boundary_width=2.0)
    assert o.shape == (1, 2, 20, 24) and c.shape == (1, 1, 20, 24) and o.dtype == np.float32
    # the vertical boundary between 0 and 1 at x = 11|12: both sides point away from it
    assert (o[0, 0, 16:, 11] < -1).all() and (o[0, 0, 16:, 12] > 1).all()
    assert (np.abs(o[0, 1, 16:, 11:13]) < 0.3).all()  # mostly horizontal (the box above bends it a little)
    # interior pixels (far from boundaries) stay put; length never exceeds max_offset
    assert np.abs(o[0, :, 18, 20]).max() == 0
    assert np.sqrt((o**2).sum(1)).max() <= 4.0 + 1e-5
    # every target lies in the pixel's own region
    yy, xx = np.mgrid[0:20, 0:24]
    tx = np.clip(np.rint(xx + o[0, 0]), 0, 23).astype(int)
    ty = np.clip(np.rint(yy + o[0, 1]), 0, 19).astype(int)
    assigned = lab[0] >= 0
    assert (lab[0][ty, tx] == lab[0])[assigned].all()
    # confidence: 1 on boundaries, decays inside, 0 where unassigned, within [0,1]
    assert c[0, 0, 10, 11] == pytest.approx(1.0) and c[0, 0, 10, 20] < 0.05
    assert c[0, 0, 0, 0] == 0 and np.abs(o[0, :, 0, 0]).max() == 0
    assert 0 <= c.min() and c.max() <= 1


def test_offsets_teacher_and_kinds(rng):
    lab = np.zeros((2, 10, 12), np.int64)
    lab[:, :, 6:] = 1
    teacher = np.full((2, 1, 10, 12), 0.2, np.float32)
    teacher[:, :, :, 5] = 0.9  # disagrees with its region at the boundary column
    o0, c0 = posthoc.offsets_from_proposals(lab)
    o1, c1 = posthoc.offsets_from_proposals(lab, teacher=teacher, teacher_weight=1.0)
    np.testing.assert_array_equal(o0, o1)
    assert (c1[:, 0, :, 6] < 1e-6).all() and (c1[:, 0, :, 5] > 0.5).all()
    _o2, c2 = posthoc.offsets_from_proposals(lab, teacher=teacher, teacher_weight=0.0)
    np.testing.assert_allclose(c2, c0)
    ot, _ct = posthoc.offsets_from_proposals(torch.from_numpy(lab))
    assert isinstance(ot, torch.Tensor) and torch.equal(ot, torch.from_numpy(o0))
    o_single, c_single = posthoc.offsets_from_proposals(lab[0])
    assert o_single.shape == (2, 10, 12) and c_single.shape == (1, 10, 12)
    # edges: one region (no boundary), all -1, 1x1, B=0
    o, c = posthoc.offsets_from_proposals(np.zeros((1, 5, 5), np.int64))
    assert np.abs(o).max() == 0 and c.max() == 0
    o, c = posthoc.offsets_from_proposals(np.full((1, 5, 5), -1))
    assert np.abs(o).max() == 0 and c.max() == 0
    assert posthoc.offsets_from_proposals(np.zeros((1, 1, 1), np.int64))[0].shape == (1, 2, 1, 1)
    assert posthoc.offsets_from_proposals(np.zeros((0, 3, 3), np.int64))[1].shape == (0, 1, 3, 3)
    # the zero-offset identity carries through the composition for pixels far from boundaries
    s = rng.random((2, 1, 10, 12)).astype(np.float32)
    out = posthoc.offset_resample(s, o0, c0)
    np.testing.assert_array_equal(out[..., 0], s[..., 0])


def test_offsets_from_proposals_errors():
    lab = np.zeros((1, 4, 4), np.int64)
    with pytest.raises(DTypeError, match="labels must be an integer tensor"):
        posthoc.offsets_from_proposals(lab.astype(np.float32))
    with pytest.raises(ValueRangeError, match="max_offset must be a finite number >= 0"):
        posthoc.offsets_from_proposals(lab, max_offset=-1)
    with pytest.raises(ValueRangeError, match="boundary_width must be a positive number"):
        posthoc.offsets_from_proposals(lab, boundary_width=0)
    with pytest.raises(ShapeError, match=r"teacher must be \(B,C,H,W\) matching labels"):
        posthoc.offsets_from_proposals(lab, teacher=np.zeros((1, 1, 3, 4), np.float32))
    with pytest.raises(ValueRangeError, match=r"teacher must lie in \[0,1\]"):
        posthoc.offsets_from_proposals(lab, teacher=np.full((1, 1, 4, 4), 2.0, np.float32))


@pytest.mark.gpu
def test_offset_resample_cpu_equals_cuda(rng):
    s = torch.from_numpy(rng.normal(size=(2, 3, 17, 19)).astype(np.float32))
    o = torch.from_numpy(rng.normal(size=(2, 2, 17, 19)).astype(np.float32) * 3)
    f = torch.from_numpy(rng.random((2, 1, 17, 19)).astype(np.float32))
    g = posthoc.offset_resample(s.cuda(), o.cuda(), f.cuda())
    assert g.device.type == "cuda"
    torch.testing.assert_close(g.cpu(), posthoc.offset_resample(s, o, f), rtol=1e-5, atol=1e-5)
    z = torch.zeros_like(o)
    assert torch.equal(posthoc.offset_resample(s.cuda(), z.cuda(), f.cuda()).cpu(), s)


def test_offsets_from_proposals_deterministic_across_buffers(rng):
    lab = rng.integers(-1, 6, size=(2, 17, 23))
    o1, c1 = posthoc.offsets_from_proposals(lab)
    for other in (lab.copy(), np.ascontiguousarray(np.pad(lab, ((0, 0), (0, 0), (1, 0)))[:, :, 1:]),
                  lab.astype(np.int32)):
        o2, c2 = posthoc.offsets_from_proposals(other)
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(c1, c2)


def test_probabilities_stay_in_unit_interval(rng):
    s = rng.random((2, 1, 31, 37)).astype(np.float32)
    s[s > 0.7] = 1.0  # many exact ones, where rounding could overshoot
    s[s < 0.2] = 0.0
    o = (rng.normal(size=(2, 2, 31, 37)) * 5).astype(np.float32)
    f = rng.random((2, 1, 31, 37)).astype(np.float32)
    out = posthoc.offset_resample(s, o, f)
    assert out.min() >= 0.0 and out.max() <= 1.0
