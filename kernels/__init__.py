"""Kernels for OMG-Seg's two heavy operations, behind dispatchers with one global setting.

``ms_deform_attn`` and ``masked_attention`` run the Triton kernel on CUDA (and on the CPU under
``TRITON_INTERPRET=1`` when asked explicitly) and the plain PyTorch reference otherwise.
``set_impl("reference" | "triton" | "auto")`` chooses for the whole model; ``impl=`` overrides
per call.

The Triton modules are ``kernels.ms_deform_attn_triton`` and ``kernels.masked_attention_triton``:
a submodule named like a dispatcher (``kernels/ms_deform_attn.py``) would replace the dispatcher
function on the package the moment anything imported it.
"""

from __future__ import annotations

import os

import torch

from kernels.reference import masked_attention_reference, ms_deform_attn_reference

IMPLS = ("auto", "reference", "triton")
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
    if _use_triton(q, impl):
        from kernels.masked_attention_triton import masked_attention_triton

        return masked_attention_triton(q, k, v, mask)
    return masked_attention_reference(q, k, v, mask)


__all__ = ["ms_deform_attn", "masked_attention", "set_impl", "get_impl",
           "ms_deform_attn_reference", "masked_attention_reference"]
