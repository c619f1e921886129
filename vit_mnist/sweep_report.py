"""Command: summarise a multirun folder into sweep_summary.md, .csv and .png (also written after every sweep)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vit_mnist.errors import UserError, report
from vit_mnist.reports.sweep import SUMMARY_STEM, write_sweep_report


def main(argv: list[str] | None = None) -> None:
    """`python -m vit_mnist.sweep_report <multirun folder>`: write the summary there and print it."""
    parser = argparse.ArgumentParser(
        prog="python -m vit_mnist.sweep_report",
        description="Summarise a multirun folder into sweep_summary.md, .csv and .png (written into that folder).",
    )
    parser.add_argument("sweep_dir", help="a multirun folder, e.g. outputs/multirun/<date>/<time>")
    args = parser.parse_args(argv)
    try:
        write_sweep_report(args.sweep_dir)
    except UserError as e:
        report(e)
    print((Path(args.sweep_dir) / f"{SUMMARY_STEM}.md").read_text())


if __name__ == "__main__":
    main()
