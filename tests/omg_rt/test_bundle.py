"""Bundle reading: the manifest, sha256 verification naming the file, and typed errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from omg_rt.bundle import load_bundle
from omg_rt.errors import BundleError
from omg_rt.spec import GRAPHS, QUERY_DECODER
from tests.omg_rt.test_runtime_support import IMAGE_SIZE, NAMES, copy_bundle, tiny_bundle


def test_a_bundle_loads_with_its_spec_graphs_queries_and_vocabulary():
    bundle = load_bundle(tiny_bundle())
    # images resized into the (S, S) box and padded to 32 only; graphs take any such size
    assert bundle.input.image_scale == (IMAGE_SIZE, IMAGE_SIZE)
    assert bundle.input.fixed_hw is None and bundle.input.size_divisor == 32
    assert bundle.input.max_hw[0] >= max(*bundle.input.image_scale, *bundle.input.video_scale)
    assert set(bundle.graphs) == {g.name for g in GRAPHS}
    assert set(bundle.graphs[QUERY_DECODER.name].inputs) == set(QUERY_DECODER.inputs)
    q, c = bundle.spec.query_decoder.num_queries, bundle.spec.query_decoder.embed_dim
    assert bundle.query_content.shape == bundle.query_position.shape == (q, c)
    assert bundle.vocabulary.names == NAMES
    assert bundle.vocabulary.class_bank.shape[0] == len(NAMES)
    assert bundle.tokenizer_file is not None and bundle.tokenizer_file.is_file()
    assert len(bundle.identity) == 16
    assert bundle.graph_file("encoder", "fp32").is_file()


def test_identity_changes_when_any_file_changes(tmp_path):
    bundle = copy_bundle(tmp_path / "b")
    before = load_bundle(bundle).identity
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["queries.npz"] = "0" * 64
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(bundle, verify=False).identity != before


@pytest.mark.parametrize("victim", ["encoder.onnx", "vocab.npz", "queries.npz"])
def test_altered_files_are_named_in_the_error(tmp_path, victim):
    bundle = copy_bundle(tmp_path / "b")
    path = bundle / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{victim} does not match its manifest checksum"):
        load_bundle(bundle)
    if victim.endswith(".onnx"):
        load_bundle(bundle, verify=False)  # the checksum is what rejects it
    else:  # arrays are read at load: still a BundleError, never a zipfile error
        with pytest.raises(BundleError, match=victim):
            load_bundle(bundle, verify=False)


def test_missing_and_unlisted_files_are_errors(tmp_path):
    bundle = copy_bundle(tmp_path / "b")
    (bundle / "clip_head.onnx").unlink()
    with pytest.raises(BundleError, match="clip_head.onnx is listed in the manifest but missing"):
        load_bundle(bundle)
    bundle = copy_bundle(tmp_path / "c")
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["files"]["vocab.npz"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="vocab.npz is used but not listed"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(schema_version=99), "schema_version 99 is not supported"),
        (lambda m: m["input"].update(max_hw=[128]), r"input.max_hw: expected \[int, int\]"),
        (lambda m: m["input"].update(min_hw=[4096, 4096]), "min_hw .* exceeds max_hw"),
        (lambda m: m["input"].update(crop=True), r"unknown keys \['crop'\]"),
        (lambda m: m.update(format_version=2), "format_version 2 .* re-export"),
        (lambda m: m.update(format_version=4), "format_version 4 .* upgrade omg-rt"),
        (lambda m: m["graphs"].update(mystery={**m["graphs"]["clip_head"],
                                               "files": {"fp32": "x.onnx"}}),
         "x.onnx is used but not listed"),
        (lambda m: m["graphs"].update(clip_head={"files": {"fp32": "clip_head.onnx"}}),
         r"graphs.clip_head.\w+: missing"),
        (lambda m: m["graphs"]["encoder"]["files"].update(fp8="e.onnx"),
         r"graphs.encoder.files: expected \{precision: path\}"),
        (lambda m: m.update(preprocess={}), r"unknown keys \['preprocess'\]"),
        (lambda m: m["vocabulary"].update(num_things="all"), r"vocabulary.num_things: expected int"),
        (lambda m: m["model"].update(name=3, bogus=1), "invalid model spec"),
    ],
)
def test_malformed_manifests_raise_bundle_errors(tmp_path, edit, message):
    bundle = copy_bundle(tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle, verify=False)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{nope")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)


def test_vocabulary_bank_is_unit_norm():
    bank = load_bundle(tiny_bundle()).vocabulary.class_bank
    np.testing.assert_allclose(np.linalg.norm(bank, axis=-1), 1.0, atol=1e-5)
