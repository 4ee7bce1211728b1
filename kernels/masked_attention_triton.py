"""Masked cross-attention (Mask2Former's decoder) in Triton: a flash-style forward kernel.

Contract (``kernels.reference.masked_attention_reference``):

    q     (B, M, Q, d)           float
    k, v  (B, M, K, d)           float, same dtype as q
    mask  (B, M or 1, Q, K)      bool, True = may attend (``scaled_dot_product_attention``'s rule)
    -> out (B, M, Q, d)          dtype of q

Math, per (b, m) and query row i, with s_ij = <q_i, k_j> / sqrt(d):

    allowed_ij = mask_ij  if any_j mask_ij  else True      (Mask2Former: an empty row sees all keys)
    out_i      = sum_j softmax_j(s_ij | allowed_ij) v_j

Online softmax over key tiles (FlashAttention-2), fp32 running max ``m_i``, sum ``l_i`` and
accumulator, so the [Q, K] score matrix never exists in memory. ``m_i`` starts at a finite -1e30
(not -inf) so a tile whose keys are all masked contributes exp(-inf) = 0 instead of NaN; at the end
``l_i == 0`` exactly marks the rows whose mask was empty, and only if a tile holds such a row does
it run a second, unmasked pass (it then never reads the mask again). The mask is the dominant memory
traffic (Q*K bytes per head), read once as uint8.

Backward: not in Triton. ``masked_attention_triton`` is differentiable through the reference:
its backward recomputes ``masked_attention_reference`` under autograd (materialising [Q, K] once
per call), which is enough for training at Mask2Former's sizes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._outputs import new_output
from kernels.reference import masked_attention_reference

# Query / key counts and mask strides change with the image shape and clip length: no variant
# per "divisible by 16" pattern (see kernels.ms_deform_attn_triton.SHAPE_SCALARS).
SHAPE_SCALARS = ["Q", "K", "stride_mask_b", "stride_mask_h"]


@triton.jit(do_not_specialize=SHAPE_SCALARS)
def _masked_attention_fwd_kernel(
    # inputs
    q_ptr, k_ptr, v_ptr, mask_ptr,
    # scalars (mask strides in elements; 0 broadcasts the mask over heads or batch)
    Q, K, stride_mask_b, stride_mask_h,
    # outputs
    out_ptr,
    # compile-time constants
    M: tl.constexpr, D: tl.constexpr, SCALE: tl.constexpr,
    HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # b * M + m
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    offs_k0 = tl.arange(0, BLOCK_K)
    q_ok = offs_q < Q
    d_ok = offs_d < D
    q_tile = tl.load(q_ptr + bh * Q * D + offs_q[:, None] * D + offs_d[None, :],
                     mask=q_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = k_ptr + bh * K * D
    v_base = v_ptr + bh * K * D
    mask_base = mask_ptr + (bh // M) * stride_mask_b + (bh % M) * stride_mask_h
    mask_rows = mask_base + offs_q[:, None].to(tl.int64) * K

    m_i = tl.full([BLOCK_Q], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_Q], dtype=tl.float32)
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    for start_k in range(0, K, BLOCK_K):
        offs_k = start_k + offs_k0
        k_ok = offs_k < K
        kv_mask = k_ok[:, None] & d_ok[None, :]
        k_tile = tl.load(k_base + offs_k[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        v_tile = tl.load(v_base + offs_k[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q_tile, tl.trans(k_tile), input_precision=DOT_PRECISION) * SCALE
        allowed = k_ok[None, :]
        if HAS_MASK:
            allowed = allowed & (tl.load(mask_rows + offs_k[None, :],
                                         mask=q_ok[:, None] & k_ok[None, :], other=0) != 0)
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v_tile.dtype), v_tile,
                                            input_precision=DOT_PRECISION)
        m_i = m_new

    if HAS_MASK:
        empty = (l_i == 0.0) & q_ok
        if tl.max(empty.to(tl.int32), axis=0) > 0:
            # Mask2Former's rule: rows with an empty mask attend to every key (second pass).
            m2 = tl.full([BLOCK_Q], -1.0e30, dtype=tl.float32)
            l2 = tl.zeros([BLOCK_Q], dtype=tl.float32)
            acc2 = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
            for start_k in range(0, K, BLOCK_K):
                offs_k = start_k + offs_k0
                k_ok = offs_k < K
                kv_mask = k_ok[:, None] & d_ok[None, :]
                k_tile = tl.load(k_base + offs_k[:, None] * D + offs_d[None, :], mask=kv_mask,
                                 other=0.0)
                v_tile = tl.load(v_base + offs_k[:, None] * D + offs_d[None, :], mask=kv_mask,
                                 other=0.0)
                s = tl.dot(q_tile, tl.trans(k_tile), input_precision=DOT_PRECISION) * SCALE
                s = tl.where(k_ok[None, :], s, float("-inf"))
                m_new = tl.maximum(m2, tl.max(s, axis=1))
                p = tl.exp(s - m_new[:, None])
                alpha = tl.exp(m2 - m_new)
                l2 = l2 * alpha + tl.sum(p, axis=1)
                acc2 = acc2 * alpha[:, None] + tl.dot(p.to(v_tile.dtype), v_tile,
                                                      input_precision=DOT_PRECISION)
                m2 = m_new
            acc = tl.where(empty[:, None], acc2, acc)
            l_i = tl.where(empty, l2, l_i)

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # l_i == 0 only on rows past Q
    tl.store(out_ptr + bh * Q * D + offs_q[:, None] * D + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])


_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def block_sizes(q_len: int, head_dim: int) -> tuple[int, int, int]:
    """(BLOCK_Q, BLOCK_K, BLOCK_D): tl.dot needs every tile side >= 16."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_q = 64 if q_len > 32 else 32 if q_len > 16 else 16
    block_k = 64 if block_d <= 64 else 32
    return block_q, block_k, block_d


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs must not go through TF32 tensor cores (10-bit mantissa): parity is 1e-5.
    return "ieee" if dtype == torch.float32 else "tf32"


def _check_inputs(q, k, v, mask):
    if q.dim() != 4:
        raise ValueError(f"q: expected (B, M, Q, d), got shape {tuple(q.shape)}")
    b, m, nq, d = q.shape
    if k.dim() != 4 or k.shape[0] != b or k.shape[1] != m or k.shape[3] != d:
        raise ValueError(f"k: expected ({b}, {m}, K, {d}), got shape {tuple(k.shape)}")
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v: expected {tuple(k.shape)} like k, got {tuple(v.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name}: expected float32/float16/bfloat16, got {t.dtype}")
        if t.dtype != q.dtype or t.device != q.device:
            raise TypeError(f"{name}: expected {q.dtype} on {q.device} like q, got {t.dtype} on "
                            f"{t.device}")
    if mask is not None:
        nk = k.shape[2]
        if mask.dtype != torch.bool:
            raise TypeError(f"mask: expected bool, got {mask.dtype}")
        if mask.dim() != 4 or mask.shape[0] != b or mask.shape[1] not in (1, m) or \
                tuple(mask.shape[2:]) != (nq, nk):
            raise ValueError(f"mask: expected ({b}, {m} or 1, {nq}, {nk}), got {tuple(mask.shape)}")
        if mask.device != q.device:
            raise ValueError(f"mask: expected device {q.device}, got {mask.device}")


def _forward(q, k, v, mask):
    b, m, nq, d = q.shape
    nk = k.shape[2]
    if nk == 0 or nq == 0:  # softmax over no keys: the reference gives zeros
        return q.new_zeros(q.shape)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = new_output(q.shape, like=q)
    if mask is not None:
        mask_u8 = mask.contiguous().view(torch.uint8)
        stride_b = mask_u8.shape[1] * nq * nk
        stride_h = nq * nk if mask_u8.shape[1] == m else 0
    else:
        mask_u8, stride_b, stride_h = q, 0, 0  # never read (HAS_MASK=False)
    block_q, block_k, block_d = block_sizes(nq, d)
    grid = (triton.cdiv(nq, block_q), b * m)
    _masked_attention_fwd_kernel[grid](
        q, k, v, mask_u8, nq, nk, stride_b, stride_h, out,
        M=m, D=d, SCALE=float(d) ** -0.5, HAS_MASK=mask is not None,
        DOT_PRECISION=dot_precision(q.dtype), BLOCK_Q=block_q, BLOCK_K=block_k, BLOCK_D=block_d,
        num_warps=4)
    return out


class _MaskedAttentionFunction(torch.autograd.Function):
    """Triton forward; backward recomputes the PyTorch reference under autograd."""

    @staticmethod
    def forward(ctx, q, k, v, mask):
        ctx.save_for_backward(q, k, v, mask)
        return _forward(q, k, v, mask)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, mask = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(need)
                  for t, need in zip((q, k, v), ctx.needs_input_grad[:3], strict=True)]
        with torch.enable_grad():
            out = masked_attention_reference(*inputs, mask)
            wanted = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad_out))
        return (*(next(grads) if t.requires_grad else None for t in inputs), None)


def masked_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Masked attention with the Triton flash-style forward (differentiable via the reference).

    Args:
        q: (B, M, Q, d) float32 / float16 / bfloat16.
        k: (B, M, K, d), dtype of q.
        v: (B, M, K, d), dtype of q.
        mask: (B, M or 1, Q, K) bool, True = may attend; a row with no True attends to all keys.
            None = plain attention.

    Returns:
        (B, M, Q, d) in the dtype of q; softmax scale 1/sqrt(d), fp32 softmax and accumulation.
    """
    _check_inputs(q, k, v, mask)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _MaskedAttentionFunction.apply(q, k, v, mask)
    return _forward(q, k, v, mask)
