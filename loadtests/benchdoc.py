"""docs/benchmarks.md is shared by the benchmark scripts: each owns one section between its
`<!-- name:start -->` and `<!-- name:end -->` markers and rewrites only that."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def replace_section(start: str, end: str, text: str, doc_path: Path = DOC) -> None:
    """Put `text` between the `start` and `end` markers, appending the section if it is new."""
    block = f"{start}\n{text.rstrip()}\n{end}"
    doc = doc_path.read_text() if doc_path.exists() else "# Benchmarks\n"
    if start in doc and end in doc:
        head, rest = doc.split(start, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    doc_path.write_text(doc)
