"""The README and docs/: short README, the CI test command named, every relative link pointing to a file, no
path of a development machine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 150

# [text](target) and ![alt](target); the target may be followed by a "title". Inline code is removed first, so
# a bracket-paren pair inside backticks is not taken for a link; fenced code blocks are removed as well.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# [label]: target (reference-style definitions)
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
# paths of this project's own development machines: the data folder is explained once in the README
MACHINE_PATHS = ("shared/data", "/work/")
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")  # http:, https:, mailto:, ... and protocol-relative


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def links(text: str) -> list[str]:
    """Every link target in a markdown text, outside code."""
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    return [m.group(1) for m in LINK.finditer(prose)] + [m.group(1) for m in REFERENCE.finditer(prose)]


def relative_links() -> list[tuple[Path, str]]:
    """(file, target) for each relative link: external schemes and pure #anchors left out."""
    found = []
    for path in markdown_files():
        for target in links(path.read_text(encoding="utf-8")):
            if EXTERNAL.match(target) or target.startswith("#"):
                continue
            found.append((path, target))
    return found


def _id(item: tuple[Path, str]) -> str:
    path, target = item
    return f"{path.relative_to(ROOT).as_posix()}->{target}"


def test_link_parser() -> None:
    text = ("See [a](docs/a.md#x), ![img](docs/b.png \"title\"), [ext](https://example.org), "
            "[mail](mailto:x@y.z), [anchor](#known-gaps), `[not](a/link.md)`.\n"
            "```\n[nor](this.md)\n```\n[ref]: docs/c.md\n")
    assert links(text) == ["docs/a.md#x", "docs/b.png", "https://example.org", "mailto:x@y.z", "#known-gaps",
                           "docs/c.md"]


def test_docs_exist() -> None:
    for name in ("training", "results", "evaluation", "deployment", "scaling", "benchmark"):
        assert (ROOT / "docs" / f"{name}.md").is_file(), f"docs/{name}.md is missing"


@pytest.mark.parametrize("item", relative_links(), ids=_id)
def test_relative_link_resolves(item: tuple[Path, str]) -> None:
    path, target = item
    file_part = target.split("#", 1)[0].split("?", 1)[0]
    resolved = (path.parent / file_part).resolve()
    assert resolved.exists(), (f"{path.relative_to(ROOT)} links to {target!r}, but "
                               f"{resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved} "
                               "does not exist")


def test_readme_is_short() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; keep it at most {MAX_README_LINES}"


def test_readme_names_the_test_command() -> None:
    # CI (.ci/run) runs `make test`; the README must say so.
    assert "make test" in README.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_machine_specific_paths(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for needle in MACHINE_PATHS:
        lines = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
        assert not lines, (f"{path.relative_to(ROOT)} names {needle!r} (lines {lines}): a development machine's "
                           "path; say where the data folder is in general terms (the README explains it once)")
