"""Single-graph export details and vocabulary sources: the TensorRT flavour of the deformable
attention, external data, every way ``--vocab`` names a vocabulary, and TensorRT engines."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.engines import engine_key, profile_shapes
from export.graphs import graph_defs
from export.onnx_export import export_graph, op_types
from export.vocab import resolve_vocabulary
from omg_rt.backends import TensorSpec
from omg_rt.errors import InvalidInputError
from omg_rt.manifest import GraphEntry, InputContract
from omg_rt.vocabularies import VOCABULARIES
from omg_rt.vocabulary import split_label
from tests.conftest import seeded_tiny
from training.model import build_model


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def model():
    return seeded_tiny(2)


@pytest.fixture(scope="module")
def defs(model):
    return graph_defs(model)


def test_tensorrt_flavour_replaces_grid_sample_by_the_plugin_node(defs, model, tmp_path):
    portable = op_types(export_graph(defs["pixel_decoder"], tmp_path / "p.onnx"))
    plugin = op_types(export_graph(defs["pixel_decoder"], tmp_path / "t.onnx",
                                   flavour="tensorrt"))
    layers = model.config.pixel_decoder.num_layers
    assert portable.get("GridSample", 0) == 3 * layers  # one per level and layer
    assert "GridSample" not in plugin
    assert plugin["trt::MultiscaleDeformableAttnPlugin_TRT"] == layers
    onnx.checker.check_model(str(tmp_path / "t.onnx"))
    graph = onnx.load(str(tmp_path / "t.onnx")).graph
    producers = {out: n for n in graph.node for out in n.output}
    initializers = {t.name for t in graph.initializer}
    for node in (n for n in graph.node if n.op_type == "MultiscaleDeformableAttnPlugin_TRT"):
        for name in node.input[1:3]:
            # spatial shapes and level starts are int32, as TensorRT's plugin reads them, and
            # computed from the input's shape (dynamic height and width), not frozen constants
            cast = producers[name]
            assert cast.op_type == "Cast" and name not in initializers
            assert cast.attribute[0].i == onnx.TensorProto.INT32
            assert producers[cast.input[0]].op_type != "Constant"


def test_the_flavour_is_restored_after_export(defs, tmp_path):
    import kernels

    before, impl = (kernels.ms_deform_attn, kernels.masked_attention), kernels.get_impl()
    export_graph(defs["pixel_decoder"], tmp_path / "t.onnx", flavour="tensorrt")
    export_graph(defs["query_decoder"], tmp_path / "q.onnx", flavour="fused")
    assert (kernels.ms_deform_attn, kernels.masked_attention) == before
    assert kernels.get_impl() == impl
    ops = [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node]
    assert "MaskedAttention" in ops and "Softmax" not in ops
    with pytest.raises(ValueError, match="flavour"):
        export_graph(defs["pixel_decoder"], tmp_path / "x.onnx", flavour="cuda")


def test_large_graphs_use_external_data_that_onnx_runtime_reads(defs, tmp_path):
    path = export_graph(defs["encoder"], tmp_path / "encoder.onnx", external_data_bytes=0)
    assert (tmp_path / "encoder.onnx.data").stat().st_size > 100_000
    assert path.stat().st_size < 100_000
    image = defs["encoder"].example[0]
    out = ort.InferenceSession(str(path)).run(None, {"image": image.numpy()})
    np.testing.assert_allclose(out[0], defs["encoder"].example_outputs[0].numpy(), atol=1e-5)


def test_shipped_vocabularies_have_the_official_sizes():
    sizes = {k: (len(v.names), v.num_things) for k, v in VOCABULARIES.items()}
    assert sizes == {"coco": (133, 80), "ade": (150, 100), "vipseg": (124, 58),
                     "ytvis": (40, 40)}
    coco = VOCABULARIES["coco"].names
    assert len(split_label(coco[0])) == 17  # the official S = 17 of the COCO bank
    assert max(len(split_label(n)) for n in coco) == 17


def test_names_file_with_stuff_separator(model, tmp_path):
    names = tmp_path / "mine.txt"
    names.write_text("cat,kitty\ndog\n---\nsky\n")
    vocab = resolve_vocabulary(str(names), model, progress=False)
    assert vocab.names == ("cat,kitty", "dog", "sky") and vocab.num_things == 2
    assert vocab.class_bank.shape == (3, 2, 64)
    assert vocab.seen.tolist() == [True, True, True]  # all in the training vocabulary words
    unseen = tmp_path / "odd.json"
    unseen.write_text(json.dumps({"names": ["zorblax"], "num_things": 1}))
    assert resolve_vocabulary(unseen, model, progress=False).seen.tolist() == [False]


def test_precomputed_banks_keep_their_values_and_find_their_names(model, tmp_path):
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((40, 1, 64)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=-1, keepdims=True)
    by_size = tmp_path / "bank.npy"
    np.save(by_size, bank)
    vocab = resolve_vocabulary(by_size, model, progress=False)  # K = 40: YouTube-VIS
    np.testing.assert_array_equal(vocab.class_bank, bank)
    assert vocab.names == VOCABULARIES["ytvis"].names
    official = tmp_path / "convnext_large_d_320_YouTubeVISDataset_2019.pth"
    torch.save(torch.from_numpy(bank), official)
    assert resolve_vocabulary(official, model, progress=False).names == vocab.names
    sidecar = tmp_path / "custom.npy"
    np.save(sidecar, bank[:3])
    (tmp_path / "custom.names.txt").write_text("a\nb\n---\nc\n")
    custom = resolve_vocabulary(sidecar, model, progress=False)
    assert custom.names == ("a", "b", "c") and custom.num_things == 2


def test_bad_banks_and_names_raise_naming_vocab(model, tmp_path):
    with pytest.raises(InvalidInputError, match="vocab: expected one of"):
        resolve_vocabulary("nope", model, progress=False)
    wrong_dim = tmp_path / "w.npy"
    np.save(wrong_dim, np.ones((40, 1, 32), np.float32) / np.sqrt(32))
    with pytest.raises(InvalidInputError, match=r"\(40, S, 64\)"):
        resolve_vocabulary(wrong_dim, model, progress=False)
    not_unit = tmp_path / "n.npy"
    np.save(not_unit, np.ones((40, 1, 64), np.float32))
    with pytest.raises(InvalidInputError, match="unit-norm"):
        resolve_vocabulary(not_unit, model, progress=False)
    no_names = tmp_path / "k7.npy"
    np.save(no_names, np.ones((7, 1, 64), np.float32) / 8)
    with pytest.raises(InvalidInputError, match="k7.names.txt"):
        resolve_vocabulary(no_names, model, progress=False)
    text_less = build_model("tiny", with_text_encoder=False)
    with pytest.raises(InvalidInputError, match="text tower"):
        resolve_vocabulary("coco", text_less, progress=False)


def test_engine_profiles_cover_every_dynamic_axis():
    inputs = {"class_bank": ["K", "S", 64], "query_content": ["B", "Q", 64], "prompt_mode": [],
              "mask_features": ["N", 64, "H/4", "W/4"]}
    entry = GraphEntry("query_decoder", {"fp32": "query_decoder.onnx"},
                       {n: TensorSpec(n, tuple(s), "float32") for n, s in inputs.items()}, {})
    contract = InputContract.for_scales((1024, 1024), (1280, 736))
    shapes = profile_shapes(entry, "h100", {"K": 133, "S": 17, "Q": 300}, contract)
    assert set(shapes) == {"class_bank", "query_content", "mask_features"}
    # height and width in padded pixels divided by the map's stride; opt = a 3:4 photo
    lo, opt, hi = shapes["mask_features"]
    assert lo[2:] == (8, 8) and opt[2:] == (192, 256) and hi[2:] == (320, 320)
    lo, opt, hi = shapes["class_bank"]
    assert lo == (1, 1, 64) and opt == (133, 17, 64) and hi[0] >= 1000
    assert shapes["query_content"][1] == (1, 300, 64)
    assert engine_key("NVIDIA H100 80GB HBM3", (9, 0), "10.9.0") == \
        "nvidia-h100-80gb-hbm3_sm90_trt10.9.0"


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_engines_build_for_every_graph(model, tmp_path):
    from export import build_bundle

    out = build_bundle(model, tmp_path / "b", image_size=64, vocab="ytvis", target="h100",
                       precisions=("fp32", "fp16"), engine=True, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    (record,) = manifest["engines"]
    for graph in manifest["graphs"]:
        for precision in ("fp32", "fp16"):
            assert (out / record["files"][graph][precision]).stat().st_size > 0
    assert (out / record["timing_cache"]).exists()
