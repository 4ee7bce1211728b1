"""Parity of the Triton masked attention with the PyTorch reference (Mask2Former's rule).

Fresh random inputs and masks every run, odd sizes (1 query, 1 key, head dims that are not a power
of two, K not a multiple of the key tile), masks shared by heads or per head, fully masked rows,
outputs poisoned with NaN. The backward goes through the reference (see the module docstring).
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.masked_attention_triton import masked_attention_triton
from kernels.reference import masked_attention_reference
from tests.kernels.kernel_testing import DEVICE, assert_parity

# (name, B, M, Q, K, d, heads in the mask)
SHAPES = [
    ("decoder_miniature", 2, 8, 10, 64, 32, 1),
    ("odd_sizes_mask_per_head", 1, 3, 37, 101, 20, 3),
    ("one_query_one_key", 1, 1, 1, 1, 16, 1),
    ("wide_head_many_keys", 2, 2, 19, 150, 48, 2),
]


def make_inputs(b, m, nq, nk, d, mask_heads, *, dtype=torch.float32, keep=0.3, empty_rows=2):
    q = torch.randn(b, m, nq, d, device=DEVICE, dtype=dtype)
    k = torch.randn(b, m, nk, d, device=DEVICE, dtype=dtype)
    v = torch.randn(b, m, nk, d, device=DEVICE, dtype=dtype)
    mask = torch.rand(b, mask_heads, nq, nk, device=DEVICE) < keep
    rows = torch.randperm(nq, device=DEVICE)[:empty_rows]
    mask[:, :, rows] = False  # Mask2Former: these rows must attend to every key
    return q, k, v, mask


@pytest.mark.parametrize("case", SHAPES, ids=[c[0] for c in SHAPES])
def test_forward_matches_reference(case, poisoned):
    q, k, v, mask = make_inputs(*case[1:])
    assert_parity(masked_attention_triton(q, k, v, mask), masked_attention_reference(q, k, v, mask))


def test_without_mask_matches_reference(poisoned):
    q, k, v, _ = make_inputs(1, 2, 13, 70, 24, 1)
    assert_parity(masked_attention_triton(q, k, v, None), masked_attention_reference(q, k, v, None))


def test_fully_masked_rows_attend_to_every_key(poisoned):
    q, k, v, mask = make_inputs(2, 3, 9, 40, 16, 1)
    mask[:, :, 4] = False
    out = masked_attention_triton(q, k, v, mask)
    unmasked = masked_attention_reference(q, k, v, None)
    assert_parity(out[:, :, 4], unmasked[:, :, 4], what="fully masked row vs plain attention")
    all_false = torch.zeros_like(mask)
    assert_parity(masked_attention_triton(q, k, v, all_false), unmasked, what="all-False mask")


def test_a_row_ignores_the_keys_its_mask_hides(poisoned):
    q, k, v, mask = make_inputs(1, 2, 8, 50, 16, 1, keep=0.5, empty_rows=0)
    row = 3
    mask[:, :, row, 0] = True  # the row is not empty, so its mask applies
    hidden = ~mask[0, 0, row]  # (K,) keys this row may not see, in both heads
    assert hidden.any()
    k2, v2 = k.clone(), v.clone()
    k2[:, :, hidden] = 50.0  # would dominate the softmax if it leaked through
    v2[:, :, hidden] = 1e3
    before = masked_attention_triton(q, k, v, mask)[:, :, row]
    after = masked_attention_triton(q, k2, v2, mask)[:, :, row]
    assert_parity(after, before, what=f"row {row} after changing its hidden keys")


def test_gradients_match_reference_autograd():
    q, k, v, mask = make_inputs(1, 3, 11, 45, 20, 1)
    grad_out = torch.randn_like(q)
    grads = []
    for fn in (masked_attention_triton, masked_attention_reference):
        ins = [t.clone().requires_grad_() for t in (q, k, v)]
        grads.append(torch.autograd.grad(fn(*ins, mask), ins, grad_out))
    for name, got, want in zip("qkv", *grads, strict=True):
        assert_parity(got, want, what=f"grad {name}")


def test_dispatcher_runs_triton_when_asked(poisoned):
    q, k, v, mask = make_inputs(1, 2, 5, 33, 16, 1)
    assert_parity(kernels.masked_attention(q, k, v, mask, impl="triton"),
                  masked_attention_reference(q, k, v, mask))


@pytest.mark.parametrize("case", SHAPES, ids=[c[0] for c in SHAPES])
def test_the_sdpa_path_matches_reference(case):
    """What ``auto`` runs on CUDA, here on the suite's device: Mask2Former's empty-row rule
    applied to the mask, then PyTorch's scaled_dot_product_attention."""
    q, k, v, mask = make_inputs(*case[1:])
    assert_parity(kernels.masked_attention_sdpa(q, k, v, mask),
                  masked_attention_reference(q, k, v, mask))
    assert_parity(kernels.masked_attention_sdpa(q, k, v, None),
                  masked_attention_reference(q, k, v, None), what="no mask")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_on_cuda_runs_the_reference_for_a_few_queries_and_sdpa_for_more():
    few = kernels.FEW_QUERIES
    for nq, want in ((1, masked_attention_reference), (few, masked_attention_reference),
                     (few + 1, kernels.masked_attention_sdpa)):
        q, k, v, mask = (t.cuda() for t in make_inputs(1, 8, nq, 777, 32, 1))
        got = kernels.masked_attention(q, k, v, mask, impl="auto")
        assert torch.equal(got, want(q, k, v, mask)), nq
        assert_parity(got, masked_attention_reference(q, k, v, mask))


def test_bad_mask_raises_with_the_argument_name():
    q, k, v, mask = make_inputs(1, 2, 5, 33, 16, 1)
    with pytest.raises(TypeError, match="mask"):
        masked_attention_triton(q, k, v, mask.float())
    with pytest.raises(ValueError, match="mask"):
        masked_attention_triton(q, k, v, mask[..., :-1])


# ---------------------------------------------------------------- GPU only (fp16 / bf16 / sizes)

# OMG-Seg's decoder at 1024x1024: 300 queries, 8 heads of 32, keys at strides 32/16/8.
OMG_SEG_KEYS = [32 * 32, 64 * 64, 128 * 128]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("nk", OMG_SEG_KEYS)
def test_omg_seg_shapes_match_reference_gpu(nk, dtype, poisoned):
    q, k, v, mask = make_inputs(2, 8, 300, nk, 32, 1, dtype=dtype, keep=0.4, empty_rows=5)
    assert_parity(masked_attention_triton(q, k, v, mask), masked_attention_reference(q, k, v, mask),
                  dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("nk", [OMG_SEG_KEYS[-1], 5 * 46 * 62])  # stride 8; a 5-frame clip's s16
def test_auto_on_cuda_matches_reference_gpu(nk, dtype):
    q, k, v, mask = make_inputs(2, 8, 300, nk, 32, 1, dtype=dtype, keep=0.4, empty_rows=5)
    assert kernels.get_impl() == "auto"
    assert_parity(kernels.masked_attention(q, k, v, mask),
                  masked_attention_reference(q, k, v, mask), dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", SHAPES, ids=[c[0] for c in SHAPES])
def test_odd_shapes_half_precision_gpu(case, dtype, poisoned):
    q, k, v, mask = make_inputs(*case[1:], dtype=dtype)
    assert_parity(masked_attention_triton(q, k, v, mask), masked_attention_reference(q, k, v, mask),
                  dtype=dtype)


@pytest.mark.parametrize("case", SHAPES, ids=[c[0] for c in SHAPES])
def test_the_reference_is_the_masked_fill_bit_for_bit(case):
    """The reference's finite bias and row-max subtraction (no boolean ``any`` in its exported
    graph) give the bits of the plain formulation: ``-inf`` where ``attendable`` blocks, with
    scores scaled up to the size of a trained decoder's logits."""
    from kernels.reference import attendable

    q, k, v, mask = make_inputs(*case[1:])
    q = q * 8.0  # scores of a few hundred
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    plain = torch.matmul(torch.softmax(scores.masked_fill(~attendable(mask), float("-inf")), -1),
                         v.float())
    assert torch.equal(masked_attention_reference(q, k, v, mask), plain)
