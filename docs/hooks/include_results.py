"""mkdocs hook: ``<!-- include benchmarks/results/NAME.md -->`` in a page is replaced by that file.

The benchmark tables are committed by the benchmark scripts (never rewritten by hand), so the site
shows them as they are instead of a copy that drifts. Included headings move two levels down so
they nest under the page's own; relative links and images (to files outside the site) become
plain text naming the file in the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

_INCLUDE = re.compile(r"^<!-- include (\S+) -->$", re.MULTILINE)
_LINK = re.compile(r"!?\[([^\]]*)\]\((?!https?:)([^)]+)\)")


def _included(root: Path, rel: str) -> str:
    path = (root / rel).resolve()
    if root.resolve() not in path.parents or not path.is_file():
        raise FileNotFoundError(f"include: {rel} is not a file of the repository ({root})")
    text = path.read_text(encoding="utf-8")
    folder = str(Path(rel).parent)
    text = _LINK.sub(lambda m: f"{m.group(1)} (`{folder}/{m.group(2)}`)", text)
    # The page introduces each include under a level-2 heading: the file's own headings go below.
    return re.sub(r"^(#{1,4}) ", r"##\1 ", text, flags=re.MULTILINE)


def on_page_markdown(markdown, page, config, files):
    root = Path(config["config_file_path"]).parent
    return _INCLUDE.sub(lambda m: _included(root, m.group(1)), markdown)
