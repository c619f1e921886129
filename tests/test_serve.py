"""The web app's API through FastAPI's TestClient: predictions, and a JSON 4xx for every kind of bad request."""

from __future__ import annotations

import io
import os
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from tests.deploy_helpers import tiny_checkpoint
from tests.synthetic import laid_out
from vit_mnist.data import MNISTDataModule, load_split
from vit_mnist.errors import UserError
from vit_mnist.inference import Predictor
from vit_mnist.inference.web import MAX_BYTES, WEB_DIR, check_port, create_app

pytestmark = pytest.mark.xdist_group("serve")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Predictor:
    return Predictor.from_checkpoint(tiny_checkpoint(tmp_path_factory, data_dir))


@pytest.fixture(scope="module")
def client(predictor: Predictor) -> TestClient:
    with TestClient(create_app(predictor)) as c:
        yield c


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def drawing() -> bytes:
    """A black stroke on a white 280x280 canvas, as the web page sends it."""
    image = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(image).line([(80, 60), (200, 60), (120, 240)], fill=0, width=20)
    return png(image)


def assert_prediction(response, predictor: Predictor) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["probabilities"]) == 10 and sum(body["probabilities"]) == pytest.approx(1, abs=1e-4)
    assert body["label"] == int(np.argmax(body["probabilities"]))
    assert body["class_name"] == predictor.class_names[body["label"]]
    image = np.array(body["image"])
    assert image.shape == (28, 28) and image.min() >= 0 and image.max() <= 255
    return body


def test_healthz_and_page(client: TestClient) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["class_names"] == [str(i) for i in range(10)]
    page = client.get("/")
    assert page.status_code == 200 and 'id="pad"' in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


def test_page_fetches_nothing_from_the_internet() -> None:
    for path in WEB_DIR.iterdir():
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", path.read_text()), path
        assert not re.search(r"(fetch|import)\s*\(\s*[\"'`](https?:)?//", path.read_text()), path


def test_upload_raw_image_and_json_pixels_predict(client: TestClient, predictor: Predictor, data_dir: Path) -> None:
    data = drawing()
    form = assert_prediction(client.post("/api/predict", files={"file": ("digit.png", data, "image/png")}), predictor)
    raw = assert_prediction(client.post("/api/predict", content=data, headers={"Content-Type": "image/png"}), predictor)
    assert form == raw
    assert np.array(form["image"])[0].max() == 0 and np.array(form["image"]).max() == 255  # inverted, white on black

    images = laid_out(load_split("mnist", str(data_dir), "test", download=False)[0][:5])
    with torch.no_grad():
        x = MNISTDataModule(name="mnist", data_dir=str(data_dir)).transform(images, train=False)
        expected = (predictor.net(x) / predictor.temperature).softmax(dim=1).numpy()  # calibrated
    for image, probabilities in zip(images, expected, strict=True):
        body = assert_prediction(client.post("/api/predict", json={"pixels": image[0].tolist()}), predictor)
        np.testing.assert_allclose(body["probabilities"], probabilities, atol=1e-5)
        assert body["image"] == image[0].tolist()  # a 28x28 array in MNIST's layout is used as it is


def chunks(data: bytes, size: int = 65536):
    for i in range(0, len(data), size):
        yield data[i: i + size]


BAD_REQUESTS = [
    # (description, request kwargs, expected status, words in the error)
    ("not an image", {"files": {"file": ("digit.png", b"hello, not a picture", "image/png")}}, 422, "not a readable"),
    ("not an image, raw body", {"content": b"GIF89a garbage", "headers": {"Content-Type": "image/gif"}}, 422,
     "not a readable"),
    ("empty body", {"content": b"", "headers": {"Content-Type": "image/png"}}, 400, "empty"),
    ("empty upload", {"files": {"file": ("digit.png", b"", "image/png")}}, 400, "empty"),
    ("too large", {"content": b"\x89PNG" + bytes(MAX_BYTES), "headers": {"Content-Type": "image/png"}}, 413,
     "the limit is"),
    ("too large, chunked", {"content": chunks(bytes(MAX_BYTES + 10)), "headers": {"Content-Type": "image/png"}}, 413,
     "over the limit"),
    ("wrong content type", {"content": b"7", "headers": {"Content-Type": "text/plain"}}, 415, "not accepted"),
    ("no content type", {"content": b"7"}, 415, "not accepted"),
    ("wrong shape", {"json": {"pixels": [[0] * 28] * 27}}, 422, "[27, 28]"),
    ("ragged rows", {"json": {"pixels": [[0] * 28] * 27 + [[0] * 5]}}, 422, "28x28"),
    ("strings", {"json": {"pixels": [["7"] * 28] * 28}}, 422, "numbers"),
    ("out of range", {"json": {"pixels": [[300] * 28] * 28}}, 422, "0-255"),
    ("no pixels key", {"json": {"image": []}}, 422, "'pixels'"),
    ("invalid JSON", {"content": b"{pixels:", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
    ("form without a file", {"content": b'--zz\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n--zz--\r\n',
                             "headers": {"Content-Type": "multipart/form-data; boundary=zz"}}, 422, "no image"),
    ("broken form", {"content": b"--zz\r\ngarbage", "headers": {"Content-Type": "multipart/form-data; boundary=zz"}},
     422, "no image"),
    ("two files", {"files": [("file", ("a.png", b"1", "image/png")), ("file", ("b.png", b"2", "image/png"))]},
     400, "Too many files"),
    ("url-encoded form", {"data": {"pixels": "1"}}, 415, "not accepted"),
    ("blank drawing", {"files": {"file": ("blank.png", png(Image.new("L", (280, 280), 255)), "image/png")}}, 422,
     "No digit"),
]


@pytest.mark.parametrize(("kind", "kwargs", "status", "words"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_json_4xx_and_the_server_keeps_serving(
    client: TestClient, predictor: Predictor, kind: str, kwargs: dict, status: int, words: str
) -> None:
    response = client.post("/api/predict", **kwargs)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert_prediction(client.post("/api/predict", files={"file": ("digit.png", drawing(), "image/png")}), predictor)


def test_unknown_routes_and_methods_answer_json(client: TestClient) -> None:
    assert client.get("/api/predict").status_code == 405
    missing = client.get("/nothing-here")
    assert missing.status_code == 404 and "error" in missing.json()


def test_port_in_use_is_a_user_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(UserError, match="another program"):
            check_port("127.0.0.1", s.getsockname()[1])


def test_serve_takes_the_newest_checkpoint_with_a_detector(predictor: Predictor, tmp_path: Path) -> None:
    from vit_mnist.inference.choose import newest_checkpoint

    with_detector = Path(predictor.source)
    older, newer = (tmp_path / "outputs" / day / "checkpoints" for day in ("a", "b"))
    for folder in (older, newer):
        folder.mkdir(parents=True)
    (older / "best.ckpt").write_bytes(with_detector.read_bytes())
    torch.save({"state_dict": {}, "hyper_parameters": {}}, newer / "best.ckpt")  # newer, but no detector
    os.utime(older / "best.ckpt", (1, 1))
    chosen, why = newest_checkpoint(tmp_path / "outputs")
    assert chosen == older / "best.ckpt" and "detector" in why
    (older / "best.ckpt").unlink()
    assert newest_checkpoint(tmp_path / "outputs")[0] == newer / "best.ckpt"  # none has one: the newest, said
    with pytest.raises(UserError, match="No checkpoint to serve"):
        newest_checkpoint(tmp_path / "empty")


def test_the_page_names_the_run_and_its_verdicts(client: TestClient) -> None:
    info = client.get("/healthz").json()
    # outputs/<date>/<time>/checkpoints/best.ckpt -> <date>/<time>/best.ckpt: which run, not just "best.ckpt"
    assert info["run"].endswith("/best.ckpt") and info["run"].count("/") == 2 and "Mahalanobis" in info["verdicts"]
