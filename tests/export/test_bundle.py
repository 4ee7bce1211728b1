"""``export.build_bundle`` on the tiny preset: the bundle is complete, hashed, checked, and its
graphs match PyTorch in ONNX Runtime for every task, with really dynamic prompt / class axes."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from export import ParityError, build_bundle
from export.precision import mask_feature_products
from export.verify import SENSITIVITY_FACTOR, TOLERANCES
from omg_rt.errors import InvalidInputError
from omg_rt.manifest import FORMAT_VERSION, check_files
from omg_rt.preprocess import prepare_image
from omg_rt.spec import GRAPHS
from tests.conftest import OFFICIAL_FIXTURES, seeded_tiny


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield
SIZE = 128


@pytest.fixture(scope="module")
def model():
    return seeded_tiny(0)


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    return build_bundle(model, out, image_size=SIZE, vocab="ytvis",
                        precisions=("fp32", "fp16", "int8"), progress=False)


@pytest.fixture(scope="module")
def manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


@pytest.fixture(scope="module")
def report(bundle):
    return json.loads((bundle / "verify.json").read_text())


def _session(bundle, manifest, graph, precision="fp32"):
    path = bundle / manifest["graphs"][graph]["files"][precision]
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, **feeds):
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def test_bundle_holds_every_graph_and_the_manifest_hashes_every_file(bundle, manifest):
    assert set(manifest["graphs"]) == {g.name for g in GRAPHS}
    for name in ("queries.npz", "vocab.npz", "verify.json",
                 "tokenizer/bpe_simple_vocab_16e6.txt.gz"):
        assert name in manifest["files"]
    assert check_files(bundle) == []
    assert manifest["precisions"] == ["fp32", "fp16", "int8"]
    assert manifest["format_version"] == FORMAT_VERSION
    # images resized into the (SIZE, SIZE) box, padded to 32 only: any H x W up to max_hw
    assert manifest["input"]["image_scale"] == [SIZE, SIZE]
    assert manifest["input"]["fixed_hw"] is None
    assert manifest["input"]["max_hw"][0] >= SIZE
    assert manifest["opset"] >= 17
    assert set(manifest["tools"]) >= {"torch", "onnx", "onnxruntime", "onnxslim"}


def test_a_changed_file_fails_the_hash_check(bundle, tmp_path):
    copy = shutil.copytree(bundle, tmp_path / "copy")
    with open(copy / "queries.npz", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    (copy / "extra.bin").write_bytes(b"x")
    assert sorted(check_files(copy)) == ["extra.bin: not in the manifest",
                                          "queries.npz: sha256 mismatch"]


def test_graphs_pass_the_checker_and_keep_the_spec_names_shapes_and_dtypes(bundle, manifest):
    for graph in GRAPHS:
        entry = manifest["graphs"][graph.name]
        for path in set(entry["files"].values()):
            onnx.checker.check_model(str(bundle / path))
        model = onnx.load(str(bundle / entry["files"]["fp32"]))
        assert tuple(i.name for i in model.graph.input) == graph.inputs
        assert tuple(o.name for o in model.graph.output) == graph.outputs
        assert list(entry["inputs"]) == list(graph.inputs)
    qd = manifest["graphs"]["query_decoder"]
    assert qd["inputs"]["class_bank"]["shape"][:2] == ["K", "S"]
    assert qd["inputs"]["query_content"]["shape"][:2] == ["B", "Q"]
    assert qd["inputs"]["prompt_mode"] == {"shape": [], "dtype": "bool"}
    assert qd["outputs"]["mask_logits"]["shape"] == ["B", "Q", "T", "H/4", "W/4"]
    assert qd["inputs"]["memory_s32"]["shape"][2:] == ["H/32", "W/32"]
    assert manifest["graphs"]["encoder"]["inputs"]["image"]["shape"] == ["N", 3, "H", "W"]
    assert manifest["graphs"]["text_encoder"]["inputs"]["token_ids"]["dtype"] == "int64"


def test_vocabulary_and_queries_files_hold_what_the_manifest_says(bundle, manifest, model):
    vocab = np.load(bundle / "vocab.npz")
    assert vocab["class_bank"].shape == (40, 1, 64) and vocab["class_bank"].dtype == np.float32
    assert list(vocab["names"]) == manifest["vocabulary"]["names"]
    assert int(vocab["num_things"]) == 40 and vocab["seen"].all()
    queries = np.load(bundle / "queries.npz")
    np.testing.assert_array_equal(queries["query_content"],
                                  model.query_decoder.query_feat.weight.numpy())
    np.testing.assert_array_equal(queries["query_position"],
                                  model.query_decoder.query_embed.weight.numpy())


def test_fp32_parity_report_is_within_tolerance_for_every_task(report):
    fp32 = report["precisions"]["fp32"]
    assert fp32["passed"] and fp32["failures"] == []
    assert set(fp32["tasks"]) == {"panoptic", "instance", "semantic", "prompts", "video"}
    for task in fp32["tasks"].values():
        assert task["class_logits_max_abs"] <= TOLERANCES["fp32"]["logit_atol"]
        assert task["mask_iou"] >= 0.999 and task["top_class_agreement"] == 1.0
    assert fp32["tasks"]["prompts"]["prompt_mask_iou"] >= 0.999
    assert fp32["tasks"]["prompts"]["prompts"] == 16
    for outputs in fp32["graphs"].values():
        for err in outputs.values():
            assert err["max_abs"] <= 1e-4 * max(1.0, err["ref_max_abs"])
    # the tiny model is continuous at float32 level: its query decoder keeps the plain tolerance
    assert report["sensitivity"]["factor"] == SENSITIVITY_FACTOR
    qd = fp32["logit_bounds"]["query_decoder.class_logits"]
    assert qd["rule"] == "tolerance" and qd["passed"] and qd["sensitivity"] > 0


def test_real_image_end_to_end_matches_pytorch(bundle, manifest, model):
    image = cv2.imread(str(OFFICIAL_FIXTURES / "official_golden" / "image.png"))[..., ::-1]
    prepared = prepare_image(np.ascontiguousarray(image), scale=(SIZE, SIZE))
    tensor = np.zeros((1, 3, SIZE, SIZE), np.float32)
    tensor[..., : prepared.padded_hw[0], : prepared.padded_hw[1]] = prepared.tensor
    bank = np.load(bundle / "vocab.npz")["class_bank"]
    queries = np.load(bundle / "queries.npz")
    features = _run(_session(bundle, manifest, "encoder"), image=tensor)
    pixels = _run(_session(bundle, manifest, "pixel_decoder"), **features)
    out = _run(_session(bundle, manifest, "query_decoder"), **pixels, class_bank=bank,
               query_content=queries["query_content"][None],
               query_position=queries["query_position"][None], prompt_mode=np.array(False))
    ref = model(torch.from_numpy(tensor), torch.from_numpy(bank))[-1]
    np.testing.assert_allclose(out["class_logits"], ref.class_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["mask_logits"], ref.mask_logits.numpy(), atol=1e-4)
    agree = (out["mask_logits"] > 0) == (ref.mask_logits.numpy() > 0)
    assert agree.mean() >= 0.999


def _decode_prompts(bundle, manifest, graph, **feeds):
    """Prompt queries through ``graph``: the prompt decoder, or the query decoder in prompt mode."""
    if graph == "query_decoder":
        feeds["prompt_mode"] = np.array(True)
    return _run(_session(bundle, manifest, graph), **feeds)


@pytest.mark.parametrize("graph", ["query_decoder", "prompt_decoder"])
@pytest.mark.parametrize("prompts", [1, 3, 16])
@pytest.mark.parametrize("classes", [5, 50])
def test_prompt_and_class_axes_are_dynamic(bundle, manifest, model, prompts, classes, graph):
    g = torch.Generator().manual_seed(prompts * 100 + classes)
    image = torch.randn(1, 3, SIZE, SIZE, generator=g)
    xy = torch.rand(1, prompts, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + 8 + torch.rand(1, prompts, 2, generator=g) * 40], -1)
    size = torch.tensor([[SIZE, SIZE]], dtype=torch.float32)
    bank = F.normalize(torch.randn(classes, 2, 64, generator=g), dim=-1)
    prompt_q = _run(_session(bundle, manifest, "prompt_encoder"), prompt_boxes=boxes.numpy(),
                    image_size=size.numpy())
    pixels = _run(_session(bundle, manifest, "pixel_decoder"),
                  **_run(_session(bundle, manifest, "encoder"), image=image.numpy()))
    out = _decode_prompts(bundle, manifest, graph, **pixels, class_bank=bank.numpy(), **prompt_q)
    ref = model(image, bank, prompt_boxes=boxes, image_size=size)[-1]
    assert out["class_logits"].shape == (1, prompts, classes + 1)
    assert out["mask_logits"].shape == (1, prompts, 1, SIZE // 4, SIZE // 4)
    np.testing.assert_allclose(out["class_logits"], ref.class_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["mask_logits"], ref.mask_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["iou_logits"], ref.iou_logits.numpy(), atol=1e-5)


@pytest.mark.parametrize("graph", ["query_decoder", "prompt_decoder"])
def test_padded_prompts_do_not_change_the_real_ones(bundle, manifest, graph):
    rng = np.random.default_rng(3)
    image = rng.standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    boxes = np.array([[[10, 12, 60, 70], [30, 5, 90, 40]]], np.float32)
    padded = np.concatenate([boxes, np.zeros((1, 5, 4), np.float32)], axis=1)  # SAM's label -1
    size = np.array([[SIZE, SIZE]], np.float32)
    pixels = _run(_session(bundle, manifest, "pixel_decoder"),
                  **_run(_session(bundle, manifest, "encoder"), image=image))
    bank = np.load(bundle / "vocab.npz")["class_bank"]
    outs = []
    for b in (boxes, padded):
        q = _run(_session(bundle, manifest, "prompt_encoder"), prompt_boxes=b, image_size=size)
        outs.append(_decode_prompts(bundle, manifest, graph, **pixels, class_bank=bank, **q))
    np.testing.assert_allclose(outs[1]["mask_logits"][:, :2], outs[0]["mask_logits"], atol=1e-5)
    np.testing.assert_allclose(outs[1]["class_logits"][:, :2], outs[0]["class_logits"],
                               atol=1e-4)


def test_two_frame_clip_decodes_as_one_tube(bundle, manifest, model):
    g = torch.Generator().manual_seed(5)
    frames = torch.randn(2, 3, SIZE, SIZE, generator=g)
    bank = torch.from_numpy(np.load(bundle / "vocab.npz")["class_bank"])
    queries = np.load(bundle / "queries.npz")
    pixels = _run(_session(bundle, manifest, "pixel_decoder"),
                  **_run(_session(bundle, manifest, "encoder"), image=frames.numpy()))
    out = _run(_session(bundle, manifest, "query_decoder"), **pixels, class_bank=bank.numpy(),
               query_content=queries["query_content"][None],
               query_position=queries["query_position"][None], prompt_mode=np.array(False))
    ref = model(frames, bank, num_frames=2)[-1]
    assert out["mask_logits"].shape[2] == 2
    np.testing.assert_allclose(out["mask_logits"], ref.mask_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["class_logits"], ref.class_logits.numpy(), atol=1e-4)


def test_text_encoder_graph_embeds_new_names_like_pytorch(bundle, manifest, model):
    tokens = model.text_encoder.tokenize(["a photo of a zebra.", "There is a kite", "sky"])
    out = _run(_session(bundle, manifest, "text_encoder"), token_ids=tokens.numpy())
    np.testing.assert_allclose(out["text_embeddings"], model.text_encoder(tokens).numpy(),
                               atol=1e-5)


def test_fp16_keeps_fp32_io_and_islands_and_mask_iou(bundle, manifest, report):
    assert report["precisions"]["fp16"]["passed"]
    for task in report["precisions"]["fp16"]["tasks"].values():
        assert task["mask_iou"] >= TOLERANCES["fp16"]["mask_iou"]
    path = bundle / manifest["graphs"]["encoder"]["files"]["fp16"]
    assert path.parent.name == "fp16"
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    halves = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    assert halves, "the convolutions' weights are FP16"
    norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    assert norms and all(n.input[1] not in halves for n in norms), "LayerNorm stays FP32"
    # The products with the mask features (mask logits: 1 + one per layer; mask pooling) read
    # FP32 tensors in the FP16 query decoder: no Cast to FP16 feeds them.
    fp32 = onnx.load(str(bundle / manifest["graphs"]["query_decoder"]["files"]["fp32"])).graph
    names = mask_feature_products(fp32)
    layers = manifest["model"]["query_decoder"]["num_layers"]
    assert len(names) == layers + 2, names
    half = onnx.load(str(bundle / manifest["graphs"]["query_decoder"]["files"]["fp16"])).graph
    producers = {out: node for node in half.node for out in node.output}
    products = [n for n in half.node if n.name in names]
    assert len(products) == len(names)
    for node in products:
        for name in node.input:
            cast = producers.get(name)
            assert cast is None or cast.op_type != "Cast" or cast.attribute[0].i != \
                onnx.TensorProto.FLOAT16, (node.name, name)


def test_int8_bundle_runs_and_reports_its_metric_drop(bundle, manifest, report):
    path = bundle / manifest["graphs"]["encoder"]["files"]["int8"]
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert manifest["graphs"]["query_decoder"]["files"]["int8"] == "query_decoder.onnx"
    features = _run(_session(bundle, manifest, "encoder", "int8"),
                    image=np.zeros((1, 3, SIZE, SIZE), np.float32))
    assert np.isfinite(features["features_s32"]).all()
    metric = report["precisions"]["int8"]["held_out_metric"]
    assert metric["images"] >= 4 and np.isfinite(metric["drop"])
    assert metric["drop"] == pytest.approx(metric["fp32"] - metric["value"])
    assert 0.0 <= metric["value"] <= 1.0


def test_bad_arguments_raise_typed_errors_naming_them(model, tmp_path):
    with pytest.raises(InvalidInputError, match="image_size"):
        build_bundle(model, tmp_path / "a", image_size=100)
    with pytest.raises(InvalidInputError, match="precisions"):
        build_bundle(model, tmp_path / "a", precisions=("fp64",))
    with pytest.raises(InvalidInputError, match="target"):
        build_bundle(model, tmp_path / "a", target="tpu")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="out_dir"):
        build_bundle(model, tmp_path / "notes", image_size=64, verify=False)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_parity_error_carries_the_report():
    error = ParityError("outside tolerance", {"passed": False})
    assert error.report == {"passed": False} and "outside tolerance" in str(error)
