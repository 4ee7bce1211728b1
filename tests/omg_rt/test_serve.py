"""``omg-rt serve`` for real: a Triton Inference Server (PyTriton) on a free loopback port, driven
with ``tritonclient`` through ``omg_rt.client``; every answer equals the in-process Segmenter on
the same bundle; bad requests get typed errors and the server keeps serving; it stops cleanly."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from omg_rt.errors import InvalidInputError
from omg_rt.segmenter import Segmenter
from tests.omg_rt.test_runtime_support import moving_clip, scene, tiny_bundle

REPO = Path(__file__).resolve().parents[2]


def _serve_python() -> tuple[str, str]:
    """The Python that runs ``omg-rt serve`` (``$OMG_RT_SERVE_PYTHON``, else the repository's
    ``.venv-serve`` that ``scripts/setup.sh`` makes: nvidia-pytriton pins numpy < 2, so it gets
    its own venv), and why the tests skip ("" when they run)."""
    python = os.environ.get("OMG_RT_SERVE_PYTHON") or str(REPO / ".venv-serve" / "bin" / "python")
    if not Path(python).is_file():
        return python, (f"no serving venv at {python} (bash scripts/setup.sh makes it from "
                        "Debian's /usr/bin/python3.11)")
    check = subprocess.run(
        [python, "-c", "from omg_rt.serve import check_interpreter; check_interpreter()"],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    if check.returncode:
        return python, f"{python} cannot serve: {check.stderr.strip().splitlines()[-1:]}"
    try:
        import tritonclient.http  # noqa: F401  (the client side, in this venv)
    except ImportError as exc:
        return python, f"tritonclient is not installed here ({exc})"
    return python, ""


SERVE_PYTHON, SKIP = _serve_python()

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(SKIP), reason=SKIP)]
STARTUP_SECONDS = 180


@pytest.fixture(scope="module")
def server():
    """A real ``omg-rt serve`` on free loopback ports (one retry of PyTriton's occasional failed
    start, on new ports); after the module it must stop cleanly on SIGINT, leaving nothing of
    its process group behind."""
    from benchmarks.serve_process import LocalServer, ServerOptions
    from omg_rt.client import Client

    bundle = tiny_bundle()
    options = ServerOptions(workers=2, backend="onnxruntime", python=SERVE_PYTHON,
                            idle_seconds=30)
    with LocalServer(bundle, options, startup_seconds=STARTUP_SECONDS) as running:
        client = Client(running.url)
        yield client, bundle, running.port, running.process
        client.close()
    assert running.exit_code == 0, running.log_tail()
    assert running.left_behind == 0, "processes of omg-rt serve were left behind"


@pytest.fixture(scope="module")
def local(server):
    return Segmenter.from_bundle(server[1], backend="onnxruntime")


def _same(remote, here, what: str) -> None:
    assert remote.task == here.task, what
    assert np.array_equal(remote.masks, here.masks), what
    assert np.array_equal(remote.ids, here.ids), what
    assert np.array_equal(remote.labels, here.labels), what
    assert np.array_equal(remote.scores, here.scores), what
    assert np.array_equal(remote.boxes, here.boxes), what
    assert remote.class_names == here.class_names, what
    assert (remote.id_map is None) == (here.id_map is None), what
    if here.id_map is not None:
        assert np.array_equal(remote.id_map, here.id_map), what
    assert remote.frame_index == here.frame_index, what


def test_image_tasks_equal_the_in_process_segmenter(server, local, tmp_path):
    client = server[0]
    image = scene(3, (90, 130))
    for task in ("panoptic", "instance", "semantic"):
        _same(client.segment(image, task), local.segment(image, task), task)
    path = tmp_path / "photo.png"  # a file goes as its encoded bytes, decoded by the server
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    _same(client.panoptic(path), local.panoptic(image), "panoptic from file bytes")


def test_prompts_reuse_the_servers_encoding_by_image_id(server, local):
    client = server[0]
    image = scene(5, (100, 120))
    handle = client.encode(image)
    assert handle.original_hw == (100, 120)
    for points, boxes in (([[30, 40]], None), (None, [[10, 10, 80, 70]]),
                          ([[30, 40], [90, 20]], [[5, 5, 60, 60]])):
        remote = client.prompt(handle, points=points, boxes=boxes)  # no image sent again
        _same(remote, local.prompt(image, points=points, boxes=boxes), f"{points} {boxes}")


def test_video_streams_equal_the_in_process_session(server, local):
    client = server[0]
    clip = moving_clip(7, hw=(72, 96))
    remote = client.open_video("vis").run(clip)
    here = local.open_video("vis").run(clip)
    assert [r.frame_index for r in remote] == list(range(7))
    for a, b in zip(remote, here, strict=True):
        _same(a, b, f"vis frame {a.frame_index}")
    first = np.zeros((72, 96), np.int32)
    first[10:40, 20:50] = 3
    remote = client.open_video("vos", first_mask=first).run(clip)
    here = local.open_video("vos", first_mask=first).run(clip)
    for a, b in zip(remote, here, strict=True):
        _same(a, b, f"vos frame {a.frame_index}")
    # two interleaved streams keep their own state
    one, two = client.open_video("vis"), client.open_video("vis")
    out_one, out_two = [], []
    for frame in clip:
        out_one += one.step(frame)
        out_two += two.step(frame)
    out_one += one.finish()
    out_two += two.finish()
    for a, b in zip(out_one, out_two, strict=True):
        _same(a, b, "interleaved")


def test_vocabulary_changes_the_servers_classes(server, local):
    client = server[0]
    image = scene(7)
    names = list(local.vocabulary.names)
    try:
        record = client.set_vocabulary(["person", "zebra", "grass"], num_things=2)
        assert record["names"] == ["person", "zebra", "grass"] and record["num_things"] == 2
        local.set_vocabulary(["person", "zebra", "grass"], num_things=2)
        _same(client.panoptic(image), local.panoptic(image), "new vocabulary")
    finally:
        client.set_vocabulary(names, num_things=local.assets.vocabulary.num_things)
        local.set_vocabulary(names, num_things=local.assets.vocabulary.num_things)


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server, local, tmp_path):
    import tritonclient.http as http

    from omg_rt.client import RemoteImage

    client, _, port, _ = server
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"definitely not a PNG")
    with pytest.raises(InvalidInputError, match="image: not a decodable image"):
        client.panoptic(bad)
    with pytest.raises(InvalidInputError, match="unknown image 'nope'"):
        client.prompt(RemoteImage("nope", (10, 10)), points=[[1, 1]])
    with pytest.raises(InvalidInputError, match="prompts|points|boxes"):
        client.prompt(client.encode(scene(1)), boxes=[[50, 50, 10, 10]])  # x1 < x0
    raw = http.InferenceServerClient(f"127.0.0.1:{port}")
    wrong = http.InferInput("image", [1, 1], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 1), np.float32))
    with pytest.raises(Exception, match="data-type is 'FP32', but model 'panoptic' expects"):
        raw.infer("panoptic", [wrong])
    frame = http.InferInput("pixels", [1, 40, 40, 3], "UINT8")
    frame.set_data_from_numpy(np.zeros((1, 40, 40, 3), np.uint8))

    def send(index: int):
        return raw.infer("video", [frame], parameters={"stream_id": "ordered", "task": "vis",
                                                       "frame_index": index})

    send(0)
    with pytest.raises(Exception, match="expects frame_index 1, got 3"):
        send(3)
    with pytest.raises(Exception, match="not open"):
        raw.infer("video", [frame], parameters={"stream_id": "never", "frame_index": 5})
    raw.close()
    image = scene(2)
    _same(client.panoptic(image), local.panoptic(image), "after the errors")


def test_the_cli_writes_the_same_files_with_server_or_bundle(server, tmp_path):
    from omg_rt.cli import main

    client, bundle, port, _ = server
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), cv2.cvtColor(scene(9), cv2.COLOR_RGB2BGR))
    assert main(["segment", str(image), "--server", f"http://127.0.0.1:{port}", "--quiet",
                 "--out", str(tmp_path / "remote")]) == 0
    assert main(["segment", str(image), "--bundle", str(bundle), "--backend", "onnxruntime",
                 "--quiet", "--out", str(tmp_path / "local")]) == 0
    for name in ("in.json", "in_segments.json"):
        remote = json.loads((tmp_path / "remote" / name).read_text())
        here = json.loads((tmp_path / "local" / name).read_text())
        assert remote == here, name
    for name in ("in_overlay.png", "in_panoptic.png"):
        assert np.array_equal(cv2.imread(str(tmp_path / "remote" / name)),
                              cv2.imread(str(tmp_path / "local" / name))), name
