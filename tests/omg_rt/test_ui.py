"""omg-rt ui: the page's logic as plain functions, then the page itself in headless Chromium.

The model is the seeded tiny one exported at 64 px with the panoptic overlap threshold at 0: its
random weights give near-identical masks that the official 0.8 would drop, and the vocabulary
test needs panoptic segments to change.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.demo import write_examples
from omg_rt.errors import BundleError, ExitCode
from omg_rt.manifest import EXAMPLES
from omg_rt.ui import (
    MAX_VIDEO_FRAMES,
    Page,
    PageState,
    default_bundle,
    example_images,
    example_videos,
)
from tests.omg_rt.test_runtime_support import merging_bundle

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]  # its pandas calls

NAMES = ("circle", "square", "triangle", "star", "sky", "grass", "wall")
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
needs_gradio = pytest.mark.skipif(importlib.util.find_spec("gradio") is None,
                                  reason="omg-rt ui needs gradio: pip install 'omg-rt[ui]'")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = merging_bundle(tmp_path_factory.mktemp("ui-bundle") / "tiny-ui", NAMES, 4, 64)
    write_examples(path / EXAMPLES, 64)  # as the demo does for its bundle
    return path


@pytest.fixture(scope="module")
def segmenter(bundle):
    from omg_rt import Segmenter

    seg = Segmenter.from_bundle(bundle, backend="onnxruntime")
    yield seg
    seg.close()


def _page(segmenter, bundle: Path) -> Page:
    """The page ``omg-rt ui BUNDLE`` lays out: the shipped photos, then the bundle's examples."""
    return Page(segmenter, bundle=bundle)


@pytest.fixture()
def page(segmenter, bundle):
    return _page(segmenter, bundle)


def _photo(page: Page) -> str:
    return "astronaut" if "astronaut" in page.examples else "generated scene 1"


def test_the_page_logic_imports_neither_torch_nor_gradio(bundle):
    code = ("import sys; from pathlib import Path; from omg_rt.ui import Page, example_images; "
            f"[load() for load in example_images(Path({str(bundle / EXAMPLES)!r})).values()]; "
            "bad = [m for m in ('torch', 'gradio', 'training', 'export') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_examples_are_shipped_photos_then_the_bundles_own(bundle):
    examples = example_images(bundle / EXAMPLES)
    scenes = [name for name in examples if name.startswith("generated scene")]
    assert scenes == [f"generated scene {i}" for i in (1, 2, 3, 4)]
    scene = examples[scenes[0]]()
    assert scene.dtype == np.uint8 and scene.shape == (512, 512, 3)
    assert len(np.unique(scene.reshape(-1, 3), axis=0)) > 2  # shapes drawn, not a blank frame
    assert list(example_videos(bundle / EXAMPLES))[-1] == "generated clip.avi"
    if importlib.util.find_spec("skimage") is not None:
        assert list(examples)[:3] == ["astronaut", "coffee", "chelsea"]
        assert examples["astronaut"]().shape == (512, 512, 3)
    assert not any(n.startswith("generated") for n in example_images(bundle / "missing"))


def test_the_embedded_default_is_the_demo_bundle_or_a_message_saying_how(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkout = Path(__file__).resolve().parents[2] / "runs" / "demo" / "bundle"
    if (checkout / "manifest.json").is_file():
        assert default_bundle() == checkout
    else:
        with pytest.raises(BundleError, match=r"bash scripts/demo.sh.*or pass a BUNDLE"):
            default_bundle()
    made = tmp_path / "runs" / "demo" / "bundle"
    made.mkdir(parents=True)
    (made / "manifest.json").write_text("{}")
    assert default_bundle() == made  # the current directory's comes first


def test_clicks_reuse_the_encoder_and_report_their_time(page, segmenter):
    state = PageState()
    calls = segmenter.graph_calls()
    view = page.open_example(state, _photo(page))
    assert "encoder ran once" in view.status
    for i, (x, y) in enumerate([(200, 150), (60, 60), (250, 250)], start=1):
        view = page.click(state, x, y, "positive")
        assert re.search(rf"click {i}: positive at \({x}, {y}\) in \*\*[\d.]+ ms\*\*", view.status)
        assert "encoder output reused" in view.status
    after = segmenter.graph_calls()
    assert after["encoder"] - calls.get("encoder", 0) == 1  # once for the image, not per click
    assert after["prompt_encoder"] - calls.get("prompt_encoder", 0) == 3
    mask = state.prompts[0].mask
    assert mask.any() and view.canvas is not None
    difference = np.abs(view.canvas.astype(int) - state.image.astype(int)).sum(-1)
    assert (difference[mask] > 0).mean() > 0.9  # tinted where the mask is


def test_a_negative_click_removes_the_mask_given_there(page):
    state = PageState()
    page.open_example(state, _photo(page))
    page.click(state, 200, 150, "positive")
    view = page.click(state, 200, 150, "negative")
    assert "negative" in view.status
    positive, negative = state.prompts
    assert np.array_equal(positive.mask, negative.mask)  # one spot, one mask: nothing is left
    untinted = np.abs(view.canvas.astype(int) - state.image.astype(int)).sum(-1) == 0
    away = np.ones_like(untinted)
    away[130:170, 180:220] = False  # the two click markers
    assert untinted[away].all()


def test_two_clicks_in_box_mode_give_the_dragged_box(page):
    state = PageState()
    page.open_example(state, _photo(page))
    assert "first corner" in page.click(state, 300, 40, "box").status
    page.click(state, 100, 200, "box")
    page.box(state, (100, 40, 300, 200))
    by_clicks, by_drag = state.prompts
    assert by_clicks.coords == by_drag.coords == (100, 40, 300, 200)
    assert np.array_equal(by_clicks.mask, by_drag.mask)
    view = page.box(state, (400, 400, 900, 600))  # reaches past the 512 x 512 image: clipped
    assert "box at (400, 400, 512, 512)" in view.status


def test_user_errors_show_a_message_and_the_page_keeps_working(page, tmp_path):
    state = PageState()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    view = page.open_image(state, broken)
    assert view.status.startswith("⚠️ **bad input**") and "'broken.png'" in view.status
    assert view.canvas is None
    huge = Page(page.segmenter, max_pixels=100 * 100, examples=page.examples)
    assert "larger than this page takes" in huge.open_image(state, np.zeros((101, 100, 3),
                                                                            np.uint8)).status
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((101, 100, 3), np.uint8))
    assert "101 (0.0 MP) is larger than this page takes" in huge.open_image(state, big).status
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(big.read_bytes()[:60])  # a valid header, no pixels
    assert "cannot read 'truncated.png'" in page.open_image(state, truncated).status
    page.open_example(state, _photo(page))
    assert "click 1" in page.click(state, 10, 10, "positive").status
    view = page.box(state, (-60, -60, -5, -5))
    assert "lies outside the 512×512 image" in view.status
    assert len(state.prompts) == 1 and view.canvas is not None  # what was there is still shown
    assert "expected class names" in page.set_vocabulary(state, " ;\n ", None)
    assert "num_things" in page.set_vocabulary(state, "cat; dog", 5)
    assert state.vocabulary is None
    _, message = page.video(state, broken, "vis", 4)
    assert message.startswith("⚠️ **bad input**: video: ") and "'broken.png'" in message
    _, message = page.video(state, "generated clip.avi", "vis", MAX_VIDEO_FRAMES + 1)
    assert "max_frames" in message
    assert "click 2" in page.click(state, 300, 300, "positive").status


def test_vocabulary_changes_the_panoptic_result_of_its_own_tab_only(page):
    tab, other = PageState(), PageState()
    for state in (tab, other):
        page.open_example(state, _photo(page))
    before, legend_before = page.segment(tab, "panoptic")
    assert "panoptic" in legend_before
    assert page.set_vocabulary(tab, "cat; dog; grass", 2) == "vocabulary: 3 classes (2 things)"
    assert np.array_equal(page.segment(other, "panoptic")[0], before)  # right after: untouched
    after, legend_after = page.segment(tab, "panoptic")
    names = set(re.findall(r"\| (\w+) \| [\d.]+ \|", legend_after))
    assert names and names <= {"cat", "dog", "grass"}
    assert not np.array_equal(before, after)
    untouched, legend_other = page.segment(other, "panoptic")  # the bundle's vocabulary
    assert np.array_equal(untouched, before) and legend_other.split("\n")[2:] == \
        legend_before.split("\n")[2:]
    assert page.segment(tab, "panoptic")[1].split("\n")[2:] == legend_after.split("\n")[2:]
    text, things = page.vocabulary_text()
    assert page.set_vocabulary(tab, text, things).startswith("vocabulary: the bundle's")
    assert np.array_equal(page.segment(tab, "panoptic")[0], before)
    for task in ("instance", "semantic"):
        image, legend = page.segment(tab, task, 0.0)
        assert image.shape == before.shape and f"**{task}**" in legend


def test_video_tab_writes_an_overlay_browsers_play(page):
    seen = []
    out, message = page.video(PageState(), "generated clip.avi", "vps", 5,
                              lambda done, total: seen.append((done, total)))
    assert out is not None and out.suffix == ".webm", message
    assert "5 frames, vps" in message
    assert seen[-1] == (5, 5) and [d for d, _ in seen] == [1, 2, 3, 4, 5]
    capture = cv2.VideoCapture(str(out))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 5


@needs_gradio
def test_cli_ui_reports_a_missing_bundle(tmp_path, capsys):
    from omg_rt.cli import main

    assert main(["ui", str(tmp_path / "missing")]) == ExitCode.BUNDLE
    assert "omg-rt: bad bundle" in capsys.readouterr().err


# ---------------------------------------------------------------------- in a real browser


def _chrome():
    """Headless Debian chromium through its chromedriver (no browser download), or skip."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("no Debian chromium: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="no selenium: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1800"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fetch_image(url: str) -> np.ndarray:
    assert url.startswith("http://127.0.0.1:"), url  # the page only serves loopback
    with urllib.request.urlopen(url, timeout=30) as answer:
        data = np.frombuffer(answer.read(), np.uint8)
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@needs_gradio
def test_page_in_headless_chromium(segmenter, bundle, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from omg_rt.ui_app import build_app, launch

    page = _page(segmenter, bundle)
    photo = _photo(page)
    driver = _chrome()
    app = build_app(segmenter, title="tiny-ui", page=page)
    try:
        url = launch(app, port=_free_port(), block=False, quiet=True)
        assert url.startswith("http://127.0.0.1:")
        driver.get(url)
        wait = WebDriverWait(driver, 60)

        def text(element_id: str) -> str:
            return driver.find_element(By.ID, element_id).text

        def image_src(element_id: str) -> str:
            found = driver.find_elements(By.CSS_SELECTOR, f"#{element_id} img")
            return found[0].get_attribute("src") if found else ""

        # a shipped photo, then a click on it: its mask comes back over the photo
        example = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#omg-example input"))
        example.click()
        example.send_keys(photo)
        example.send_keys(Keys.ENTER)
        wait.until(lambda d: "the encoder" in text("omg-status"))  # ran, or cached earlier
        wait.until(lambda d: "panoptic" in text("omg-legend"))
        canvas = driver.find_element(By.CSS_SELECTOR, "#omg-canvas img")
        ActionChains(driver).move_to_element_with_offset(canvas, -40, -60).click().perform()
        wait.until(lambda d: "click 1" in text("omg-status"))
        match = re.search(r"click 1: positive at \((\d+), (\d+)\) in ([\d.]+) ms", text("omg-status"))
        assert match, text("omg-status")
        x, y = int(match[1]), int(match[2])
        image = page.examples[photo]()
        mask = segmenter.prompt(image, points=[[x, y]]).masks[0]
        overlay = _fetch_image(image_src("omg-canvas"))
        assert overlay.shape == image.shape
        difference = np.abs(overlay.astype(int) - image.astype(int)).sum(-1)
        assert mask.any() and (difference[mask] > 0).mean() > 0.9
        outside = cv2.erode((~mask).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert (difference[outside] == 0).mean() > 0.99  # untouched away from the mask

        # box mode: a drag is a box; a drag wholly beside the image is a readable error
        driver.find_element(By.XPATH, "//label[contains(., 'box (drag')]").click()
        ActionChains(driver).move_to_element_with_offset(canvas, -100, -100).click_and_hold() \
            .move_by_offset(60, 40).move_by_offset(60, 40).release().perform()
        wait.until(lambda d: "click 2: box" in text("omg-status"))
        margin = driver.execute_script(
            "const c = document.querySelector('#omg-canvas').getBoundingClientRect();"
            "const i = document.querySelector('#omg-canvas img').getBoundingClientRect();"
            "return i.left - c.left;")
        assert margin > 30  # the 512 px photo sits centred in a wider canvas
        ActionChains(driver).move_to_element_with_offset(
            canvas, -canvas.size["width"] // 2 - int(margin) + 8, 0).click_and_hold() \
            .move_by_offset(int(margin) - 16, 30).release().perform()
        wait.until(lambda d: "lies outside" in text("omg-status"))
        assert "bad input" in text("omg-status")
        driver.find_element(By.XPATH, "//label[contains(., 'positive click')]").click()
        ActionChains(driver).move_to_element_with_offset(canvas, 60, 60).click().perform()
        wait.until(lambda d: "click 3: positive" in text("omg-status"))  # still working

        # a typed vocabulary changes the panoptic result
        legend_before, result_before = text("omg-legend"), image_src("omg-result")
        vocab = driver.find_element(By.CSS_SELECTOR, "#omg-vocab textarea")
        vocab.clear()
        vocab.send_keys("cat; dog; grass")
        things = driver.find_element(By.CSS_SELECTOR, "#omg-things input")
        things.clear()
        things.send_keys("2")
        driver.find_element(By.ID, "omg-segment").click()
        wait.until(lambda d: "vocabulary: 3 classes" in text("omg-legend"))
        legend_after = text("omg-legend")
        assert legend_after != legend_before and re.search(r"\b(cat|dog|grass)\b", legend_after)
        assert "triangle" not in legend_after
        assert image_src("omg-result") != result_before

        # a broken upload is a message; the photo and its prompts stay
        broken = tmp_path / "broken.jpg"
        broken.write_bytes(b"\xff\xd8\xff not a jpeg")
        driver.find_element(By.CSS_SELECTOR, "#omg-upload input[type=file]").send_keys(str(broken))
        wait.until(lambda d: "cannot read 'broken.jpg' as an image" in text("omg-status"))
        assert image_src("omg-canvas")
        driver.save_screenshot(str(tmp_path / "ui.png"))
        assert (tmp_path / "ui.png").stat().st_size > 10_000
    finally:
        driver.quit()
        app.close()
