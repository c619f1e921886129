"""The FastAPI app: the digit-drawing web page and its prediction API, and the checks before serving it."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from omegaconf import DictConfig
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from vit_mnist.data.preprocess import (
    MNIST_SIZE,
    check_layout,
    load_image,
    normalize,
    to_mnist_layout,
)
from vit_mnist.errors import UserError
from vit_mnist.inference.choose import newest_checkpoint
from vit_mnist.inference.predictor import Predictor
from vit_mnist.models.registry import NAMES
from vit_mnist.runtime.paths import project_root

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MAX_BYTES = 1_000_000  # 1 MB: a drawn digit as PNG is a few kB
IMAGE_TYPES = ("image/", "application/octet-stream")


class ApiError(Exception):
    """A bad request: answered with `status` and a JSON {"error": message}, never a 500."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"Content-Length {declared!r} is not a number of bytes.")
        if int(declared) > limit:
            raise ApiError(413, f"The request is {int(declared)} bytes; the limit is {limit} bytes. "
                                "Send a smaller image: one digit or garment needs only a few hundred pixels a side.")
    chunks, size = [], 0
    async for chunk in request.stream():  # also bounds chunked uploads that declare no length
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"The request is over the limit of {limit} bytes. Send a smaller image.")
        chunks.append(chunk)
    return b"".join(chunks)


async def upload_from_multipart(request: Request, body: bytes, limit: int) -> bytes:
    """The bytes of the image in a multipart form (field `file`, or the form's only file)."""

    async def stream() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=8, max_part_size=limit).parse()
    except (MultiPartException, ValueError, KeyError) as e:
        raise ApiError(400, f"The multipart form could not be read ({e}). Send the image as a file field "
                            "named 'file'.") from e
    files = [v for v in form.values() if isinstance(v, UploadFile)]
    upload = form.get("file") if isinstance(form.get("file"), UploadFile) else (files[0] if len(files) == 1 else None)
    if upload is None:
        raise ApiError(422, "The multipart form has no image: send it as a file field named 'file', "
                            "e.g. curl -F file=@digit.png http://127.0.0.1:8000/api/predict.")
    data = await upload.read()
    await form.close()
    return data


def pixels_from_json(body: bytes) -> np.ndarray:
    """The 28x28 array in a JSON body {"pixels": [[...], ...]} (0-255, or 0-1 floats; white digit on black)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, f"The body is not valid JSON ({e}). Send {{\"pixels\": [[...28 numbers...], "
                            "...28 rows]}.") from e
    if not isinstance(payload, dict) or "pixels" not in payload:
        raise ApiError(422, "The JSON has no 'pixels' key: send {\"pixels\": a 28x28 array of numbers 0-255}.")
    try:
        array = np.array(payload["pixels"], dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as e:
        raise ApiError(422, "'pixels' must be a 28x28 array of numbers (28 rows of 28 numbers, 0-255).") from e
    if array.shape != (MNIST_SIZE, MNIST_SIZE):
        raise ApiError(422, f"'pixels' has shape {list(array.shape)}; it must be [28, 28] (28 rows of 28 numbers).")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for row in payload["pixels"] for v in row):
        raise ApiError(422, "'pixels' must hold numbers only (0-255, or 0-1 floats).")
    return array


def run_label(source: str) -> str:
    """What the page calls a checkpoint: its run folder (outputs/<date>/<time>) and file, else its path."""
    path = Path(source)
    if path.parent.name == "checkpoints" and len(path.parents) >= 3:
        return f"{path.parents[2].name}/{path.parents[1].name}/{path.name}"
    return str(path)


def create_app(predictor: Predictor, max_bytes: int = MAX_BYTES, layout: str = "auto") -> FastAPI:
    """The web app: the page at /, POST /api/predict, GET /healthz."""
    model_name = NAMES.get(predictor.arch, "the model")
    app = FastAPI(title="vit-mnist", description=f"Draw a digit, see what {model_name} reads.",
                  docs_url="/docs", redoc_url=None)
    model_lock = threading.Lock()  # one forward pass at a time: no thread oversubscription on small CPUs
    # model / model_name: the page says which network answers (vit or cnn), so a comparison is visible.
    info = {"dataset": predictor.dataset, "class_names": predictor.class_names,
            "checkpoint": Path(predictor.source).name, "run": run_label(predictor.source), "model": predictor.arch,
            "model_name": model_name, "temperature": predictor.temperature,  # calibrated: softmax(logits / T)
            "verdicts": predictor.detector.describe() if predictor.detector is not None else None}

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", **info}

    @app.post("/api/predict")
    async def predict(request: Request) -> dict[str, Any]:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not (media in ("multipart/form-data", "application/json") or media.startswith(IMAGE_TYPES)):
            raise ApiError(415, f"Content type {media or '(none)'!r} is not accepted: send a multipart form with "
                                "an image in field 'file', an image body (image/png, image/jpeg, ...), or JSON "
                                "{\"pixels\": 28x28 array}.")
        body = await read_body(request, max_bytes)
        if not body:
            raise ApiError(400, "The request body is empty: send an image or {\"pixels\": 28x28 array}.")
        if media == "application/json":
            source: Any = pixels_from_json(body)
        elif media == "multipart/form-data":
            source = await upload_from_multipart(request, body, max_bytes)
            if not source:
                raise ApiError(400, "The uploaded file is empty (0 bytes): send a PNG or JPEG of a digit or garment.")
        else:
            source = body

        def work() -> tuple[np.ndarray, Any]:
            try:
                pixels = to_mnist_layout(load_image(source), layout, predictor.handwritten)
            except UserError as e:
                raise ApiError(422, " ".join(str(e).split())) from e
            x = normalize(pixels, predictor.mean, predictor.std)[None, None]
            with model_lock:
                return pixels, predictor.answer(x)

        pixels, answers = await run_in_threadpool(work)
        probabilities, verdict = answers.probabilities[0], answers.verdicts[0]
        label = int(np.argmax(probabilities))
        return {"label": label, "class_name": predictor.class_names[label],
                "verdict": verdict, "message": predictor.message(probabilities, verdict),
                "candidates": predictor.candidates(probabilities, verdict),
                "probabilities": [round(float(p), 6) for p in probabilities],
                "class_names": predictor.class_names, "image": pixels.tolist()}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def check_port(host: str, port: int) -> None:
    """A `UserError` now, rather than a uvicorn traceback later, when the address cannot be bound."""
    if not 0 <= port <= 65535:
        raise UserError(f"port={port} is not a TCP port (0-65535): e.g. port=8000.")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise UserError(f"Cannot listen on {host}:{port} ({e.strerror}): another program (another server?) uses "
                        "that port, or the host is not an address of this machine. Pick another, "
                        f"e.g. port={port + 1}.") from e


def robustness_note(ckpt_path: str) -> str:
    """What the checkpoint's training run measured of its robustness (its robustness.json), or how to measure it:
    people's own handwriting is read about as well as the corrupted test digits, not as well as MNIST's own."""
    report_file = Path(str(ckpt_path)).expanduser().resolve().parent.parent / "robustness.json"
    try:
        model = json.loads(report_file.read_text())["models"][0]
        writers = model.get("other_writers_acc")
        writers = "" if writers is None else f"; other writers' digits {100 * writers:.1f}%"
        pens = model.get("pen_photos_acc")
        writers += "" if pens is None else f"; fine-pen photos {100 * pens:.1f}%"
        return (f"on corrupted test digits this model scores {100 * model['mca']:.1f}% (mCA; clean "
                f"{100 * model['clean_acc']:.2f}%, unseen kinds {100 * model['unseen_mca']:.1f}%{writers}), "
                f"from {report_file}")
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return ("this model's robustness to other handwriting was not measured: run `python -m vit_mnist.robustness "
                f"ckpt_path={ckpt_path}`, or train with experiment=robust")


def serve(cfg: DictConfig) -> dict[str, Any]:
    """Check the settings and the checkpoint, then serve the app with uvicorn until stopped."""
    import uvicorn

    ckpt_path, chosen = cfg.ckpt_path, "named by ckpt_path"
    if ckpt_path is None:
        ckpt_path, chosen = newest_checkpoint(Path(project_root()) / "outputs")
    predictor = Predictor.from_checkpoint(ckpt_path)
    if int(cfg.max_bytes) < 1:
        raise UserError(f"max_bytes={cfg.max_bytes} must be a positive number of bytes, e.g. max_bytes=1000000.")
    check_layout(str(cfg.layout))
    check_port(str(cfg.host), int(cfg.port))
    app = create_app(predictor, int(cfg.max_bytes), str(cfg.layout))
    print(f"vit-mnist: {predictor.dataset} {predictor.arch} model from {ckpt_path} ({chosen}); "
          f"open http://{cfg.host}:{cfg.port}", flush=True)
    print(f"vit-mnist: {robustness_note(str(ckpt_path))}", flush=True)
    uvicorn.run(app, host=str(cfg.host), port=int(cfg.port), log_level=str(cfg.log_level),
                access_log=bool(cfg.access_log))
    return {"status": 0}
