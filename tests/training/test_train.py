"""The training loop: a step lowers the loss, a run directory is complete and loadable, a resumed
run repeats the uninterrupted one bit for bit, bad configs and run directories fail clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.cli import main as cli_main
from training.config import TrainConfig, TrainConfigError
from training.data import SceneConfig
from training.data.dataset import collate_samples
from training.default_run import is_complete_run
from training.model import build_model
from training.model.checkpoint import load_checkpoint
from training.train import (
    TrainingError,
    _optimizer,
    build_class_bank_for,
    compute_losses,
    make_criteria,
    prepare_data,
    train,
    train_step,
)


def tiny_config(data_root: Path, **changes) -> TrainConfig:
    """A config that trains in seconds on data shared by every test of this module."""
    base = TrainConfig(
        model="synthetic-tiny", data_root=str(data_root), image_size=64, num_train_images=8,
        num_train_videos=2, train_video_length=4, num_val_images=2, num_val_videos=1,
        val_video_length=4, video_frames=2, batch_size=2, num_prompts=3, num_points=64,
        steps=3, warmup_steps=1, log_every=1, lr=1e-3,
    )
    return base.replace(**changes)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_data")
    prepare_data(tiny_config(root), root)
    return root


def test_training_scenes_may_be_busier_than_the_held_out_ones(tmp_path):
    config = tiny_config(tmp_path, num_train_images=24, num_train_videos=0, num_val_images=24,
                         num_val_videos=0, train_things=(3, 7), ratios={"panoptic": 1.0})
    data = prepare_data(config, tmp_path)
    things = {split: [int((reader[i].labels < data.num_things).sum()) for i in range(24)]
              for split, reader in (("train", data.parts[0].reader), ("val", data.val_images))}
    assert max(things["val"]) <= SceneConfig().max_things < max(things["train"]) <= 7
    assert min(things["train"]) >= 3 > min(things["val"])
    # the data root remembers its recipe: another one is refused, not silently reused
    with pytest.raises(TrainConfigError, match="data_root"):
        prepare_data(config.replace(train_things=(1, 4)), tmp_path)


@pytest.mark.parametrize("task", ["panoptic", "video", "prompt"])
def test_one_step_reduces_the_loss_on_a_fixed_batch(data_root, task):
    config = tiny_config(data_root, lr=1e-4)  # Adam's first step moves every weight by ~lr
    data = prepare_data(config, data_root)
    torch.manual_seed(0)
    model = build_model(config.model).train()
    model.text_encoder.requires_grad_(False)
    bank = build_class_bank_for(model, data.names)
    part = data.parts[["panoptic", "video", "prompt"].index(task)]
    batch = collate_samples([part[0], part[1]])
    assert batch["task"] == task
    criteria = make_criteria(config, len(data.names))
    for criterion in criteria.values():
        # uniform points only: importance sampling picks the points by the current
        # predictions, so the loss would be measured on other points after the step
        criterion.importance_sample_ratio = 0.0
    parameters, optimizer = _optimizer(model, config)

    def loss() -> float:  # the same sampled points every time
        with torch.no_grad():
            losses = compute_losses(model, criteria, batch, bank,
                                    generator=torch.Generator().manual_seed(7))
        return float(losses["loss"])

    before = loss()
    step = train_step(model, criteria, optimizer, batch, bank, config, parameters=parameters,
                      generator=torch.Generator().manual_seed(7))
    assert step["loss"] == pytest.approx(before, rel=1e-5)  # train mode == no-grad loss
    assert loss() < before


def test_run_directory_holds_a_loadable_checkpoint_and_metrics(data_root, tmp_path):
    config = tiny_config(data_root)
    result = train(config, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("checkpoint.safetensors", "config.json", "train_state.pt", "metrics.json",
                 "curve.json", "train.log", "train_config.json", "vocabulary.json"):
        assert (run / name).is_file(), name
    model, spec = load_checkpoint(run)
    assert spec.name == "synthetic-tiny"
    trained = result.model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("pq", "sq", "rq", "prompt_miou", "id_consistency"):
        assert key in metrics
    assert 0 <= metrics["pq"] <= 100 and 0 <= metrics["prompt_miou"] <= 1
    assert metrics["step"] == 3
    vocab = json.loads((run / "vocabulary.json").read_text())
    assert vocab == {"names": ["circle", "square", "triangle", "star", "sky", "grass", "wall"],
                     "num_things": 4}
    curve = json.loads((run / "curve.json").read_text())
    assert [e["step"] for e in curve["train"]] == [1, 2, 3]
    assert curve["eval"][-1]["pq"] == metrics["pq"]
    assert TrainConfig.from_json((run / "train_config.json").read_text()) == config
    assert "step 3/3" in (run / "train.log").read_text()
    # the cache check of training.default_run.ensure_checkpoint
    assert is_complete_run(run, config)
    assert is_complete_run(run, config.replace(data_root="/moved/elsewhere"))
    assert not is_complete_run(run, config.replace(steps=4))
    assert not is_complete_run(run)  # not the synthetic-tiny preset
    assert not is_complete_run(tmp_path / "missing", config)
    # a run written before a config field existed, or by an older model preset, is stale
    older = tmp_path / "older"
    shutil.copytree(run, older)
    saved = json.loads((older / "train_config.json").read_text())
    del saved["position_init_gain"]
    (older / "train_config.json").write_text(json.dumps(saved))
    assert not is_complete_run(older, config)
    shutil.rmtree(older)
    shutil.copytree(run, older)
    spec = json.loads((older / "config.json").read_text())
    spec["query_decoder"]["num_layers"] += 1
    (older / "config.json").write_text(json.dumps(spec))
    assert not is_complete_run(older, config)


def test_resume_repeats_the_uninterrupted_run_bit_for_bit(data_root, tmp_path):
    config = tiny_config(data_root, steps=4)
    whole = train(config, tmp_path / "whole", progress=False)
    interrupted = train(config, tmp_path / "split", progress=False, stop_at=2)
    assert interrupted.step == 2
    resumed = train(config, tmp_path / "split", resume=True, progress=False)
    assert resumed.step == 4
    curve_whole = json.loads((tmp_path / "whole" / "curve.json").read_text())["train"]
    curve_split = json.loads((tmp_path / "split" / "curve.json").read_text())["train"]
    assert [e["step"] for e in curve_split] == [1, 2, 3, 4]
    for a, b in zip(curve_whole, curve_split):
        assert a["loss"] == b["loss"], (a, b)  # exact, not approximate
        assert a["lr"] == b["lr"]
    final_whole = whole.model.state_dict()
    final_split = load_file(str(tmp_path / "split" / "checkpoint.safetensors"))
    assert set(final_whole) == set(final_split)
    for key in final_whole:
        assert torch.equal(final_whole[key], final_split[key]), key


def test_resume_refuses_a_different_config_or_a_missing_state(data_root, tmp_path):
    config = tiny_config(data_root, steps=2)
    train(config, tmp_path / "run", progress=False, stop_at=1)
    with pytest.raises(TrainingError, match="config differs"):
        train(config.replace(lr=5e-4), tmp_path / "run", resume=True, progress=False)
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(config, tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(TrainingError, match="already holds a run"):
        train(config, tmp_path / "run", progress=False)


def test_resume_refuses_weights_that_do_not_match_the_state(data_root, tmp_path):
    config = tiny_config(data_root, steps=2)
    result = train(config, tmp_path / "run", progress=False, stop_at=1)
    from training.model.checkpoint import save_checkpoint

    with torch.no_grad():
        next(result.model.parameters()).add_(1.0)
    save_checkpoint(result.model, tmp_path / "run")  # as if a save was interrupted halfway
    with pytest.raises(TrainingError, match="not the one"):
        train(config, tmp_path / "run", resume=True, progress=False)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"lr": -1.0}, "lr"),
        ({"steps": 0}, "steps"),
        ({"input_size": 60}, "input_size"),
        ({"model": "huge"}, "model"),
        ({"ratios": {"panoptic": 1.0, "depth": 1.0}}, "ratios"),
        ({"ratios": {"video": 1.0}, "num_train_videos": 0}, "ratios"),
        ({"image_scale_range": (1.5, 0.5)}, "image_scale_range"),
        ({"video_frames": 9, "train_video_length": 8}, "video_frames"),
        ({"batch_size": "4"}, "batch_size"),
        ({"train_things": (3, 2)}, "train_things"),
        ({"deterministic": 1}, "deterministic"),
    ],
)
def test_bad_config_fields_raise_a_typed_error_naming_the_field(changes, field):
    with pytest.raises(TrainConfigError, match=rf"\b{field}\b"):
        TrainConfig().replace(**changes)


def test_config_round_trips_through_json_and_rejects_unknown_fields(tmp_path):
    config = TrainConfig(steps=17, ratios={"panoptic": 1.0, "prompt": 2.0})
    assert TrainConfig.from_json(config.to_json()) == config
    with pytest.raises(TrainConfigError, match="unknown fields.*learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(TrainConfigError, match="not valid JSON"):
        TrainConfig.from_file(path)
    assert TrainConfig().with_overrides(["steps=5", "data_root=/x"]).steps == 5


def test_cli_exit_codes_for_bad_configs_and_used_run_directories(data_root, tmp_path, capsys):
    assert cli_main(["--out", str(tmp_path / "a"), "--set", "lr=-3"]) == 2
    assert "lr" in capsys.readouterr().err
    config_file = tmp_path / "run.json"
    config_file.write_text(tiny_config(data_root, steps=1).to_json())
    assert cli_main(["--config", str(config_file), "--out", str(tmp_path / "b"),
                     "--no-progress"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["step"] == 1
    assert cli_main(["--config", str(config_file), "--out", str(tmp_path / "b"),
                     "--no-progress"]) == 3
    assert "already holds a run" in capsys.readouterr().err
