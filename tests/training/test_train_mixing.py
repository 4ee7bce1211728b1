"""``omg-train`` on real dataset formats mixed with the synthetic world, as OMG-Seg's joint
training mixes COCO, YouTube-VIS and VIPSeg: one merged vocabulary (a class shared by name takes
one index), each dataset's labels relabelled into it, image datasets feeding the panoptic and
prompt batches, video datasets the video batches, weighted by task and then by dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.training.test_data_readers_datasets import write_ade, write_davis, write_vipseg
from tests.training.test_train import tiny_config
from training.config import TrainConfig, TrainConfigError
from training.data import Categories
from training.data.dataset import ImageDataset, PromptDataset, VideoDataset
from training.data.mixing import merge_categories
from training.train import prepare_data, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The tiny ADE20K, DAVIS and VIPSeg folders of the reader tests (their ``val`` splits)."""
    base = tmp_path_factory.mktemp("real")
    ade_images, _, _ = write_ade(base / "ade")
    davis_root, _ = write_davis(base / "davis")
    write_vipseg(base / "vipseg", official=True)
    return {"ade20k": ade_images.parent.parent, "davis17": davis_root,
            "vipseg": base / "vipseg"}


def _entries(folders, **ratios) -> tuple[dict, ...]:
    return tuple({"dataset": name, "root": str(root), "split": "val",
                  "ratio": ratios.get(name, 1.0)} for name, root in folders.items())


def test_class_lists_merge_by_name_things_first():
    coco = Categories(("person", "car", "sky", "wall"), (1, 3, 50, 60), 2)
    ade = Categories(("person", "bed", "wall", "floor"), (13, 8, 1, 4), 2)
    odd = Categories(("sky", "wall"), (1, 2), 1)  # "sky" a thing here: things win
    merged, maps = merge_categories([coco, ade, odd])
    assert merged.names == ("person", "car", "bed", "sky", "wall", "floor")
    assert merged.num_things == 4
    assert [m.tolist() for m in maps] == [[0, 1, 3, 4], [0, 2, 4, 5], [3, 4]]


def test_the_mix_relabels_each_dataset_into_one_vocabulary(folders, tmp_path):
    config = tiny_config(tmp_path / "world", datasets=(
        {"dataset": "synthetic"}, *_entries(folders, vipseg=3.0)))
    data = prepare_data(config, tmp_path)
    names = list(data.names)
    assert len(set(names)) == len(names)
    # every dataset's records name the same classes, now by their merged index; a thing of
    # its dataset is a thing of the mix
    for part in data.parts:
        record = part.reader[0]
        source = part.reader.reader
        original = source[0]
        assert [names[k] for k in record.labels] == [source.categories.names[k]
                                                     for k in original.labels]
        is_thing = original.labels < source.categories.num_things
        assert (record.labels[is_thing] < data.num_things).all()
    assert names.count("wall") == 1  # the world's, ADE20K's and VIPSeg's "wall"
    kinds = [(type(p).__name__, type(p.reader.reader).__name__) for p in data.parts]
    assert kinds == [
        ("ImageDataset", "CocoPanopticReader"), ("ImageDataset", "ADE20KReader"),
        ("VideoDataset", "YouTubeVISReader"), ("VideoDataset", "DAVISReader"),
        ("VideoDataset", "VIPSegReader"),
        ("PromptDataset", "CocoPanopticReader"), ("PromptDataset", "ADE20KReader")]
    # the task ratios hold; inside a task the datasets split it by their own ratios
    weights = dict(zip(kinds, data.weights, strict=True))
    ratios = config.ratios
    assert sum(data.weights) == pytest.approx(sum(ratios.values()))
    assert weights[("VideoDataset", "VIPSegReader")] == pytest.approx(ratios["video"] * 3 / 5)
    assert weights[("ImageDataset", "ADE20KReader")] == pytest.approx(ratios["panoptic"] / 2)
    # VIPSeg's one-frame video is too short for a 2-frame clip: left out, the other stays
    vipseg = data.parts[4]
    assert isinstance(vipseg, VideoDataset) and len(vipseg) == 1
    sample = vipseg[0]
    assert sample["frames"].shape[0] == config.video_frames
    assert int(sample["labels"].max()) < len(names)
    assert isinstance(data.parts[1], ImageDataset) and isinstance(data.parts[6], PromptDataset)


def test_training_on_the_mix_writes_the_merged_vocabulary(folders, tmp_path):
    config = tiny_config(tmp_path / "world", steps=4, datasets=(
        {"dataset": "synthetic"}, *_entries(folders)))
    train(config, tmp_path / "run", progress=False)
    vocab = json.loads((tmp_path / "run" / "vocabulary.json").read_text())
    data = prepare_data(config, tmp_path)
    assert vocab == {"names": list(data.names), "num_things": data.num_things}
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "pq" in metrics  # the world is in the mix: its val split is the held-out set
    assert TrainConfig.from_json((tmp_path / "run" / "train_config.json").read_text()) == config


def test_real_data_alone_trains_without_the_world(folders, tmp_path):
    config = tiny_config(tmp_path / "world", steps=2, datasets=_entries(folders))
    result = train(config, tmp_path / "run", progress=False)
    assert result.step == 2
    assert not (tmp_path / "world").exists()  # nothing generated
    assert "pq" not in json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert np.isfinite(json.loads((tmp_path / "run" / "curve.json").read_text())
                       ["train"][-1]["loss"])


def test_a_missing_dataset_folder_is_a_config_error_naming_it(folders, tmp_path):
    config = tiny_config(tmp_path, datasets=(
        {"dataset": "vipseg", "root": str(tmp_path / "nowhere")},))
    with pytest.raises(TrainConfigError, match="vipseg.*no vipseg layout found"):
        prepare_data(config, tmp_path)
    only_images = tiny_config(tmp_path, ratios={"video": 1.0}, datasets=(
        {"dataset": "ade20k", "root": str(folders["ade20k"]), "split": "val"},))
    with pytest.raises(TrainConfigError, match="no batches to draw"):
        prepare_data(only_images, tmp_path)
