"""Multi-process training: ``torchrun --nproc_per_node 2`` (gloo on the CPU) for a few steps
leaves bit-identical weights on both ranks, although each rank trains on different batches.

Run by pytest, this file launches itself under torchrun; each worker trains and writes its own
in-memory weights next to the run for the test to compare.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_processes_end_with_identical_weights(tmp_path):
    from training.config import TrainConfig

    config = TrainConfig(
        model="synthetic-tiny", data_root=str(tmp_path / "data"), image_size=64,
        num_train_images=8, num_train_videos=2, train_video_length=4, num_val_images=1,
        num_val_videos=1, val_video_length=3, video_frames=2, batch_size=2, num_prompts=2,
        num_points=64, steps=3, warmup_steps=1, log_every=1, lr=1e-3, threads=1,
    )
    config_file = tmp_path / "run.json"
    config_file.write_text(config.to_json())
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         __file__, str(config_file), str(run)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rank0 = load_file(str(run / "rank0.safetensors"))
    rank1 = load_file(str(run / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    saved = load_file(str(run / "checkpoint.safetensors"))
    for key in rank0:
        assert torch.equal(rank0[key], saved[key]), key
    # The ranks did train (on different batches): the weights moved from the seeded start.
    torch.manual_seed(config.seed)
    from training.model import build_model

    initial = build_model(config.model).state_dict()
    assert any(not torch.equal(initial[k], rank0[k]) for k in rank0)
    log = (run / "train.log").read_text()
    assert "2 process(es)" in log
    assert json.loads((run / "metrics.json").read_text())["step"] == 3


def _worker(config_file: str, run: str) -> None:
    from training.config import TrainConfig
    from training.distributed import cleanup, setup
    from training.train import train

    info = setup()
    assert info.world_size == 2
    result = train(TrainConfig.from_file(config_file), run, dist_info=info, progress=False)
    state = {k: v.detach().contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(Path(run) / f"rank{info.rank}.safetensors"))
    cleanup()


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
