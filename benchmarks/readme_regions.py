"""README regions between ``<!-- kind:name -->`` and ``<!-- /kind:name -->`` markers.

Reading them, comparing them with a rendering (a unified diff per differing region) and
replacing their content; ``benchmarks.readme_tables`` renders what goes inside.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping

__all__ = ["Mismatch", "read_regions", "compare", "replace_regions"]

_MARKER = re.compile(r"<!-- (/?)((?:intro|table|notes):[A-Za-z0-9_]+) -->")


def read_regions(readme: str) -> dict[str, str]:
    """{region id: text between its markers, stripped}; ValueError on an unclosed, nested,
    stray or repeated marker (with its line number)."""
    regions, open_id, start = {}, None, 0
    for match in _MARKER.finditer(readme):
        closing, region = match.group(1) == "/", match.group(2)
        line = readme.count("\n", 0, match.start()) + 1
        if not closing:
            if open_id is not None:
                raise ValueError(f"README line {line}: marker {region!r} opens inside {open_id!r}")
            if region in regions:
                raise ValueError(f"README line {line}: region {region!r} appears twice")
            open_id, start = region, match.end()
        else:
            if open_id != region:
                raise ValueError(f"README line {line}: closing marker {region!r} without its "
                                 f"opening marker (open: {open_id!r})")
            regions[region] = readme[start:match.start()].strip()
            open_id = None
    if open_id is not None:
        raise ValueError(f"README: region {open_id!r} is never closed (<!-- /{open_id} -->)")
    return regions


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """One README region that differs from its rendering (``diff`` is a unified diff)."""

    region: str
    expected: str  # rendered from the JSON
    found: str | None  # in the README; None when its markers are missing

    @property
    def diff(self) -> str:
        if self.found is None:
            return f"README has no region {self.region!r} (<!-- {self.region} --> ... <!-- /{self.region} -->)"
        return "\n".join(difflib.unified_diff(
            self.found.splitlines(), self.expected.splitlines(), f"README.md [{self.region}]",
            f"rendered from JSON [{self.region}]", lineterm=""))


def compare(readme: str, rendered: Mapping[str, str]) -> list[Mismatch]:
    """Every rendered region that README text lacks or holds with different text."""
    found = read_regions(readme)
    return [Mismatch(region, text, found.get(region)) for region, text in rendered.items()
            if found.get(region) != text]


def replace_regions(readme: str, rendered: Mapping[str, str]) -> str:
    """README text with each rendered region's content replaced; ValueError if one is missing."""
    missing = sorted(set(rendered) - set(read_regions(readme)))
    if missing:
        raise ValueError(f"README lacks the markers of {missing}: add <!-- region --> and "
                         "<!-- /region --> where each belongs, then --write")

    def substitute(match: re.Match) -> str:
        region = match.group(1)
        if region not in rendered:
            return match.group(0)
        return f"<!-- {region} -->\n\n{rendered[region]}\n\n<!-- /{region} -->"

    return re.sub(r"<!-- ((?:intro|table|notes):[A-Za-z0-9_]+) -->.*?<!-- /\1 -->", substitute,
                  readme, flags=re.DOTALL)
