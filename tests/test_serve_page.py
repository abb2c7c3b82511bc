"""The page at `/` in a real headless Chromium: it loads, a key press brings new frames, a text answer streams.

Chromium comes from the system's packages (`apt-get install chromium`); Playwright drives it. Screenshots are
saved in the test's tmp dir.
"""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[test]')")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

from serve_helpers import served  # noqa: E402

from stretto import checkpoints  # noqa: E402
from stretto.data.text_tasks import held_out  # noqa: E402
from stretto.serve.settings import DEFAULT_MODELS  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no system Chromium: apt-get install -y chromium (Playwright's own download is not used)"
)
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def page_url():
    with served(models=DEFAULT_MODELS) as (base, _):
        yield base + "/"


@pytest.fixture
def page(page_url):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(page_url)
            yield page
            assert not errors, errors
        finally:
            browser.close()


def frames_shown(page) -> int:
    return int(page.get_attribute("#world-view", "data-frames") or 0)


def test_a_key_press_streams_new_world_frames(page, tmp_path):
    page.wait_for_function("document.getElementById('world-line').textContent.startsWith('ready')", timeout=WAIT_MS)
    page.screenshot(path=tmp_path / "world-ready.png")
    page.click("#world-view")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("Number(document.getElementById('world-view').dataset.frames) >= 1", timeout=WAIT_MS)
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.wait_for_function("Number(document.getElementById('world-view').dataset.frames) >= 3", timeout=WAIT_MS)
    assert frames_shown(page) == 3 and "frame 2 (D)" in page.text_content("#world-line")
    page.screenshot(path=tmp_path / "world-frames.png")
    assert (tmp_path / "world-frames.png").stat().st_size > 0


def test_a_text_answer_unmasks_as_it_streams(page, tmp_path):
    # the page starts from a held-out prompt of the served model's first task, on the canvas it was trained on
    (example,) = held_out(1, tasks=checkpoints.trained_tasks("text-llada")[:1])
    page.wait_for_function("document.getElementById('text-model').textContent.includes('256 tokens')", timeout=WAIT_MS)
    assert page.input_value("#text-prompt") == example.prompt
    page.click("#text-form button")
    page.wait_for_function("document.getElementById('answer').dataset.done === '1'", timeout=WAIT_MS)
    events = int(page.get_attribute("#answer", "data-events"))
    assert events >= 3  # several steps (each commits tokens), then the final event
    assert page.text_content("#answer") == example.answer and "tokens/s" in page.text_content("#text-line")
    page.screenshot(path=tmp_path / "text.png")


def test_images_come_with_the_speed_and_quality_line(page, tmp_path):
    page.fill("#image-cache", "fora:interval=2")
    page.fill("#image-steps", "4")
    page.click("#image-form button")
    page.wait_for_function("document.getElementById('image-line').textContent.includes('model calls')",
                           timeout=WAIT_MS)  # fmt: skip
    line = page.text_content("#image-line")
    assert page.locator("#images img").count() == 4
    assert "fora:interval=2" in line and "4 model calls" in line and "prompt match" in line, line
    page.screenshot(path=tmp_path / "images.png")
