"""``omg-export --triton-repo``: every config.pbtxt parses with Triton's own ModelConfig schema
and agrees with the bundle's manifest; the ensemble's steps connect; and the repository's data
flow — the Python pre-processing model's step, the repository's own ONNX files in ONNX Runtime
(what Triton's onnxruntime backend runs), the Python post-processing step — equals Segmenter."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from export.triton_repo import ENSEMBLE, PREFIX, write_triton_repo
from omg_rt.backends import GraphRunner
from omg_rt.backends.onnxruntime import OnnxRuntimeGraph
from omg_rt.bundle import load_bundle
from omg_rt.errors import BundleError, InvalidInputError
from omg_rt.results import SegmentationResult
from omg_rt.segmenter import Segmenter
from omg_rt.spec import GRAPHS
from omg_rt.triton_steps import Postprocessor, Preprocessor
from tests.omg_rt.test_runtime_support import scene, tiny_bundle

pb = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                         reason="tritonclient[grpc] is not installed (pip install 'omg-rt[serve]')")
from google.protobuf import text_format  # noqa: E402  (after the skip)

TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return write_triton_repo(tiny_bundle(), tmp_path_factory.mktemp("triton") / "repo",
                             max_batch=8, instances=2)


def _configs(repo: Path) -> dict:
    configs = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), pb.ModelConfig())  # strict: unknown fails
        assert config.name == path.parent.name
        configs[config.name] = config
    return configs


def test_every_config_matches_the_manifest(repo):
    bundle = load_bundle(tiny_bundle())
    configs = _configs(repo)
    assert set(configs) == {PREFIX + g for g in bundle.graphs} | {
        "omg_preprocess", "omg_postprocess", ENSEMBLE}
    for name, entry in bundle.graphs.items():
        config = configs[PREFIX + name]
        assert config.platform == "onnxruntime_onnx"
        assert (repo / config.name / "1" / "model.onnx").is_file()
        batched = config.max_batch_size > 0
        assert batched == (name in ("encoder", "pixel_decoder"))
        assert batched == config.HasField("dynamic_batching")
        assert config.instance_group[0].count == 2
        for tensors, specs in ((config.input, entry.inputs), (config.output, entry.outputs)):
            assert [t.name for t in tensors] == list(specs)
            for tensor in tensors:
                spec = specs[tensor.name]
                assert pb.DataType.Name(tensor.data_type) == TYPES[spec.dtype]
                shape = spec.shape[1:] if batched else spec.shape
                want = [d if isinstance(d, int) else -1 for d in shape] or [1]
                assert list(tensor.dims) == want, (name, tensor.name)
                assert tensor.HasField("reshape") == (not shape)
    assert {g.name for g in GRAPHS} >= set(bundle.graphs)


def test_the_ensemble_connects_every_step(repo):
    configs = _configs(repo)
    ensemble = configs[ENSEMBLE]
    assert ensemble.platform == "ensemble"
    assert (repo / ENSEMBLE / "1").is_dir()
    available = {t.name for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert set(step.input_map) == {t.name for t in model.input}, step.model_name
        assert set(step.input_map.values()) <= available, step.model_name
        assert set(step.output_map) <= {t.name for t in model.output}, step.model_name
        available |= set(step.output_map.values())
    assert {t.name for t in ensemble.output} <= available
    for model in ("omg_preprocess", "omg_postprocess"):
        source = (repo / model / "1" / "model.py").read_text()
        compile(source, model, "exec")
        assert (repo / model / "1" / "assets" / "manifest.json").is_file()


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_the_repositorys_data_flow_equals_the_segmenter(repo, task, tmp_path):
    image = scene(11, (90, 130))
    path = tmp_path / "in.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    pre = Preprocessor(repo / "omg_preprocess" / "1" / "assets")(path.read_bytes())
    configs = _configs(repo)
    graphs = {}
    for g in GRAPHS:
        model = repo / (PREFIX + g.name) / "1" / "model.onnx"
        if model.exists():
            graphs[g.name] = GraphRunner(g, OnnxRuntimeGraph(model, providers=[
                "CPUExecutionProvider"]))
    features = graphs["encoder"]({"image": pre["IMAGE_TENSOR"]})
    pixels = graphs["pixel_decoder"](features)
    out = graphs["query_decoder"]({
        **pixels, "class_bank": pre["CLASS_BANK"], "query_content": pre["QUERY_CONTENT"],
        "query_position": pre["QUERY_POSITION"], "prompt_mode": pre["PROMPT_MODE"].reshape(())})
    assert "prompt_mode" in {t.name for t in configs["omg_query_decoder"].input}
    record = Postprocessor(repo / "omg_postprocess" / "1" / "assets")(
        out["class_logits"], out["mask_logits"], pre["SIZES"], task)
    remote = SegmentationResult.from_wire(record)
    # the repository serves the portable graphs: the Segmenter on the same ones
    here = Segmenter.from_bundle(tiny_bundle(), backend="onnxruntime",
                                 fused_ops=False).segment(image, task)
    assert np.array_equal(remote.masks, here.masks)
    assert np.array_equal(remote.scores, here.scores)
    assert np.array_equal(remote.labels, here.labels)
    assert np.array_equal(remote.ids, here.ids)


def test_bad_requests_and_a_missing_engine_are_clear_errors(repo, tmp_path):
    with pytest.raises(InvalidInputError, match="image: not a decodable image"):
        Preprocessor(repo / "omg_preprocess" / "1" / "assets")(b"nope")
    post = Postprocessor(repo / "omg_postprocess" / "1" / "assets")
    with pytest.raises(InvalidInputError, match="task: expected one of"):
        post(np.zeros((1, 2, 3), np.float32), np.zeros((1, 2, 1, 4, 4), np.float32),
             np.array([16, 16, 16, 16, 16, 16], np.int32), "video")
    with pytest.raises(BundleError, match="no TensorRT plans"):
        write_triton_repo(tiny_bundle(), tmp_path / "trt", backend="tensorrt")
    with pytest.raises(InvalidInputError, match="precision"):
        write_triton_repo(tiny_bundle(), tmp_path / "x", precision="fp8")
