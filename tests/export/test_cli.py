"""``omg-export`` on a tiny checkpoint of ours: exit codes, the summary, the TensorRT message."""

from __future__ import annotations

import json

import pytest

from export.cli import main
from omg_rt.errors import ExitCode
from omg_rt.manifest import check_files
from tests.conftest import _has_tensorrt, seeded_tiny
from training.model.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(seeded_tiny(1), tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed here: engines get built")
def test_engine_without_tensorrt_writes_the_bundle_and_exits_with_the_reason(
        checkpoint, tmp_path, capsys):
    out = tmp_path / "bundle"
    code = main([str(checkpoint), "-o", str(out), "--image-size", "64", "--vocab", "ytvis",
                 "--engine", "--no-verify"])
    captured = capsys.readouterr()
    assert code == ExitCode.BACKEND
    assert "TensorRT is not installed" in captured.err and "no engines were built" in captured.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engines"] == [] and not (out / "engines").exists()
    assert check_files(out) == []
    assert "query_decoder" in captured.out and "verification: skipped" in captured.out


def test_cli_exports_verifies_and_prints_the_summary_table(checkpoint, tmp_path, capsys):
    out = tmp_path / "b"
    code = main([str(checkpoint), "-o", str(out), "--image-size", "64", "--vocab", "ytvis",
                 "--target", "h100"])
    captured = capsys.readouterr()
    assert code == ExitCode.OK, captured.err
    assert "verification (ONNX Runtime vs PyTorch)" in captured.out
    assert "fp32" in captured.out and " yes " in captured.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "h100" and manifest["deform_attn"] == "trt_plugin"
    trt_file = manifest["graphs"]["pixel_decoder"]["tensorrt_files"]["fp32"]
    assert (out / trt_file).exists() and trt_file in manifest["files"]


def test_bad_input_exits_with_the_input_code_naming_the_problem(checkpoint, tmp_path, capsys):
    assert main([str(tmp_path / "missing.pth"), "-o", str(tmp_path / "x")]) == ExitCode.INPUT
    assert "does not exist" in capsys.readouterr().err
    code = main([str(checkpoint), "-o", str(tmp_path / "x"), "--precision", "fp32,fp64"])
    assert code == ExitCode.INPUT
    assert "precisions" in capsys.readouterr().err
    code = main([str(checkpoint), "-o", str(tmp_path / "x"), "--vocab", "klingon"])
    assert code == ExitCode.INPUT
    assert "vocab" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "exit codes" in text and "--engine" in text and str(ExitCode.BACKEND) in text


@pytest.mark.parametrize("module", ["omg_rt.cli", "export.cli", "training.cli", "benchmarks.cli"])
def test_every_command_prints_the_one_exit_code_table(module, capsys):
    """omg-rt, omg-export, omg-train and omg-bench: the same codes mean the same things, and each
    --help shows the table."""
    import importlib

    from omg_rt.errors import EXIT_CODES_HELP, ExitCode

    cli = importlib.import_module(module)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert " ".join(EXIT_CODES_HELP.split()) in text
    assert [c.value for c in ExitCode] == list(range(7))


def test_a_training_run_exports_with_its_own_vocabulary_by_default(checkpoint, tmp_path):
    from export.cli import default_vocab

    assert default_vocab(str(checkpoint)) == "coco"  # no training vocabulary: COCO
    names = {"names": ["circle", "square", "sky"], "num_things": 2}
    (checkpoint / "vocabulary.json").write_text(json.dumps(names))
    try:
        out = tmp_path / "bundle"
        assert main([str(checkpoint), "-o", str(out), "--image-size", "64", "--no-verify"]) == 0
        vocabulary = json.loads((out / "manifest.json").read_text())["vocabulary"]
        assert vocabulary["names"] == names["names"] and vocabulary["num_things"] == 2
    finally:
        (checkpoint / "vocabulary.json").unlink()
