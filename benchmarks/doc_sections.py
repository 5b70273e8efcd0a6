"""A section of docs/benchmarks.md that a benchmark of its own writes between two markers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class DocSection:
    """Where one benchmark's section sits in the doc: between `begin` and `end`."""

    begin: str
    end: str

    def _pattern(self) -> re.Pattern[str]:
        return re.compile(re.escape(self.begin) + ".*?" + re.escape(self.end) + "\n?", re.S)

    def wrap(self, lines: list[str]) -> str:
        return "\n".join([self.begin, *lines, self.end]) + "\n"

    def write(self, text: str, doc: Path = DOC) -> None:
        """Put the section in the doc in place of its last version (appended the first time)."""
        current = doc.read_text(encoding="utf-8") if doc.exists() else ""
        if self._pattern().search(current):
            updated = self._pattern().sub(lambda _: text, current)
        else:
            updated = current.rstrip("\n") + "\n\n" + text
        doc.write_text(updated, encoding="utf-8")

    def keep(self, previous: str, doc: Path = DOC) -> None:
        """After the doc was rewritten without it, put back the section `previous` held, if any."""
        found = self._pattern().search(previous)
        if found:
            self.write(found.group(0), doc)
