"""``export.verify``'s query-decoder logit gate: the bound is the tolerance, or 10x PyTorch's own
movement under float32-level input noise when that is larger; the report says which and why, and a
wrong graph still fails. Tiny preset, only the query decoder exported (the other graphs run in
PyTorch on both sides)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import export.verify as verify_mod
from export.graphs import graph_defs
from export.onnx_export import export_graph
from export.verify import (
    SENSITIVITY_FACTOR,
    TOLERANCES,
    Verifier,
    check_precision,
    gate,
    logit_bounds,
    ort_runners,
)
from omg_rt.spec import QUERY_DECODER
from tests.conftest import seeded_tiny

SIZE = 64
NUM_THINGS = 20
QD = QUERY_DECODER.name


@pytest.fixture(scope="module")
def model():
    return seeded_tiny(0).requires_grad_(False)


@pytest.fixture(scope="module")
def defs(model):
    return graph_defs(model)


@pytest.fixture(scope="module")
def query_decoder_file(defs, tmp_path_factory):
    return export_graph(defs[QD], tmp_path_factory.mktemp("verify") / f"{QD}.onnx")


@pytest.fixture(scope="module")
def verifier(model, defs):
    """Caches the PyTorch side (references, sensitivities) across the tests that share it."""
    return _verifier(model, defs)


def _verifier(model, defs) -> Verifier:
    bank = np.random.default_rng(0).standard_normal((40, 1, 64)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=-1, keepdims=True)
    learned = tuple(q[0].detach().numpy() for q in model.learned_queries(1))
    return Verifier(defs, model.config, bank, learned, NUM_THINGS, SIZE, progress=False)


def _onnx_query_decoder(verifier: Verifier, path):
    """ONNX Runtime for the query decoder, PyTorch for every other graph."""
    return {**verifier.reference, **ort_runners({QD: path})}


def test_stable_pytorch_keeps_the_plain_tolerance_and_records_its_sensitivity(
        verifier, query_decoder_file):
    entry = check_precision(verifier, "fp32", _onnx_query_decoder(verifier, query_decoder_file))
    assert entry["passed"], entry["failures"]
    err = entry["graphs"][QD]["class_logits"]
    assert 0 < err["self_sensitivity_max_abs"] and err["self_sensitivity_max_rel"] < 1e-5
    assert len(err["cases"]) == 2  # learned queries, prompts
    bound = entry["logit_bounds"][f"{QD}.class_logits"]
    case = err["cases"][bound["case"]]
    assert bound["rule"] == "tolerance" and bound["passed"]
    assert bound["tolerance"] == TOLERANCES["fp32"]["logit_atol"] * max(1.0, case["ref_max_abs"])
    assert bound["sensitivity"] == SENSITIVITY_FACTOR * case["self_sensitivity_max_abs"]
    assert bound["bound"] == bound["tolerance"] and bound["max_abs"] == case["max_abs"]
    assert "self_sensitivity_max_abs" not in entry["graphs"]["encoder"]["features_s4"]
    assert entry["logit_bounds"]["encoder.features_s4"]["sensitivity"] == 0.0


def test_when_pytorch_itself_moves_beyond_the_tolerance_the_bound_is_k_times_that(
        model, defs, query_decoder_file, monkeypatch):
    # A large perturbation stands in for a discontinuous model (random official-layout weights,
    # where 1e-6 noise already flips masked-attention entries).
    # (The graph checks only: the task checks do not depend on the sensitivity.)
    monkeypatch.setattr(verify_mod, "SENSITIVITY_REL", 1e-2)
    verifier = _verifier(model, defs)
    graphs = verifier.check_graphs(_onnx_query_decoder(verifier, query_decoder_file))
    assert gate("fp32", graphs, {}) == []
    cases = graphs[QD]["class_logits"]["cases"]
    bounds = logit_bounds("fp32", graphs)
    bound = bounds[f"{QD}.class_logits"]
    assert bound["rule"] == "sensitivity" and bound["sensitivity"] > bound["tolerance"]
    assert bound["bound"] == SENSITIVITY_FACTOR * cases[bound["case"]]["self_sensitivity_max_abs"]
    assert bounds["pixel_decoder.mask_features"]["rule"] == "tolerance"


def test_a_corrupted_query_decoder_fails_the_logit_gate(
        model, verifier, query_decoder_file, tmp_path):
    # The last layer's FFN output weight (ffn_dim, C), 1% too large: the last such MatMul weight
    # in the graph's (topological) node order.
    graph = onnx.load(str(query_decoder_file))
    spec = model.config.query_decoder
    weights = {t.name: t for t in graph.graph.initializer
               if list(t.dims) == [spec.ffn_dim, spec.embed_dim]}
    name = [i for node in graph.graph.node if node.op_type == "MatMul"
            for i in node.input if i in weights][-1]
    weights[name].CopyFrom(numpy_helper.from_array(
        numpy_helper.to_array(weights[name]) * np.float32(1.01), name))
    corrupted = tmp_path / f"{QD}.onnx"
    onnx.save(graph, str(corrupted))
    entry = check_precision(verifier, "fp32", _onnx_query_decoder(verifier, corrupted))
    assert not entry["passed"]
    assert any(f.startswith(f"{QD}.class_logits: max |delta|") for f in entry["failures"])
    bound = entry["logit_bounds"][f"{QD}.class_logits"]
    assert bound["max_abs"] > bound["bound"] > bound["sensitivity"]


def test_each_input_case_is_held_to_its_own_bound():
    def graphs(tight_case_error: float) -> dict:
        # case 0 flips masked attention (PyTorch itself moves by 2.0), case 1 does not
        cases = [{"max_abs": 19.0, "ref_max_abs": 1e5, "self_sensitivity_max_abs": 2.0},
                 {"max_abs": tight_case_error, "ref_max_abs": 1e5,
                  "self_sensitivity_max_abs": 0.01}]
        return {QD: {"class_logits": {"max_abs": max(19.0, tight_case_error), "ref_max_abs": 1e5,
                                      "self_sensitivity_max_abs": 2.0, "cases": cases}}}

    # case 0: max(1e-4 * 1e5, 10 x 2.0) = 20; case 1: max(10, 10 x 0.01) = 10
    passed = logit_bounds("fp32", graphs(9.0))[f"{QD}.class_logits"]
    assert passed == {"max_abs": 19.0, "tolerance": 10.0, "sensitivity": 20.0, "bound": 20.0,
                      "rule": "sensitivity", "case": 0, "passed": True}
    assert gate("fp32", graphs(9.0), {}) == []
    failed = logit_bounds("fp32", graphs(12.0))[f"{QD}.class_logits"]
    assert failed["case"] == 1 and failed["rule"] == "tolerance" and not failed["passed"]
    assert gate("fp32", graphs(12.0), {}) == [
        f"{QD}.class_logits: max |delta| 12 > 10 (input case 1, tolerance)"]
    assert gate("fp32", graphs(9.0) | {"encoder": {"features_s4": {
        "max_abs": 21.0, "ref_max_abs": 1e5}}}, {}) == [
        "encoder.features_s4: max |delta| 21 > 10 (tolerance)"]
    assert logit_bounds("fp16", graphs(12.0)) == {} and gate("fp16", graphs(12.0), {}) == []
