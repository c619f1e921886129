"""Command: a bounded load check of the prediction API on loopback: N requests, C at a time; throughput, latency.

    python -m vit_mnist.loadtest --ckpt outputs/<run>/checkpoints/best.ckpt --requests 500 --concurrency 16
"""

from __future__ import annotations

import argparse
import os
import sys

from vit_mnist.errors import UserError, report
from vit_mnist.inference.loadcheck import load_check


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server on this machine, e.g. http://127.0.0.1:8000")
    target.add_argument("--ckpt", help="start a server with this checkpoint on a free loopback port for the check")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    try:
        result = load_check(args.url, args.ckpt, args.requests, args.concurrency)
    except UserError as e:
        report(e)
    print(f"{result['requests']} requests, {result['concurrency']} concurrent, {result['payload_bytes']}-byte PNG "
          f"uploads ({os.cpu_count()} CPU cores): {result['throughput_rps']:.1f} requests/s, p50 "
          f"{result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms, max {result['max_ms']:.1f} ms, errors "
          f"{result['errors']}" + (f" {result['error_kinds']}" if result["errors"] else ""))
    sys.exit(1 if result["errors"] else 0)


if __name__ == "__main__":
    main()
