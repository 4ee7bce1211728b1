"""One TensorRT builder: ``omg-export --engine`` (export.engines) and the runtime's first use
(omg_rt.backends.tensorrt) hand TensorRT the same builder flags, FP32 islands and plan layout.

TensorRT itself is GPU-only (tests/export/test_graphs.py builds real engines where it exists).
Here a small recording stand-in of the TensorRT 10 Python API plays its part: its parser reads
the bundle's real ONNX graphs (one layer per node, typed as TensorRT types them: LayerNormalization
-> NORMALIZATION, Softmax -> SOFTMAX, Reduce* -> REDUCE; dynamic axes -1) and its builder records
the config it is given and returns the recorded settings as the "plan"."""

from __future__ import annotations

import json
import types
from pathlib import Path

import onnx
import pytest

from omg_rt.backends import trt_build
from omg_rt.backends.trt_build import BuildSettings, engine_key, plan_path
from omg_rt.bundle import load_bundle
from omg_rt.errors import BundleError
from omg_rt.manifest import EngineRecord
from tests.omg_rt.test_runtime_support import NAMES, NUM_THINGS, tiny_checkpoint

GPU = ("NVIDIA H100 80GB HBM3", (9, 0))


class _Enum:
    def __init__(self, *names: str) -> None:
        for name in names:
            setattr(self, name, name)


class _Layer:
    def __init__(self, name: str, type_: str, outputs: int) -> None:
        self.name, self.type, self.num_outputs = name, type_, outputs
        self.precision = None
        self.output_types: dict[int, str] = {}

    def set_output_type(self, index: int, dtype: str) -> None:
        self.output_types[index] = dtype


class _Tensor:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name, self.shape = name, shape


class _Network:
    def __init__(self) -> None:
        self.layers: list[_Layer] = []
        self.inputs: list[_Tensor] = []

    num_layers = property(lambda self: len(self.layers))
    num_inputs = property(lambda self: len(self.inputs))

    def get_layer(self, i: int) -> _Layer:
        return self.layers[i]

    def get_input(self, i: int) -> _Tensor:
        return self.inputs[i]


_LAYER_TYPES = {"LayerNormalization": "NORMALIZATION", "Softmax": "SOFTMAX"}


class _Parser:
    def __init__(self, network: _Network, logger: object) -> None:
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path: str) -> bool:
        model = onnx.load_model(path, load_external_data=False)
        initializers = {i.name for i in model.graph.initializer}
        for value in model.graph.input:
            if value.name in initializers:
                continue
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                         for d in value.type.tensor_type.shape.dim)
            self.network.inputs.append(_Tensor(value.name, dims))
        for k, node in enumerate(model.graph.node):
            kind = "REDUCE" if node.op_type.startswith("Reduce") else \
                _LAYER_TYPES.get(node.op_type, "ELEMENTWISE")
            self.network.layers.append(_Layer(node.name or f"node{k}", kind, len(node.output)))
        return True


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class _Cache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+"


class _Config:
    def __init__(self) -> None:
        self.flags: list[str] = []
        self.pools: dict[str, int] = {}
        self.profiles: list[_Profile] = []
        self.cache: _Cache | None = None
        self.default_device_type = None
        self.DLA_core = None

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pools[pool] = size

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)

    def create_timing_cache(self, data: bytes) -> _Cache:
        return _Cache(data)

    def set_timing_cache(self, cache: _Cache, ignore_mismatch: bool) -> None:
        self.cache = cache

    def get_timing_cache(self) -> _Cache:
        assert self.cache is not None
        return self.cache

    def add_optimization_profile(self, profile: _Profile) -> None:
        self.profiles.append(profile)


class _Builder:
    def __init__(self, logger: object) -> None:
        pass

    def create_network(self, flags: int) -> _Network:
        return _Network()

    def create_builder_config(self) -> _Config:
        return _Config()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config) -> bytes:
        """The "plan": what a build was asked for, as JSON."""
        pinned = sorted(layer.name for layer in network.layers if layer.precision == "float32"
                        and all(layer.output_types.get(j) == "float32"
                                for j in range(layer.num_outputs)))
        return json.dumps({
            "flags": sorted(config.flags), "pools": config.pools,
            "fp32_layers": pinned, "device": config.default_device_type, "dla": config.DLA_core,
            "profiles": [{k: [list(s) for s in v] for k, v in p.shapes.items()}
                         for p in config.profiles],
        }, sort_keys=True).encode()


class _Logger:
    WARNING = "WARNING"

    def __init__(self, level: str) -> None:
        self.level = level


def _fake_tensorrt() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        __version__="10.9.0", Logger=_Logger, Builder=_Builder, OnnxParser=_Parser,
        init_libnvinfer_plugins=lambda logger, namespace: True,
        MemoryPoolType=_Enum("WORKSPACE"),
        BuilderFlag=_Enum("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "GPU_FALLBACK"),
        LayerType=_Enum("NORMALIZATION", "SOFTMAX", "REDUCE", "ELEMENTWISE"),
        DeviceType=_Enum("GPU", "DLA"), float32="float32",
    )


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    from export import build_bundle

    out = tmp_path_factory.mktemp("trt-build") / "bundle"
    vocab = types.SimpleNamespace(names=NAMES, num_things=NUM_THINGS)
    return build_bundle(tiny_checkpoint(), out, image_size=128, vocab=vocab, verify=False,
                        precisions=("fp32", "fp16"), progress=False)


def _runtime_plan(bundle_dir: Path, graph: str, precision: str, tmp_path: Path) -> dict:
    from omg_rt.backends.tensorrt import TensorRTOptions, _build_engine

    trt = _fake_tensorrt()
    plan = tmp_path / "runtime" / plan_path("key", graph, precision)
    _build_engine(trt, _Logger("WARNING"), load_bundle(bundle_dir, verify=False), graph,
                  precision, plan, TensorRTOptions(workspace_bytes=4 << 30))
    return json.loads(plan.read_bytes())


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_export_and_runtime_build_plans_with_the_same_flags_and_fp32_islands(
        bundle_dir, precision, tmp_path):
    from export.engines import build_engines

    manifest = load_bundle(bundle_dir).manifest
    record = build_engines(bundle_dir, manifest, target="h100", precisions=(precision,),
                           progress=False, trt=_fake_tensorrt(), gpu=GPU)
    key = engine_key(*GPU, "10.9.0")
    assert record.key == key and record.matches(GPU[0], GPU[1], "10.9.0")
    recorded = json.loads((bundle_dir / "engines" / key / "engines.json").read_text())
    assert EngineRecord.from_dict(recorded, "engines.json") == record
    pinned_somewhere = False
    for graph, files in record.files.items():
        assert files[precision] == f"engines/{plan_path(key, graph, precision).as_posix()}"
        exported = json.loads((bundle_dir / files[precision]).read_bytes())
        built = _runtime_plan(bundle_dir, graph, precision, tmp_path)
        assert exported["flags"] == built["flags"], graph
        assert exported["fp32_layers"] == built["fp32_layers"], graph
        assert exported["pools"] == built["pools"] == {"WORKSPACE": 4 << 30}
        if precision == "fp32":
            assert exported["flags"] == [] and exported["fp32_layers"] == []
        else:
            assert exported["flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
            pinned_somewhere |= bool(exported["fp32_layers"])
        # both give every dynamic input a profile; height/width ranges from the same contract
        assert set(exported["profiles"][0]) == set(built["profiles"][0])
    if precision == "fp16":
        assert pinned_somewhere  # the tiny model's LayerNorms / softmaxes are islands


def test_islands_are_normalisation_softmax_and_reductions_only():
    trt = _fake_tensorrt()
    network = _Network()
    network.layers = [_Layer("ln", "NORMALIZATION", 1), _Layer("sm", "SOFTMAX", 1),
                      _Layer("mean", "REDUCE", 2), _Layer("add", "ELEMENTWISE", 1)]
    assert trt_build.pin_fp32_islands(trt, network) == ["ln", "sm", "mean"]
    assert network.layers[2].output_types == {0: "float32", 1: "float32"}
    assert network.layers[3].precision is None


def test_int8_adds_the_int8_flag_and_a_dla_core_its_fallback():
    trt = _fake_tensorrt()
    builder = _Builder(None)
    settings = BuildSettings("int8", 1 << 20, dla_core=1, gpu_fallback=True)
    plan, cache = trt_build.build_plan(trt, builder, _Network(), settings, {}, b"old")
    built = json.loads(plan)
    assert built["flags"] == ["FP16", "GPU_FALLBACK", "INT8", "OBEY_PRECISION_CONSTRAINTS"]
    assert built["device"] == "DLA" and built["dla"] == 1 and built["profiles"] == []
    assert cache == b"old+"  # the timing cache goes on to the next build


def test_engine_key_and_plan_layout():
    assert engine_key("NVIDIA H100 80GB HBM3", (9, 0), "10.9.0") == \
        "nvidia-h100-80gb-hbm3_sm90_trt10.9.0"
    assert engine_key("Orin (nvgpu)\x00", (8, 7), "10.3.0") == "orin-nvgpu_sm87_trt10.3.0"
    assert plan_path("k", "encoder", "fp16") == Path("k/encoder.fp16.plan")


def test_an_unknown_precision_is_refused():
    with pytest.raises(BundleError, match="precision 'int4'"):
        BuildSettings("int4")
