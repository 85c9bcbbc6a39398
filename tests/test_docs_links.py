"""Every relative link of the documentation resolves: README.md, docs/**/*.md and the Helm chart's README link
only to files and folders that exist, and every #anchor names a heading of its target as GitHub renders it
(github-slugger: lower case, punctuation dropped, spaces to hyphens, Cyrillic kept, -1/-2 for repeats). And no
page of docs/ is an orphan: the README's table of documents reaches each one."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ROOT

CHART_README = ROOT / "deploy" / "helm" / "tritoned-bert" / "README.md"

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"(`+).+?\1", re.S)
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto:, ...


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), CHART_README]


def prose(path: Path) -> str:
    """The text of a Markdown file without its fenced code blocks and inline code (links there are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it (github-slugger)."""
    text = re.sub(r"!?\[((?:[^\]\[]|\[[^\]]*\])*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # punctuation and symbols go; letters of any script, digits, _ and - stay
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a Markdown file's headings, repeats numbered as GitHub numbers them."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(text):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    return [target for target in LINK.findall(prose(path)) if not EXTERNAL.match(target)]


def test_slug_matches_github_on_the_headings_this_project_uses() -> None:
    assert slug("Виды моделей: что спросить и что ответит") == "виды-моделей-что-спросить-и-что-ответит"
    assert slug("NLI и другие модели пар текстов (`--text-pair`)") == "nli-и-другие-модели-пар-текстов---text-pair"
    assert slug("Здоровье, восстановление, остановка, память") == "здоровье-восстановление-остановка-память"
    assert slug("Rolling updates and stopping") == "rolling-updates-and-stopping"
    assert slug("Образ — шаг 2") == "образ--шаг-2"
    assert slug("[Метрики](metrics.md) и дашборд") == "метрики-и-дашборд"


def test_the_link_checker_sees_a_broken_link_and_a_broken_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Заголовок\n\n[a](#заголовок) [b](#нет-такого) [c](missing.md) `[d](ignored.md)`\n"
                    "```\n[e](also-ignored.md)\n```\n[f](https://example.com)\n", encoding="utf-8")
    assert links(page) == ["#заголовок", "#нет-такого", "missing.md"]
    assert anchors(page) == {"заголовок"}


@pytest.mark.parametrize("document", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(document: Path) -> None:
    broken = []
    for target in links(document):
        file_part, _, anchor = target.partition("#")
        resolved = (document.parent / file_part).resolve() if file_part else document
        if not resolved.exists():
            broken.append(f"{target}: no such file or folder {resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: {resolved.relative_to(ROOT)} has no heading with the anchor #{anchor}")
        elif anchor and resolved.suffix != ".md":
            broken.append(f"{target}: an anchor into a file that is not Markdown")
    assert not broken, "\n".join(broken)


def test_the_readme_reaches_every_page_of_docs_and_the_chart() -> None:
    from_readme = {(ROOT / target.partition("#")[0]).resolve() for target in links(ROOT / "README.md")
                   if target.partition("#")[0]}
    pages = {page.resolve() for page in (ROOT / "docs").rglob("*.md")}
    assert not pages - from_readme, f"pages of docs/ the README does not link: {sorted(pages - from_readme)}"
    assert CHART_README.resolve() in from_readme, "the README does not link the chart's README (Kubernetes)"
