"""Parity of the Triton multi-scale deformable attention with the grid_sample reference.

Fresh random inputs every run (no fixed seed), a grid of shapes with the odd cases (1 query, prime
and 1x1 levels, channels that are not a power of two, points outside the map), outputs poisoned
with NaN, gradients against the reference's autograd. fp16/bf16 and OMG-Seg's full-size shapes
need a GPU.
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.ms_deform_attn_triton import ms_deform_attn_triton
from kernels.reference import ms_deform_attn_reference
from tests.kernels.kernel_testing import DEVICE, assert_parity

# (name, batch N, queries Lq, heads M, head dim D, levels (H, W), points P)
SHAPES = [
    ("omg_seg_miniature", 2, 84, 8, 32, [(8, 8), (4, 4), (2, 2)], 4),
    ("prime_maps_1x1_level_odd_d", 2, 11, 3, 20, [(7, 5), (3, 2), (1, 1)], 3),
    ("one_query_one_level", 1, 1, 1, 7, [(13, 11)], 2),
    ("frames_wide_head", 3, 29, 2, 48, [(6, 9), (3, 5)], 1),
]
OMG_SEG_LEVELS = [(128, 128), (64, 64), (32, 32)]  # strides 8/16/32 of a 1024x1024 image


def make_inputs(n, lq, m, d, levels, p, *, dtype=torch.float32, device=DEVICE, spread=1.4):
    """Random MSDA inputs; locations in [-0.2, 1.2] by default, so some fall outside the map."""
    shapes = torch.tensor(levels, dtype=torch.int64, device=device)
    areas = shapes.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    s = int(areas.sum())
    value = torch.randn(n, s, m, d, device=device, dtype=dtype)
    locs = torch.rand(n, lq, m, len(levels), p, 2, device=device) * spread - (spread - 1) / 2
    weights = torch.rand(n, lq, m, len(levels), p, device=device)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, shapes, starts, locs.to(dtype), weights.to(dtype)


@pytest.mark.parametrize("case", SHAPES, ids=[c[0] for c in SHAPES])
def test_forward_matches_reference(case, poisoned):
    _, n, lq, m, d, levels, p = case
    inputs = make_inputs(n, lq, m, d, levels, p)
    out = ms_deform_attn_triton(*inputs)
    assert out.shape == (n, lq, m * d)
    assert_parity(out, ms_deform_attn_reference(*inputs))


def test_borders_and_outside_points_match_grid_sample(poisoned):
    # Exact borders (0, 1), pixel centres, half-pixel edges and far-away points, on every level:
    # zero padding and align_corners=False decide these values.
    n, lq, m, d, levels, p = 1, 16, 2, 8, [(5, 3), (1, 1), (2, 7)], 5
    value, shapes, starts, _, weights = make_inputs(n, lq, m, d, levels, p)
    special = torch.tensor([0.0, 1.0, 0.5, -0.5, 1.5, -3.0, 7.0, 0.1, 0.9, 1 / 6, 5 / 6, 0.3,
                            1e-7, 1 - 1e-7, -0.1, 1.1], device=DEVICE)
    idx = torch.randint(0, special.numel(), (n, lq, m, len(levels), p, 2), device=DEVICE)
    locs = special[idx]
    inputs = (value, shapes, starts, locs, weights)
    assert_parity(ms_deform_attn_triton(*inputs), ms_deform_attn_reference(*inputs))


def test_points_far_outside_sample_zero(poisoned):
    value, shapes, starts, locs, weights = make_inputs(2, 5, 2, 4, [(4, 4), (2, 3)], 2)
    locs = torch.full_like(locs, -2.0)
    out = ms_deform_attn_triton(value, shapes, starts, locs, weights)
    assert torch.equal(out, torch.zeros_like(out)), "a point outside every map must contribute 0"


def test_int32_shape_tensors_as_in_tensorrt(poisoned):
    inputs = list(make_inputs(1, 9, 2, 16, [(5, 6), (3, 3)], 2))
    ref = ms_deform_attn_reference(*inputs)
    inputs[1], inputs[2] = inputs[1].int(), inputs[2].int()
    assert_parity(ms_deform_attn_triton(*inputs), ref)


@pytest.mark.parametrize("case", SHAPES, ids=[c[0] for c in SHAPES])
def test_gradients_match_reference_autograd(case, poisoned):
    _, n, lq, m, d, levels, p = case
    value, shapes, starts, locs, weights = make_inputs(n, lq, m, d, levels, p)
    # Random points almost surely miss integer pixel coordinates, where the bilinear weight has a
    # kink and either one-sided derivative would be a valid answer.
    grad_out = torch.randn(n, lq, m * d, device=DEVICE)
    leaves = [t.clone().requires_grad_() for t in (value, locs, weights)]
    grads = {}
    for impl, fn in (("triton", ms_deform_attn_triton), ("reference", ms_deform_attn_reference)):
        ins = [t.detach().clone().requires_grad_() for t in leaves]
        out = fn(ins[0], shapes, starts, ins[1], ins[2])
        grads[impl] = torch.autograd.grad(out, ins, grad_out)
    for name, got, want in zip(("value", "sampling_locations", "attention_weights"),
                               grads["triton"], grads["reference"], strict=True):
        assert got.dtype == want.dtype
        assert_parity(got, want, what=f"grad {name}")


def test_dispatcher_runs_triton_when_asked():
    inputs = make_inputs(1, 7, 2, 8, [(3, 4)], 2)
    out = kernels.ms_deform_attn(*inputs, impl="triton")
    assert_parity(out, ms_deform_attn_reference(*inputs))


def test_bad_shapes_raise_with_the_argument_name():
    value, shapes, starts, locs, weights = make_inputs(1, 3, 2, 8, [(3, 4)], 2)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn_triton(value, shapes, starts, locs, weights[..., :1])
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn_triton(value, shapes.repeat(2, 1), starts, locs, weights)


# ---------------------------------------------------------------- GPU only (fp16 / bf16 / sizes)

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 4])
def test_omg_seg_shape_matches_reference_gpu(dtype, batch, poisoned):
    s = sum(h * w for h, w in OMG_SEG_LEVELS)
    inputs = make_inputs(batch, s, 8, 32, OMG_SEG_LEVELS, 4, dtype=dtype, spread=1.0)
    assert_parity(ms_deform_attn_triton(*inputs), ms_deform_attn_reference(*inputs), dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", SHAPES, ids=[c[0] for c in SHAPES])
def test_odd_shapes_half_precision_gpu(case, dtype, poisoned):
    _, n, lq, m, d, levels, p = case
    inputs = make_inputs(n, lq, m, d, levels, p, dtype=dtype)
    assert_parity(ms_deform_attn_triton(*inputs), ms_deform_attn_reference(*inputs), dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_omg_seg_gradients_gpu(dtype, poisoned):
    levels = [(64, 64), (32, 32), (16, 16)]  # 512x512 image: keeps the reference's memory small
    s = sum(h * w for h, w in levels)
    value, shapes, starts, locs, weights = make_inputs(2, s, 8, 32, levels, 4, dtype=dtype,
                                                       spread=1.0)
    grad_out = torch.randn(2, s, 256, device=DEVICE, dtype=dtype)
    grads = []
    for fn in (ms_deform_attn_triton, ms_deform_attn_reference):
        ins = [t.detach().clone().requires_grad_() for t in (value, locs, weights)]
        grads.append(torch.autograd.grad(fn(ins[0], shapes, starts, ins[1], ins[2]), ins, grad_out))
    # Summed over many (query, point) contributions: fp16 grads get a 4x looser bound.
    scale = 1.0 if dtype == torch.float32 else 4.0
    for name, got, want in zip(("value", "sampling_locations", "attention_weights"), *grads,
                               strict=True):
        assert_parity(got, want, dtype=dtype, what=f"grad {name}", scale=scale)


def test_importing_the_triton_module_keeps_the_dispatcher_callable():
    import kernels.ms_deform_attn_triton  # noqa: F401

    assert callable(kernels.ms_deform_attn) and callable(kernels.masked_attention)
