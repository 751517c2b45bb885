"""The Markdown files hold together: every relative link and #anchor resolves, the README stays
one screen, and no page under docs/ is unreachable. Plain text checks: no JAX, no network."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ID = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
EXTERNAL = re.compile(r"^(https?:|mailto:)", re.IGNORECASE)


def _git_ls(*args: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


def markdown_files() -> list[Path]:
    """Tracked Markdown files, and untracked ones git does not ignore, that exist in the tree."""
    names = set(_git_ls("*.md")) | set(_git_ls("--others", "--exclude-standard", "*.md"))
    return sorted(ROOT / n for n in names if (ROOT / n).is_file())


def _lines_outside_code(path: Path):
    """(line number, text) of each line outside fenced code blocks, inline code blanked out."""
    fence = None
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif m.group(1) == fence:
                fence = None
            continue
        if fence is None:
            yield i, CODE_SPAN.sub(lambda c: "_" * len(c.group(0)), line)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped (but '-' and '_'), spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every anchor a file offers: its headings' slugs (repeats numbered -1, -2, ... as GitHub does)
    and explicit <a name/id> targets."""
    seen: dict[str, int] = {}
    out = set()
    fence = None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = FENCE.match(line)
        if m:
            fence = m.group(1) if fence is None else (None if m.group(1) == fence else fence)
            continue
        if fence is not None:
            continue
        out.update(HTML_ID.findall(line))
        h = HEADING.match(line)
        if h:
            s = slug(h.group(2))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return frozenset(out)


def links(path: Path):
    """(line number, target) of every Markdown link, image and reference definition in a file."""
    for i, line in _lines_outside_code(path):
        for m in LINK.finditer(line):
            yield i, m.group(2).strip("<>")
        d = REF_DEF.match(line)
        if d:
            yield i, d.group(1).strip("<>")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _resolve(source: Path, target: str) -> tuple[Path, str]:
    file_part, _, anchor = target.partition("#")
    dest = source if file_part == "" else (source.parent / unquote(file_part)).resolve()
    return dest, unquote(anchor)


def test_every_relative_link_and_anchor_resolves():
    bad = []
    for md in markdown_files():
        for line, target in links(md):
            if EXTERNAL.match(target):
                continue
            dest, anchor = _resolve(md, target)
            if not dest.exists():
                shown = dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest
                bad.append(f"{_rel(md)}:{line}: {target} (no such file: {shown})")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{_rel(md)}:{line}: {target} (no heading #{anchor} in {_rel(dest)})")
    assert not bad, "broken Markdown links:\n" + "\n".join(bad)


def test_the_readme_is_one_screen():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md:{n}: {n} lines, more than {README_MAX_LINES}; move detail into docs/"


def test_every_docs_page_is_linked_from_the_readme_or_another_page():
    files = markdown_files()
    pages = [f for f in files if f.is_relative_to(ROOT / "docs")]
    sources = [ROOT / "README.md"] + pages
    linked: dict[Path, list[str]] = {}
    for src in sources:
        if not src.is_file():
            continue
        for line, target in links(src):
            if EXTERNAL.match(target):
                continue
            dest, _ = _resolve(src, target)
            if dest != src.resolve():
                linked.setdefault(dest, []).append(f"{_rel(src)}:{line}")
    orphans = [
        f"{_rel(p)}:1: linked from neither README.md nor another docs page" for p in pages if p.resolve() not in linked
    ]
    assert not orphans, "orphan docs pages:\n" + "\n".join(orphans)


def test_the_checks_see_what_they_should():
    """The link checker's own parts, on strings: slugs, code blocks skipped, anchors numbered."""
    assert slug("DPM-Solver++: quality in 10 steps") == "dpm-solver-quality-in-10-steps"
    assert slug("Sample quality: `bench/digits_quality.py`") == "sample-quality-benchdigits_qualitypy"
    assert slug("Interpolation (Ho et al. 2020, Sec. 4.4)") == "interpolation-ho-et-al-2020-sec-44"
    assert slug("Fréchet [distance](reference.md)") == "fréchet-distance"
    line = 'see `[not](a link)` and [one](docs/reference.md#y) and ![pic](../p.png "t") [-1, 1] (no)'
    found = [m.group(2) for m in LINK.finditer(CODE_SPAN.sub(lambda c: "_" * len(c.group(0)), line))]
    assert found == ["docs/reference.md#y", "../p.png"]
