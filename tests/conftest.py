"""Shared test settings: tolerance table, markers that skip with a reason, tiny fixtures."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Triton decides at import time whether @triton.jit compiles or interprets: without a GPU, the
# kernels run in its CPU interpreter. Set before anything (torch included) imports triton.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; OMG_SHARED names another copy (the GPU machine gets a carried one)
SHARED = Path(os.environ.get("OMG_SHARED") or REPO.parent / "shared")
OFFICIAL_FIXTURES = SHARED / "fixtures"

# Relative error tolerances per dtype for fast paths against their references (max |a-b| / max |b|).
TOLERANCES = {
    "float32": {"rtol": 1e-5, "atol": 1e-6},
    "float16": {"rtol": 2e-3, "atol": 1e-3},
    "bfloat16": {"rtol": 1.6e-2, "atol": 1e-2},
}


def seeded_tiny(seed: int = 0):
    """The ``tiny`` preset in eval mode with the random weights of ``torch.manual_seed(seed)``:
    every tiny-model fixture of the suite."""
    import torch

    from training.model import build_model

    torch.manual_seed(seed)
    return build_model("tiny").eval()


@pytest.fixture
def numpy_merge(monkeypatch):
    """Host panoptic merges in numpy (checked against ``upsample_masks``), not in C (checked
    against PyTorch's resize in tests/omg_rt/test_postprocess_native.py)."""
    from omg_rt.postprocess import native

    monkeypatch.setattr(native, "available", lambda: False)


def _has_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return False
    return True


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    skip_trt = pytest.mark.skip(reason="needs TensorRT (`import tensorrt` fails on this machine)")
    cuda = _has_cuda()
    trt = _has_tensorrt()
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(skip_gpu)
        if "tensorrt" in item.keywords and not trt:
            item.add_marker(skip_trt)


@pytest.fixture(autouse=True)
def _grad_mode_starts_enabled():
    """Every test starts with autograd on, whatever another module switched at import time."""
    import torch

    with torch.enable_grad():
        yield
