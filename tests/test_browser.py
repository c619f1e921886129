"""End to end: the real `python -m vit_mnist.serve` on a loopback port, driven by Debian's headless Chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import subprocess_env
from tests.deploy_helpers import tiny_checkpoint
from vit_mnist.inference.loadcheck import digit_png, free_port

pytestmark = pytest.mark.xdist_group("real_mnist")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("VIT_MNIST_CHROMIUM", "/usr/bin/chromium")
# A 7 in canvas pixels (the canvas is 280x280): top bar, then the diagonal.
STROKE = [(80, 60), (200, 60), (170, 120), (140, 180), (120, 240)]


@contextlib.contextmanager
def serving(ckpt: str, cwd: Path) -> Iterator[str]:
    """`python -m vit_mnist.serve` of `ckpt` in a subprocess on a free loopback port; its URL once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "vit_mnist.serve", f"ckpt_path={ckpt}", f"port={port}", "log_level=warning"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # up to 60 s on a busy machine
            if process.poll() is not None:
                pytest.fail(f"the server exited: {process.stdout.read()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("the server did not answer /healthz within 60 s")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[str]:
    """The server CLI in a subprocess, with the tiny checkpoint (or VIT_MNIST_WEBAPP_CKPT, for the README shot)."""
    given = os.environ.get("VIT_MNIST_WEBAPP_CKPT")
    ckpt = str(Path(given).resolve()) if given else str(tiny_checkpoint(tmp_path_factory, data_dir))
    with serving(ckpt, tmp_path_factory.mktemp("serve_cwd")) as url:
        yield url


def test_real_server_answers_and_survives_bad_requests(server: str) -> None:
    bad = [
        httpx.post(f"{server}/api/predict", content=bytes(1_000_001), headers={"Content-Type": "image/png"}),
        httpx.post(f"{server}/api/predict", files={"file": ("x.png", b"not an image", "image/png")}),
        httpx.post(f"{server}/api/predict", json={"pixels": [[1, 2], [3, 4]]}),
        httpx.post(f"{server}/api/predict", content=b"hi", headers={"Content-Type": "text/plain"}),
    ]
    assert [r.status_code for r in bad] == [413, 422, 422, 415]
    assert all("error" in r.json() for r in bad)
    good = httpx.post(f"{server}/api/predict", files={"file": ("digit.png", digit_png(), "image/png")})
    assert good.status_code == 200 and len(good.json()["probabilities"]) == 10


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium, headless, through Playwright (no browser download: Playwright only drives it)."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM}: install it with `bash .ci/install-browser` "
                    "(Debian's chromium package) or set VIT_MNIST_CHROMIUM")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield chromium
        finally:
            chromium.close()


def check_prediction_shown(page) -> str:
    """The label, ten probabilities summing to one with the top one marked, and the 28x28 input are on the page."""
    label = page.inner_text("#pred-label")
    names = page.evaluate("fetch('/healthz').then(r => r.json()).then(j => j.class_names)")
    shown = page.eval_on_selector_all(".bar", "bars => bars.map(b => b.dataset.probability)")
    probabilities = [float(p) for p in shown]
    assert len(probabilities) == 10 and sum(probabilities) == pytest.approx(1, abs=1e-3)
    top = names[max(range(10), key=probabilities.__getitem__)]
    verdict = page.evaluate("document.body.dataset.verdict")
    # what the label says follows the server's verdict: the answer, two candidates, or not a digit
    if verdict == "confident":
        assert label == top and page.inner_text("#pred-verdict") == ""
    elif verdict == "unsure":
        assert label.startswith(top + " or ") and label.endswith("?")
        assert page.inner_text("#pred-verdict").startswith("Not sure: " + top + " or ")
    else:
        assert verdict == "out_of_domain" and label == "?"
        assert page.inner_text("#pred-verdict") == "That doesn't look like a digit."
    assert page.locator(".bar.top").count() == 1
    seen_ink = page.evaluate("Array.from(document.getElementById('seen').getContext('2d')"
                             ".getImageData(0, 0, 28, 28).data).filter((v, i) => i % 4 === 0 && v > 0).length")
    assert 20 < seen_ink < 28 * 28 // 2  # the 28x28 the model saw holds a stroke, not noise or nothing
    return label


def press_stroke(page, stroke: list[tuple[int, int]]) -> None:
    """Press the mouse button and move it through canvas points (the canvas is 280x280); the button stays down."""
    box = page.locator("#pad").bounding_box()
    scale = box["width"] / 280
    page.mouse.move(box["x"] + stroke[0][0] * scale, box["y"] + stroke[0][1] * scale)
    page.mouse.down()
    for x, y in stroke[1:]:
        page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=10)


def test_drawing_with_the_mouse_shows_a_live_prediction(server: str, browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 800, "height": 520})
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server)
    page.wait_for_function("document.querySelectorAll('#bars .bar').length === 10")
    assert page.inner_text("#pred-label") == "–"

    press_stroke(page, STROKE)
    # the debounced live prediction arrives while the button is still down
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=20_000)
    page.mouse.up()
    page.wait_for_timeout(300)
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=20_000)
    check_prediction_shown(page)

    shot = tmp_path / "webapp.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("VIT_MNIST_SCREENSHOT"):  # e.g. docs/webapp.png for the README
        shutil.copyfile(shot, os.environ["VIT_MNIST_SCREENSHOT"])

    page.click("#clear")
    assert page.inner_text("#pred-label") == "–"
    assert console_errors == []
    assert all(u.startswith(server) or u.startswith("data:") for u in requests), requests  # nothing external
    page.close()


def test_drawing_with_a_finger_works_too(server: str, browser) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 800}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto(server)
    page.wait_for_function("document.querySelectorAll('#bars .bar').length === 10")
    box = page.locator("#pad").bounding_box()
    scale = box["width"] / 280
    cdp = context.new_cdp_session(page)  # real touch events, as a phone sends them

    def touch(kind: str, x: float | None = None, y: float | None = None) -> None:
        points = [] if x is None else [{"x": box["x"] + x * scale, "y": box["y"] + y * scale}]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    touch("touchStart", 140, 40)
    for i in range(1, 21):
        touch("touchMove", 140, 40 + 10 * i)
    touch("touchEnd")
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=20_000)
    check_prediction_shown(page)
    context.close()


def draw(page, stroke: list[tuple[int, int]]) -> None:
    """One mouse stroke through canvas points, released, then wait for the answer."""
    press_stroke(page, stroke)
    page.mouse.up()
    page.wait_for_timeout(300)
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=20_000)


# A capital A: up the left leg, down the right, then the bar.
LETTER_A = [(70, 250), (140, 40), (210, 250), (175, 150), (105, 150)]


@pytest.mark.parametrize("verdict,label,message", [
    ("unsure", "7 or 1?", "Not sure: 7 or 1?"),
    ("out_of_domain", "?", "That doesn't look like a digit."),
])
def test_the_page_words_each_verdict(server: str, browser, verdict: str, label: str, message: str) -> None:
    """The page as people read it, for the answers a tiny test model cannot be relied on to give: the server's
    reply to a drawn digit and a drawn letter is replaced by one with the verdict (the real server's verdicts
    are checked in tests/test_verdicts.py)."""
    page = browser.new_page(viewport={"width": 800, "height": 520})

    def reply(route) -> None:
        body = route.fetch().json()
        probabilities = [0.0] * 10
        probabilities[7], probabilities[1] = 0.55, 0.45
        body.update(label=7, class_name="7", probabilities=probabilities, verdict=verdict, message=message,
                    candidates=["7", "1"] if verdict == "unsure" else [])
        route.fulfill(json=body)

    page.route("**/api/predict", reply)
    page.goto(server)
    page.wait_for_function("document.querySelectorAll('#bars .bar').length === 10")
    draw(page, STROKE if verdict == "unsure" else LETTER_A)
    assert page.inner_text("#pred-label") == label
    assert page.inner_text("#pred-verdict") == message
    assert page.evaluate("document.body.dataset.verdict") == verdict
    page.click("#clear")
    assert page.inner_text("#pred-verdict") == "" and page.evaluate("document.body.dataset.verdict") is None
    page.close()


@pytest.mark.slow
def test_a_real_model_with_outlier_exposure_flags_a_drawn_letter(browser, real_mnist_run: dict, tmp_path: Path
                                                                 ) -> None:
    """The quick recipe with outlier exposure, trained briefly on the real MNIST (conftest's real_mnist_run), served
    by the real server: a capital A drawn with the mouse is not answered as a sure digit; a drawn 7 is read as a 7."""
    ckpt = real_mnist_run["best_checkpoint"]
    with serving(ckpt, tmp_path) as url:
        page = browser.new_page(viewport={"width": 800, "height": 520})
        page.goto(url)
        page.wait_for_function("document.querySelectorAll('#bars .bar').length === 10")
        draw(page, LETTER_A)
        check_prediction_shown(page)
        assert page.evaluate("document.body.dataset.verdict") != "confident", page.inner_text("#pred-label")
        assert page.inner_text("#pred-verdict") != ""  # said in words: not sure, or not a digit
        page.click("#clear")
        draw(page, STROKE)
        assert page.inner_text("#pred-label").startswith("7"), page.inner_text("#pred-label")
        page.close()
