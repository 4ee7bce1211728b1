"""Multi-scale deformable attention in Triton: forward and backward kernels, launcher, autograd.

The I/O contract is the one of the Deformable-DETR CUDA op and TensorRT's
``MultiscaleDeformableAttnPlugin_TRT`` (inputs in this order):

    value               (N, S, M, D)            float   S = sum_l H_l * W_l, levels row-major
    spatial_shapes      (L, 2)                  int     (H_l, W_l)
    level_start_index   (L,)                    int     offset of level l along S
    sampling_locations  (N, Lq, M, L, P, 2)     float   normalised (x, y), [0, 1] inside the map
    attention_weights   (N, Lq, M, L, P)        float
    -> out              (N, Lq, M * D)          dtype of value

Math (the grid_sample form of ``kernels.reference.ms_deform_attn_reference``):

    x = loc_x * W_l - 0.5,  y = loc_y * H_l - 0.5          (align_corners=False: centres at i + 0.5)
    x0 = floor(x), y0 = floor(y), fx = x - x0, fy = y - y0
    bilinear(V_l, x, y) = (1-fy)(1-fx) V[y0, x0] + (1-fy) fx V[y0, x0+1]
                        + fy (1-fx) V[y0+1, x0] + fy fx V[y0+1, x0+1]     (V = 0 outside the map)
    out[n, q, m, :] = sum_{l, p} A[n, q, m, l, p] * bilinear(V_l[n, :, m, :], loc[n, q, m, l, p])

Backward, with g = dL/dout[n, q, m, :] and s = bilinear(...) for one (l, p):

    dL/dA        = <g, s>
    dL/dV[corner] += A * w_corner * g                    (atomic adds into an fp32 buffer)
    dL/dloc_x    = A * W_l * <g, (1-fy)(V01 - V00) + fy (V11 - V10)>
    dL/dloc_y    = A * H_l * <g, (1-fx)(V10 - V00) + fx (V11 - V01)>

One program handles BLOCK_Q queries of one (batch n, head m): the head's D channels are the
contiguous inner axis of ``value``, so each bilinear tap is one coalesced row load. All arithmetic
is fp32 whatever the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._outputs import new_output

# The token counts change with every image shape. Triton would compile a variant per pattern of
# "divisible by 16" among them (a second-long stall the first time a photo of a new shape
# arrives); the pointer arithmetic gains nothing from it (the channel stride M * D is constexpr).
SHAPE_SCALARS = ["S", "Lq"]


@triton.jit
def _bilinear_taps(x, y, H, W, q_ok):
    """Corner indices, fractions and in-map masks of the bilinear sample at pixel coords (x, y)."""
    # Clamp to [-2, size + 1] before floor(): every tap of a clamped point stays outside the map
    # (it samples zero, as it did before clamping) and the int32 cast cannot overflow.
    x = tl.minimum(tl.maximum(x, -2.0), W.to(tl.float32) + 1.0)
    y = tl.minimum(tl.maximum(y, -2.0), H.to(tl.float32) + 1.0)
    x0f = tl.floor(x)
    y0f = tl.floor(y)
    fx = x - x0f
    fy = y - y0f
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    x1 = x0 + 1
    y1 = y0 + 1
    x0_ok = (x0 >= 0) & (x0 < W)
    x1_ok = (x1 >= 0) & (x1 < W)
    y0_ok = q_ok & (y0 >= 0) & (y0 < H)
    y1_ok = q_ok & (y1 >= 0) & (y1 < H)
    return x0, y0, x1, y1, fx, fy, x0_ok, x1_ok, y0_ok, y1_ok


@triton.jit(do_not_specialize=SHAPE_SCALARS)
def _ms_deform_attn_fwd_kernel(
    # inputs
    value_ptr, spatial_shapes_ptr, level_start_index_ptr, sampling_locations_ptr,
    attention_weights_ptr,
    # scalars
    S, Lq,
    # outputs
    out_ptr,
    # compile-time constants
    M: tl.constexpr, D: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    m = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    q_ok = offs_q < Lq
    d_ok = offs_d < D
    value_base = value_ptr + n * S * M * D + m * D
    row = (n * Lq + offs_q) * M + m  # (BLOCK_Q,) row of (n, q, m) in the [N*Lq*M, ...] views
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    for lvl in tl.static_range(L):
        H = tl.load(spatial_shapes_ptr + 2 * lvl).to(tl.int32)
        W = tl.load(spatial_shapes_ptr + 2 * lvl + 1).to(tl.int32)
        start = tl.load(level_start_index_ptr + lvl).to(tl.int32)
        for pt in tl.static_range(P):
            idx = row * (L * P) + lvl * P + pt
            loc_x = tl.load(sampling_locations_ptr + 2 * idx, mask=q_ok, other=0.0)
            loc_y = tl.load(sampling_locations_ptr + 2 * idx + 1, mask=q_ok, other=0.0)
            a = tl.load(attention_weights_ptr + idx, mask=q_ok, other=0.0).to(tl.float32)
            x0, y0, x1, y1, fx, fy, x0_ok, x1_ok, y0_ok, y1_ok = _bilinear_taps(
                loc_x.to(tl.float32) * W - 0.5, loc_y.to(tl.float32) * H - 0.5, H, W, q_ok)
            m00 = (y0_ok & x0_ok)[:, None] & d_ok[None, :]
            m01 = (y0_ok & x1_ok)[:, None] & d_ok[None, :]
            m10 = (y1_ok & x0_ok)[:, None] & d_ok[None, :]
            m11 = (y1_ok & x1_ok)[:, None] & d_ok[None, :]
            dd = offs_d[None, :]
            r00 = ((start + y0 * W + x0) * (M * D))[:, None] + dd
            r01 = ((start + y0 * W + x1) * (M * D))[:, None] + dd
            r10 = ((start + y1 * W + x0) * (M * D))[:, None] + dd
            r11 = ((start + y1 * W + x1) * (M * D))[:, None] + dd
            v00 = tl.load(value_base + r00, mask=m00, other=0.0).to(tl.float32)
            v01 = tl.load(value_base + r01, mask=m01, other=0.0).to(tl.float32)
            v10 = tl.load(value_base + r10, mask=m10, other=0.0).to(tl.float32)
            v11 = tl.load(value_base + r11, mask=m11, other=0.0).to(tl.float32)
            top = v00 + (v01 - v00) * fx[:, None]
            bottom = v10 + (v11 - v10) * fx[:, None]
            acc += a[:, None] * (top + (bottom - top) * fy[:, None])
    out_ptrs = out_ptr + (row * D)[:, None] + offs_d[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])


@triton.jit(do_not_specialize=SHAPE_SCALARS)
def _ms_deform_attn_bwd_kernel(
    # inputs
    value_ptr, spatial_shapes_ptr, level_start_index_ptr, sampling_locations_ptr,
    attention_weights_ptr, grad_out_ptr,
    # scalars
    S, Lq,
    # outputs (grad_value is an fp32 buffer, zero-initialised; the other two are fully written)
    grad_value_ptr, grad_sampling_locations_ptr, grad_attention_weights_ptr,
    # compile-time constants
    M: tl.constexpr, D: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    m = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    q_ok = offs_q < Lq
    d_ok = offs_d < D
    value_base = value_ptr + n * S * M * D + m * D
    grad_value_base = grad_value_ptr + n * S * M * D + m * D
    row = (n * Lq + offs_q) * M + m
    dd = offs_d[None, :]
    go = tl.load(grad_out_ptr + (row * D)[:, None] + dd, mask=q_ok[:, None] & d_ok[None, :],
                 other=0.0).to(tl.float32)
    for lvl in tl.static_range(L):
        H = tl.load(spatial_shapes_ptr + 2 * lvl).to(tl.int32)
        W = tl.load(spatial_shapes_ptr + 2 * lvl + 1).to(tl.int32)
        start = tl.load(level_start_index_ptr + lvl).to(tl.int32)
        for pt in tl.static_range(P):
            idx = row * (L * P) + lvl * P + pt
            loc_x = tl.load(sampling_locations_ptr + 2 * idx, mask=q_ok, other=0.0)
            loc_y = tl.load(sampling_locations_ptr + 2 * idx + 1, mask=q_ok, other=0.0)
            a = tl.load(attention_weights_ptr + idx, mask=q_ok, other=0.0).to(tl.float32)
            x0, y0, x1, y1, fx, fy, x0_ok, x1_ok, y0_ok, y1_ok = _bilinear_taps(
                loc_x.to(tl.float32) * W - 0.5, loc_y.to(tl.float32) * H - 0.5, H, W, q_ok)
            m00 = (y0_ok & x0_ok)[:, None] & d_ok[None, :]
            m01 = (y0_ok & x1_ok)[:, None] & d_ok[None, :]
            m10 = (y1_ok & x0_ok)[:, None] & d_ok[None, :]
            m11 = (y1_ok & x1_ok)[:, None] & d_ok[None, :]
            r00 = ((start + y0 * W + x0) * (M * D))[:, None] + dd
            r01 = ((start + y0 * W + x1) * (M * D))[:, None] + dd
            r10 = ((start + y1 * W + x0) * (M * D))[:, None] + dd
            r11 = ((start + y1 * W + x1) * (M * D))[:, None] + dd
            v00 = tl.load(value_base + r00, mask=m00, other=0.0).to(tl.float32)
            v01 = tl.load(value_base + r01, mask=m01, other=0.0).to(tl.float32)
            v10 = tl.load(value_base + r10, mask=m10, other=0.0).to(tl.float32)
            v11 = tl.load(value_base + r11, mask=m11, other=0.0).to(tl.float32)
            gx = fx[:, None]
            gy = fy[:, None]
            top = v00 + (v01 - v00) * gx
            bottom = v10 + (v11 - v10) * gx
            sample = top + (bottom - top) * gy
            grad_a = tl.sum(go * sample, axis=1)
            dsdx = (v01 - v00) * (1.0 - gy) + (v11 - v10) * gy
            dsdy = bottom - top
            grad_x = a * W.to(tl.float32) * tl.sum(go * dsdx, axis=1)
            grad_y = a * H.to(tl.float32) * tl.sum(go * dsdy, axis=1)
            tl.store(grad_attention_weights_ptr + idx,
                     grad_a.to(grad_attention_weights_ptr.dtype.element_ty), mask=q_ok)
            tl.store(grad_sampling_locations_ptr + 2 * idx,
                     grad_x.to(grad_sampling_locations_ptr.dtype.element_ty), mask=q_ok)
            tl.store(grad_sampling_locations_ptr + 2 * idx + 1,
                     grad_y.to(grad_sampling_locations_ptr.dtype.element_ty), mask=q_ok)
            ga = go * a[:, None]
            tl.atomic_add(grad_value_base + r00, ga * ((1.0 - gx) * (1.0 - gy)), mask=m00)
            tl.atomic_add(grad_value_base + r01, ga * (gx * (1.0 - gy)), mask=m01)
            tl.atomic_add(grad_value_base + r10, ga * ((1.0 - gx) * gy), mask=m10)
            tl.atomic_add(grad_value_base + r11, ga * (gx * gy), mask=m11)


_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def block_sizes(head_dim: int) -> tuple[int, int]:
    """(BLOCK_Q, BLOCK_D) for a head width: the whole head in one tile, ~2k elements per program."""
    block_d = triton.next_power_of_2(head_dim)
    block_q = max(16, min(128, 2048 // block_d))
    return block_q, block_d


def _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    if value.dim() != 4:
        raise ValueError(f"value: expected (N, S, M, D), got shape {tuple(value.shape)}")
    n, s, m, d = value.shape
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError("sampling_locations: expected (N, Lq, M, L, P, 2), got shape "
                         f"{tuple(sampling_locations.shape)}")
    _, lq, _, levels, points, _ = sampling_locations.shape
    if tuple(sampling_locations.shape[:3]) != (n, lq, m):
        raise ValueError(f"sampling_locations: expected leading dims (N, Lq, M) = ({n}, {lq}, {m}) "
                         f"matching value, got {tuple(sampling_locations.shape)}")
    if tuple(attention_weights.shape) != (n, lq, m, levels, points):
        raise ValueError(f"attention_weights: expected {(n, lq, m, levels, points)}, "
                         f"got {tuple(attention_weights.shape)}")
    if tuple(spatial_shapes.shape) != (levels, 2):
        raise ValueError(f"spatial_shapes: expected ({levels}, 2), "
                         f"got {tuple(spatial_shapes.shape)}")
    if tuple(level_start_index.shape) != (levels,):
        raise ValueError(f"level_start_index: expected ({levels},), "
                         f"got {tuple(level_start_index.shape)}")
    for name, t in (("value", value), ("sampling_locations", sampling_locations),
                    ("attention_weights", attention_weights)):
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name}: expected float32/float16/bfloat16, got {t.dtype}")
        if t.device != value.device:
            raise ValueError(f"{name}: expected device {value.device}, got {t.device}")
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        if t.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name}: expected int32 or int64, got {t.dtype}")
    return n, s, m, d, lq, levels, points


def _launch_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    n, s, m, d, lq, levels, points = _check_inputs(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    dev = value.device
    shapes = spatial_shapes.to(device=dev, dtype=torch.int32).contiguous()
    starts = level_start_index.to(device=dev, dtype=torch.int32).contiguous()
    block_q, block_d = block_sizes(d)
    grid = (triton.cdiv(lq, block_q), m, n)
    meta = dict(M=m, D=d, L=levels, P=points, BLOCK_Q=block_q, BLOCK_D=block_d, num_warps=4)
    return (value.contiguous(), shapes, starts, sampling_locations.contiguous(),
            attention_weights.contiguous(), s, lq, grid, meta)


def _forward(value, shapes, starts, locs, weights, s, lq, grid, meta):
    n, _, m, d = value.shape
    if lq == 0:
        return value.new_empty((n, 0, m * d))
    out = new_output((n, lq, m * d), like=value)
    _ms_deform_attn_fwd_kernel[grid](value, shapes, starts, locs, weights, s, lq, out, **meta)
    return out


class _MSDeformAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, shapes, starts, locs, weights, s, lq, grid, meta):
        ctx.save_for_backward(value, shapes, starts, locs, weights)
        ctx.launch = (s, lq, grid, meta)
        return _forward(value, shapes, starts, locs, weights, s, lq, grid, meta)

    @staticmethod
    def backward(ctx, grad_out):
        value, shapes, starts, locs, weights = ctx.saved_tensors
        s, lq, grid, meta = ctx.launch
        grad_value = torch.zeros(value.shape, device=value.device, dtype=torch.float32)
        grad_locs = new_output(locs.shape, like=locs)
        grad_weights = new_output(weights.shape, like=weights)
        if lq > 0:
            _ms_deform_attn_bwd_kernel[grid](
                value, shapes, starts, locs, weights, grad_out.contiguous(), s, lq,
                grad_value, grad_locs, grad_weights, **meta)
        return (grad_value.to(value.dtype), None, None, grad_locs, grad_weights,
                None, None, None, None)


def ms_deform_attn_triton(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention with the Triton kernels (differentiable).

    Args:
        value: (N, S, M, D) float32 / float16 / bfloat16.
        spatial_shapes: (L, 2) int32 or int64, (H_l, W_l).
        level_start_index: (L,) int32 or int64.
        sampling_locations: (N, Lq, M, L, P, 2) float, normalised (x, y).
        attention_weights: (N, Lq, M, L, P) float.

    Returns:
        (N, Lq, M * D) in the dtype of ``value``; accumulation is fp32. Gradients flow to
        ``value``, ``sampling_locations`` and ``attention_weights``.
    """
    args = _launch_args(value, spatial_shapes, level_start_index, sampling_locations,
                        attention_weights)
    if torch.is_grad_enabled() and (value.requires_grad or sampling_locations.requires_grad
                                    or attention_weights.requires_grad):
        return _MSDeformAttnFunction.apply(*args)
    return _forward(*args)
