"""TensorRT side of the deformable attention: the ONNX node helper (CPU, always runs), the PTX the
AOT plugin hands to TensorRT (CPU: Triton compiles for sm_90, ptxas accepts it), and the plugin in
a real engine (needs TensorRT and a GPU).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.reference import ms_deform_attn_reference
from kernels.trt_plugin import PLUGIN_NAME, ms_deform_attn_onnx, strip_scratch_params
from tests.kernels.kernel_testing import assert_parity

REPO = Path(__file__).resolve().parents[2]
OMG_CONSTANTS = dict(M=8, D=32, L=3, P=4, BLOCK_Q=64, BLOCK_D=32)


def export_with_plugin_node(plugin_namespace: str):
    onnx = pytest.importorskip("onnx")

    class _MSDeformAttn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value, shapes, starts, locs, weights):
            return ms_deform_attn_reference(value, shapes, starts, locs, weights)

        @staticmethod
        def symbolic(g, value, shapes, starts, locs, weights):
            return ms_deform_attn_onnx(g, value, shapes, starts, locs, weights,
                                       plugin_namespace=plugin_namespace)

    class Wrapper(torch.nn.Module):
        def forward(self, value, shapes, starts, locs, weights):
            return _MSDeformAttn.apply(value, shapes, starts, locs, weights)

    inputs = (torch.randn(2, 20, 2, 8), torch.tensor([[4, 4], [2, 2]]), torch.tensor([0, 16]),
              torch.rand(2, 5, 2, 2, 3, 2), torch.rand(2, 5, 2, 2, 3))
    buffer = io.BytesIO()
    torch.onnx.export(Wrapper(), inputs, buffer, dynamo=False, opset_version=17,
                      input_names=["value", "spatial_shapes", "level_start_index",
                                   "sampling_locations", "attention_weights"],
                      output_names=["out"], custom_opsets={"trt": 1})
    return onnx.load_from_string(buffer.getvalue()), onnx


@pytest.mark.parametrize("namespace", ["", "omg"])
def test_onnx_helper_emits_the_plugin_node_in_contract_order(namespace):
    model, onnx = export_with_plugin_node(namespace)
    nodes = {n.output[0]: n for n in model.graph.node}
    plugin = [n for n in model.graph.node if n.op_type == PLUGIN_NAME]
    assert len(plugin) == 1, [n.op_type for n in model.graph.node]
    plugin = plugin[0]
    assert len(plugin.input) == 5
    assert plugin.input[0] == "value"
    assert list(plugin.input[3:]) == ["sampling_locations", "attention_weights"]
    for position, graph_input in ((1, "spatial_shapes"), (2, "level_start_index")):
        cast = nodes[plugin.input[position]]
        assert cast.op_type == "Cast" and list(cast.input) == [graph_input]
        assert onnx.helper.get_attribute_value(cast.attribute[0]) == onnx.TensorProto.INT32
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in plugin.attribute}
    if namespace:
        assert attrs == {"plugin_namespace": namespace.encode(), "aot": 1}
    else:
        assert attrs == {}, "the built-in plugin takes no attributes"
    (out,) = model.graph.output
    producer = nodes[out.name]
    assert producer.op_type == "Reshape" and producer.input[0] == plugin.output[0]
    # Static shapes reach ONNX shape inference: plugin (N, Lq, M, D), graph output (N, Lq, M * D).
    plugin_out = [v for v in model.graph.value_info if v.name == plugin.output[0]]
    assert plugin_out, "the plugin output carries no type/shape"
    assert [d.dim_value for d in plugin_out[0].type.tensor_type.shape.dim] == [2, 5, 2, 8]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [2, 5, 16]


def test_strip_scratch_params_refuses_ptx_that_uses_them():
    ptx = (".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u64 k_param_1\n)\n"
           "{\n\tld.param.u64 %rd1, [k_param_1];\n}\n")
    with pytest.raises(ValueError, match="k_param_1"):
        strip_scratch_params(ptx, 1)
    unused = ptx.replace("k_param_1]", "k_param_0]")
    stripped = strip_scratch_params(unused, 1)
    assert "k_param_1" not in stripped and "k_param_0" in stripped


@pytest.mark.slow
def test_plugin_ptx_for_sm90_has_the_tensorrt_signature_and_assembles(tmp_path):
    # A subprocess: the test process runs Triton's interpreter, which cannot compile.
    script = (
        "import sys; from kernels.trt_plugin import kernel_ptx\n"
        f"entry, ptx, shared = kernel_ptx('fp16', {OMG_CONSTANTS!r}, arch=90)\n"
        "open(sys.argv[1], 'w').write(ptx); print(entry, shared)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    ptx_path = tmp_path / "msda.ptx"
    run = subprocess.run([sys.executable, "-c", script, str(ptx_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    entry = run.stdout.split()[0]
    ptx = ptx_path.read_text()
    header = ptx[ptx.index(f".entry {entry}("):]
    header = header[:header.index(")")]
    # 5 inputs + 2 scalars (S, Lq) + 1 output, exactly what TensorRT passes
    assert header.count(".param") == 8, header
    import triton

    ptxas = Path(triton.__file__).parent / "backends/nvidia/bin/ptxas"
    if not ptxas.exists():
        pytest.skip(f"no ptxas at {ptxas}")
    target = "sm_90a" if ".target sm_90a" in ptx else "sm_90"
    done = subprocess.run([str(ptxas), f"-arch={target}", str(ptx_path), "-o",
                           str(tmp_path / "msda.cubin")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_plugin_engine_matches_reference(dtype):
    import tensorrt as trt
    import tensorrt.plugin as trtp

    from kernels.trt_plugin import register_plugin
    from tests.kernels.test_ms_deform_attn import make_inputs

    register_plugin()
    levels = [(16, 16), (8, 8), (4, 4)]
    value, shapes, starts, locs, weights = make_inputs(2, 100, 8, 32, levels, 4, dtype=dtype)
    feeds = {"value": value, "spatial_shapes": shapes.int(), "level_start_index": starts.int(),
             "sampling_locations": locs, "attention_weights": weights}
    to_trt = {torch.float32: trt.float32, torch.float16: trt.float16, torch.int32: trt.int32}

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    tensors = [network.add_input(name, to_trt[t.dtype], tuple(t.shape)) for name, t in feeds.items()]
    layer = network.add_plugin(trtp.op.omg.MultiscaleDeformableAttnPlugin_TRT(*tensors), aot=True)
    layer.get_output(0).name = "out"
    network.mark_output(layer.get_output(0))
    plan = builder.build_serialized_network(network, builder.create_builder_config())
    assert plan is not None, "TensorRT could not build the engine (see the log above)"
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    out = torch.full((2, 100, 8, 32), float("nan"), device="cuda", dtype=dtype)
    for name, t in feeds.items():
        context.set_tensor_address(name, t.contiguous().data_ptr())
    context.set_tensor_address("out", out.data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    assert_parity(out.flatten(2), ms_deform_attn_reference(value, shapes, starts, locs, weights),
                  dtype=dtype)
