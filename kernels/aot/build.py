"""Compile the forward kernels ahead of time and write the C sources CMake links into a library.

Runs on a machine without a GPU: ``triton.compile`` with an explicit ``GPUTarget('cuda', cc, 32)``
lowers to PTX and, through Triton's bundled ptxas, to a cubin for that architecture.

    python -m kernels.aot.build --out build/aot [--archs 90,87] [--dtypes fp32,fp16]

Writes into ``--out``:
    <variant>.ptx / <variant>.cubin   one per (kernel, dtype, arch)
    omg_kernels_blobs.S               the cubins, embedded with .incbin (hidden symbols)
    omg_kernels_variants.c            the variant table omg_kernels.c reads
    manifest.json                     what was compiled: constants, blocks, warps, shared memory

Kernel constants are OMG-Seg's (official config): deformable attention with 8 heads of 32 channels,
3 levels, 4 points; masked attention with 8 heads of 32. Other head counts/sizes need a rebuild
with other ``--msda``/``--attn`` values; the C API rejects shapes no variant was compiled for.
"""

from __future__ import annotations

import os

# Set before Triton reads its knobs: without line info the PTX/cubins are ~3x smaller, and the
# CPU interpreter (which CI's test environment turns on) cannot compile anything.
os.environ.setdefault("TRITON_DISABLE_LINE_INFO", "1")
os.environ.pop("TRITON_INTERPRET", None)

import argparse  # noqa: E402
import json
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ARCHS = (90, 87)  # H100/H200 (sm_90), Jetson AGX Orin (sm_87)
DTYPES = ("fp32", "fp16")
MSDA = {"M": 8, "D": 32, "L": 3, "P": 4}
ATTN = {"M": 8, "D": 32}
NUM_WARPS = 4
# C enum values of omg_dtype_t in omg_kernels.h
DTYPE_CODES = {"fp32": 0, "fp16": 1}
KERNEL_CODES = {"ms_deform_attn_fwd": 0, "masked_attention_fwd": 1}


@dataclass
class Variant:
    kernel: str  # key of KERNEL_CODES
    dtype: str
    arch: int
    constants: dict = field(default_factory=dict)
    num_warps: int = NUM_WARPS
    # filled by compile_variant
    entry: str = ""
    shared: int = 0
    num_params: int = 0
    block: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.kernel}_{self.dtype}_sm{self.arch}"


def variants(archs=ARCHS, dtypes=DTYPES, msda=MSDA, attn=ATTN) -> list[Variant]:
    from kernels.masked_attention_triton import block_sizes as attn_blocks
    from kernels.ms_deform_attn_triton import block_sizes as msda_blocks

    out = []
    for arch in archs:
        for dtype in dtypes:
            block_q, block_d = msda_blocks(msda["D"])
            out.append(Variant("ms_deform_attn_fwd", dtype, arch,
                               dict(msda, BLOCK_Q=block_q, BLOCK_D=block_d)))
            block_q, block_k, block_d = attn_blocks(300, attn["D"])
            out.append(Variant("masked_attention_fwd", dtype, arch, dict(
                attn, SCALE=float(attn["D"]) ** -0.5, HAS_MASK=True,
                DOT_PRECISION="ieee" if dtype == "fp32" else "tf32",
                BLOCK_Q=block_q, BLOCK_K=block_k, BLOCK_D=block_d)))
    return out


def signature(v: Variant) -> dict[str, str]:
    """Triton type of every runtime argument, in kernel order (inputs -> scalars -> outputs)."""
    f = f"*{v.dtype}"
    if v.kernel == "ms_deform_attn_fwd":
        return {"value_ptr": f, "spatial_shapes_ptr": "*i32", "level_start_index_ptr": "*i32",
                "sampling_locations_ptr": f, "attention_weights_ptr": f, "S": "i32", "Lq": "i32",
                "out_ptr": f}
    return {"q_ptr": f, "k_ptr": f, "v_ptr": f, "mask_ptr": "*u8", "Q": "i32", "K": "i32",
            "stride_mask_b": "i32", "stride_mask_h": "i32", "out_ptr": f}


def kernel_fn(kernel: str):
    if kernel == "ms_deform_attn_fwd":
        from kernels.ms_deform_attn_triton import _ms_deform_attn_fwd_kernel
        return _ms_deform_attn_fwd_kernel
    from kernels.masked_attention_triton import _masked_attention_fwd_kernel
    return _masked_attention_fwd_kernel


def compile_variant(v: Variant):
    """Compile one variant; returns (variant with metadata, ptx text, cubin bytes)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = kernel_fn(v.kernel)
    sig = dict(signature(v))
    for name in v.constants:
        sig[name] = "constexpr"
    target = GPUTarget("cuda", v.arch, 32)
    options = triton.compiler.make_backend(target).parse_options({"num_warps": v.num_warps})
    compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=dict(v.constants)),
                              target=target, options=options.__dict__)
    md = compiled.metadata
    for scratch in ("global_scratch_size", "profile_scratch_size"):
        if getattr(md, scratch, 0):
            raise RuntimeError(f"{v.name}: needs {scratch}={getattr(md, scratch)}, which the C "
                               "launcher does not allocate")
    ptx = compiled.asm["ptx"]
    entry = re.search(r"\.entry\s+(\w+)\s*\(([^)]*)\)", ptx)
    if entry is None:
        raise RuntimeError(f"{v.name}: no .entry in the PTX")
    v.entry = entry.group(1)
    # Triton appends scratch pointers after the user arguments (how many depends on the version);
    # counting the PTX parameters lets the launcher pass NULL for each of them.
    v.num_params = entry.group(2).count(".param")
    if v.num_params < len(signature(v)):
        raise RuntimeError(f"{v.name}: PTX has {v.num_params} params, kernel {len(signature(v))}")
    v.shared = int(md.shared)
    v.block = [v.num_warps * 32, 1, 1]
    return v, ptx, bytes(compiled.asm["cubin"])


def write_sources(results, out: Path) -> None:
    """The cubins as an assembler file (.incbin: fast to build) and the C variant table."""
    asm = ["/* Generated by kernels/aot/build.py: AOT-compiled Triton cubins. Do not edit. */",
           '.section .rodata']
    for v, _, _ in results:
        asm += [f".global {v.name}_cubin", f".hidden {v.name}_cubin",
                f".type {v.name}_cubin, @object", ".balign 16", f"{v.name}_cubin:",
                f'.incbin "{(out / (v.name + ".cubin")).resolve()}"']
    asm.append('.section .note.GNU-stack,"",@progbits')
    (out / "omg_kernels_blobs.S").write_text("\n".join(asm) + "\n")

    lines = ["/* Generated by kernels/aot/build.py: the AOT-compiled variants. Do not edit. */",
             '#include "omg_kernels_internal.h"', ""]
    for v, _, _ in results:
        lines.append(f"extern const unsigned char {v.name}_cubin[];")
    lines += ["", "const omg_variant omg_variants[] = {"]
    for v, _, cubin in results:
        c = v.constants
        lines.append(
            f'  {{{KERNEL_CODES[v.kernel]}, {DTYPE_CODES[v.dtype]}, {v.arch}, {c["M"]}, {c["D"]}, '
            f'{c.get("L", 0)}, {c.get("P", 0)}, {c["BLOCK_Q"]}, {v.block[0]}, {v.shared}, '
            f'{v.num_params}, "{v.entry}", {v.name}_cubin, {len(cubin)}}},')
    lines += ["};", f"const int omg_num_variants = {len(results)};"]
    (out / "omg_kernels_variants.c").write_text("\n".join(lines) + "\n")


def build(out: Path, archs=ARCHS, dtypes=DTYPES, jobs: int = 2) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    todo = variants(archs, dtypes)
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(compile_variant, todo))
    else:
        results = [compile_variant(v) for v in todo]
    for v, ptx, cubin in results:
        (out / f"{v.name}.ptx").write_text(ptx)
        (out / f"{v.name}.cubin").write_bytes(cubin)
    write_sources(results, out)
    import triton

    manifest = {"triton": triton.__version__,
                "variants": [dict(asdict(v), name=v.name, ptx=f"{v.name}.ptx",
                                  cubin=f"{v.name}.cubin") for v, _, _ in results]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--archs", default=",".join(map(str, ARCHS)))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    manifest = build(args.out, [int(a) for a in args.archs.split(",")], args.dtypes.split(","),
                     args.jobs)
    for v in manifest["variants"]:
        print(f"{v['name']}: entry {v['entry']}, {v['num_params']} params, shared {v['shared']} B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
