"""Bounded load check of the prediction API on loopback: N requests, C at a time; throughput and latency."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image, ImageDraw

from vit_mnist.errors import UserError

MAX_REQUESTS = 100_000  # a check, not a stress tool
MAX_CONCURRENCY = 256


def digit_png(size: int = 280) -> bytes:
    """A hand-drawn-looking 7 as the web page sends it: black strokes on a white 280x280 PNG."""
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    s = size / 280
    draw.line([(80 * s, 60 * s), (200 * s, 60 * s), (150 * s, 160 * s), (120 * s, 240 * s)], fill=0,
              width=round(20 * s), joint="curve")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def check_loopback(url: str) -> None:
    """Refuse anything but this machine: the check must never load someone else's server."""
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UserError(f"--url {url} is not on this machine: the load check only talks to 127.0.0.1, ::1 or "
                        "localhost. Start the server locally (python -m vit_mnist.serve ckpt_path=...).")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_server(ckpt_path: str, timeout: float = 60.0) -> Iterator[str]:
    """Start `python -m vit_mnist.serve` on a free loopback port; yield its URL; stop it afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "vit_mnist.serve", f"ckpt_path={ckpt_path}", f"port={port}", "log_level=warning"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise UserError(f"The server did not start: {process.stderr.read().strip()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise UserError(f"The server at {url} did not answer /healthz within {timeout:.0f} s.")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def given_server(url: str) -> Iterator[str]:
    """A server someone else started: nothing to start or stop."""
    yield url


async def run_load(url: str, requests: int, concurrency: int, payload: bytes) -> dict:
    """Send `requests` uploads, at most `concurrency` at once; latency per request and errors."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            try:
                response = await client.post("/api/predict", files={"file": ("digit.png", payload, "image/png")})
                ok = response.status_code == 200 and len(response.json()["probabilities"]) > 0
                key = None if ok else f"HTTP {response.status_code}"
            except (httpx.HTTPError, ValueError, KeyError) as e:
                key = type(e).__name__
            latencies.append(time.perf_counter() - started)
            if key:
                errors[key] = errors.get(key, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:
        await client.post("/api/predict", files={"file": ("digit.png", payload, "image/png")})  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": requests, "concurrency": concurrency, "wall_s": wall, "throughput_rps": requests / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "max_ms": float(ms.max()), "errors": sum(errors.values()), "error_kinds": errors}


def load_check(url: str | None, ckpt: str | None, requests: int, concurrency: int) -> dict:
    """Checked settings, a server (the one at `url`, or one started for `ckpt`), the load; returns the figures."""
    if not 1 <= requests <= MAX_REQUESTS or not 1 <= concurrency <= min(MAX_CONCURRENCY, requests):
        raise UserError(f"--requests must be 1-{MAX_REQUESTS} and --concurrency 1-{MAX_CONCURRENCY} "
                        "(and not above --requests).")
    if url:
        check_loopback(url)
    payload = digit_png()
    try:
        with local_server(ckpt) if ckpt else given_server(url) as where:
            result = asyncio.run(run_load(where.rstrip("/"), requests, concurrency, payload))
    except httpx.TransportError as e:
        raise UserError(f"Cannot reach {url} ({e}): start the server first, python -m vit_mnist.serve "
                        "ckpt_path=..., or pass --ckpt to let this check start one.") from e
    result["payload_bytes"] = len(payload)
    return result
