"""One setting chooses the kernels for the whole model; the model's outputs must not depend on it.

On a CPU the Triton kernels run in Triton's interpreter (set by this folder's conftest)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels
from training.model import build_model


@pytest.fixture
def restore_impl():
    before = kernels.get_impl()
    yield
    kernels.set_impl(before)


def _outputs(model, images, bank, boxes, size):
    with torch.no_grad():
        image = model(images, bank)[-1]
        prompts = model(images, bank, prompt_boxes=boxes, image_size=size)[-1]
        video = model(images, bank, num_frames=2)[-1]
    return image, prompts, video


def test_model_outputs_match_between_reference_and_triton_kernels(restore_impl):
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 96, generator=g)
    bank = F.normalize(torch.randn(5, 2, 64, generator=g), dim=-1)
    boxes = torch.tensor([[[4.0, 4.0, 40.0, 30.0], [50.0, 10.0, 90.0, 60.0]]]).expand(2, -1, -1)
    size = torch.tensor([64.0, 96.0])

    kernels.set_impl("reference")
    reference = _outputs(model, images, bank, boxes, size)
    kernels.set_impl("triton")
    triton = _outputs(model, images, bank, boxes, size)

    for ref, fast in zip(reference, triton):
        torch.testing.assert_close(fast.mask_logits, ref.mask_logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fast.class_logits, ref.class_logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fast.iou_logits, ref.iou_logits, rtol=1e-4, atol=1e-4)


def test_default_setting_is_reference_on_cpu_and_triton_on_cuda():
    assert kernels.get_impl() in kernels.IMPLS
    x = torch.zeros(1)
    assert kernels._use_triton(x, "auto") is x.is_cuda
    with pytest.raises(ValueError, match="kernel impl"):
        kernels.set_impl("cuda")
