"""The AOT build: Triton compiles both forward kernels for sm_90 and sm_87 on a CPU-only machine,
CMake links them into libomg_kernels.so, and the library exports and answers its C API.

The GPU test launches the library's kernels on torch tensors and compares with the references.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.kernels.kernel_testing import assert_parity

REPO = Path(__file__).resolve().parents[2]
C_API = ["omg_kernels_init", "omg_kernels_last_error", "omg_kernels_num_variants",
         "omg_kernels_variant_name", "omg_ms_deform_attn_forward", "omg_masked_attention_forward"]
OMG_OK, OMG_ERROR_DRIVER, OMG_ERROR_NO_VARIANT = 0, 1, 2

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("cc") is None,
                                reason="needs cmake and a C compiler")


@pytest.fixture(scope="module")
def built_library(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("aot_build")
    result = subprocess.run([str(REPO / "kernels/aot/build.sh"), str(build)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"build.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    library = Path(result.stdout.strip().splitlines()[-1])
    assert library.is_file(), f"build.sh reported {library}, which does not exist"
    return library


def load(library: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(library))
    lib.omg_kernels_last_error.restype = ctypes.c_char_p
    lib.omg_kernels_variant_name.restype = ctypes.c_char_p
    return lib


@pytest.mark.slow
def test_library_exports_the_c_api(built_library):
    nm = subprocess.run(["nm", "-D", "--defined-only", str(built_library)], capture_output=True,
                        text=True, check=True).stdout
    exported = {line.split()[-1] for line in nm.splitlines() if " T " in line}
    missing = [name for name in C_API if name not in exported]
    assert not missing, f"libomg_kernels.so does not export {missing}; it exports {sorted(exported)}"
    leaked = sorted(name for name in exported if not name.startswith("omg_"))
    assert not leaked, f"symbols outside the C API are exported: {leaked}"


@pytest.mark.slow
def test_both_kernels_compiled_for_hopper_and_orin(built_library):
    manifest = json.loads((built_library.parent / "aot" / "manifest.json").read_text())
    got = {(v["kernel"], v["dtype"], v["arch"]) for v in manifest["variants"]}
    want = {(k, d, a) for k in ("ms_deform_attn_fwd", "masked_attention_fwd")
            for d in ("fp32", "fp16") for a in (90, 87)}
    assert got == want
    for v in manifest["variants"]:
        ptx = (built_library.parent / "aot" / v["ptx"]).read_text()
        assert f".target sm_{v['arch']}" in ptx, f"{v['name']}: PTX targets another arch"
        cubin = (built_library.parent / "aot" / v["cubin"]).read_bytes()
        assert cubin[:4] == b"\x7fELF", f"{v['name']}: cubin is not an ELF image"
    lib = load(built_library)
    assert lib.omg_kernels_num_variants() == len(want)
    names = {lib.omg_kernels_variant_name(i).decode() for i in range(len(want))}
    assert "ms_deform_attn_fwd fp16 sm_90 M=8 D=32 L=3 P=4" in names, names


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="with a driver and a context this would launch on NULL pointers")
def test_launch_without_a_driver_fails_with_a_reason(built_library):
    lib = load(built_library)
    rc = lib.omg_ms_deform_attn_forward(None, 0, *([ctypes.c_uint64(0)] * 5), 1, 21504, 21504,
                                        8, 32, 3, 4, ctypes.c_uint64(0))
    reason = lib.omg_kernels_last_error().decode()
    assert rc == OMG_ERROR_DRIVER, f"expected a driver error, got {rc}: {reason}"
    assert "CUDA driver" in reason or "cuInit" in reason or "cuCtxGetDevice" in reason, reason


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_library_kernels_match_references_gpu(built_library, dtype):
    from kernels.reference import masked_attention_reference, ms_deform_attn_reference
    from tests.kernels.test_masked_attention import make_inputs as attention_inputs
    from tests.kernels.test_ms_deform_attn import make_inputs as msda_inputs

    lib = load(built_library)
    torch.cuda.init()
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    code = 0 if dtype == torch.float32 else 1
    ptr = lambda t: ctypes.c_uint64(t.data_ptr())  # noqa: E731

    levels = [(32, 40), (16, 20), (8, 10)]
    value, shapes, starts, locs, weights = msda_inputs(2, 700, 8, 32, levels, 4, dtype=dtype)
    shapes32, starts32 = shapes.int(), starts.int()
    out = torch.full((2, 700, 256), float("nan"), device="cuda", dtype=dtype)
    rc = lib.omg_ms_deform_attn_forward(stream, code, ptr(value), ptr(shapes32), ptr(starts32),
                                        ptr(locs), ptr(weights), 2, value.shape[1], 700, 8, 32, 3,
                                        4, ptr(out))
    assert rc == OMG_OK, lib.omg_kernels_last_error().decode()
    torch.cuda.synchronize()
    assert_parity(out, ms_deform_attn_reference(value, shapes, starts, locs, weights), dtype=dtype)

    rc = lib.omg_ms_deform_attn_forward(stream, code, ptr(value), ptr(shapes32), ptr(starts32),
                                        ptr(locs), ptr(weights), 2, value.shape[1], 700, 8, 32, 3,
                                        2, ptr(out))
    assert rc == OMG_ERROR_NO_VARIANT, "P=2 was not compiled and must be refused"

    for mask_heads in (1, 8):
        q, k, v, mask = attention_inputs(2, 8, 100, 1000, 32, mask_heads, dtype=dtype)
        out = torch.full_like(q, float("nan"))
        rc = lib.omg_masked_attention_forward(stream, code, ptr(q), ptr(k), ptr(v), ptr(mask), 2, 8,
                                              100, 1000, 32, mask_heads, ptr(out))
        assert rc == OMG_OK, lib.omg_kernels_last_error().decode()
        torch.cuda.synchronize()
        assert_parity(out, masked_attention_reference(q, k, v, mask), dtype=dtype)
