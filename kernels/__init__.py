"""Kernels for OMG-Seg's two heavy operations, behind dispatchers with one global setting.

``ms_deform_attn`` runs the Triton kernel on CUDA (12-24x the reference on an H200) and the plain
PyTorch reference otherwise. ``masked_attention`` runs PyTorch's fused
``scaled_dot_product_attention`` with the boolean mask on CUDA: on the H200 of 2026-12-04 it took
0.5-0.8x the time of our Triton kernel at every decoder shape and dtype (benchmarks/RESULTS.md,
``bench_kernels``: 300 queries give the kernel's one pass over the keys too few blocks), so the
kernel runs only when asked (``triton``; the AOT library ships it too). For a few queries
(:data:`FEW_QUERIES`: prompts) ``auto`` runs the reference's matrix products instead.
``set_impl("reference" | "triton" | "auto")`` chooses for the whole model; ``impl=`` overrides
per call; ``triton`` also runs on the CPU under ``TRITON_INTERPRET=1``.

The Triton modules are ``kernels.ms_deform_attn_triton`` and ``kernels.masked_attention_triton``:
a submodule named like a dispatcher (``kernels/ms_deform_attn.py``) would replace the dispatcher
function on the package the moment anything imported it.
"""

from __future__ import annotations

import os

import torch

from kernels.reference import attendable, masked_attention_reference, ms_deform_attn_reference

IMPLS = ("auto", "reference", "triton")
# At most this many queries (prompts on a cached image), ``auto`` on CUDA runs the reference's
# two matrix products: the fused SDPA kernel parallelises over query blocks and heads, so one
# query kept 8 of the H200's 132 SMs busy for 0.55 ms per layer (profile_calls, 2026-12-04), where
# the products read the keys once at full bandwidth.
FEW_QUERIES = 32
_impl = os.environ.get("OMG_KERNELS", "auto")


def set_impl(impl: str) -> None:
    """Choose what every dispatcher runs: ``auto`` (Triton on CUDA), ``reference``, ``triton``."""
    global _impl
    if impl not in IMPLS:
        raise ValueError(f"kernel impl: expected one of {IMPLS}, got {impl!r}")
    _impl = impl


def get_impl() -> str:
    return _impl


def _use_triton(tensor: torch.Tensor, impl: str | None) -> bool:
    choice = impl or _impl
    if choice not in IMPLS:
        raise ValueError(f"kernel impl: expected one of {IMPLS}, got {choice!r}")
    if choice == "auto":
        return tensor.is_cuda
    return choice == "triton"


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                   *, impl: str | None = None) -> torch.Tensor:
    """Multi-scale deformable attention; shapes as in :func:`ms_deform_attn_reference`."""
    if _use_triton(value, impl):
        from kernels.ms_deform_attn_triton import ms_deform_attn_triton

        return ms_deform_attn_triton(value, spatial_shapes, level_start_index, sampling_locations,
                                     attention_weights)
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations,
                                    attention_weights)


def masked_attention(q, k, v, mask, *, impl: str | None = None) -> torch.Tensor:
    """Masked attention; shapes as :func:`kernels.reference.masked_attention_reference`."""
    choice = impl or _impl
    if choice == "auto" and q.is_cuda:
        if q.shape[-2] <= FEW_QUERIES:
            return masked_attention_reference(q, k, v, mask)
        return masked_attention_sdpa(q, k, v, mask)
    if _use_triton(q, impl):
        from kernels.masked_attention_triton import masked_attention_triton

        return masked_attention_triton(q, k, v, mask)
    return masked_attention_reference(q, k, v, mask)


def masked_attention_sdpa(q, k, v, mask) -> torch.Tensor:
    """:func:`masked_attention_reference` through ``scaled_dot_product_attention`` (its fused
    CUDA kernels; the same mask convention, after Mask2Former's empty-row rule)."""
    allowed = None if mask is None else attendable(mask)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


__all__ = ["ms_deform_attn", "masked_attention", "masked_attention_sdpa", "set_impl", "get_impl",
           "ms_deform_attn_reference", "masked_attention_reference"]
