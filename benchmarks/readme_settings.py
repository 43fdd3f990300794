"""The README's tables of job settings (batch spec keys = command flags), rendered from the
job dataclasses (:mod:`tflq.settings`), so the README cannot drift from the code.

Each job kind owns one region of README.md, ``<!-- table:settings_convert -->`` …
``<!-- /table:settings_convert -->`` (likewise ``qat``, ``compress``).

  python -m benchmarks.readme_settings --check   # exit 1 and a diff per differing region
  python -m benchmarks.readme_settings --write   # rewrite the regions of README.md in place
"""

from __future__ import annotations

import argparse
import sys

from benchmarks.readme_regions import compare, replace_regions
from benchmarks.readme_tables import README
from tflq import settings
from tflq.batch.spec import JOB_KINDS, spec_settings
from tflq.fileio import write_atomic

__all__ = ["render_kind", "render_all", "main"]

_TYPES = {"bool": "bool", "int": "int", "float": "float", "str": "str",
          "list": "list of str (or a comma string)", "size": "[height, width]",
          "json": "list of tables", "losses": "table or str"}


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def render_kind(kind: str) -> str:
    """The Markdown table of one job kind's spec keys: key, type, default, meaning."""
    rows = ["| key = flag | type | default | meaning |", "|---|---|---|---|"]
    for item in spec_settings(kind).values():
        kind_text = (" / ".join(f"`{c}`" for c in item.choices) if item.kind == "enum"
                     else _TYPES[item.kind])
        default = settings.default_text(item)
        default = default if default in ("required", "–") else f"`{default}`"
        rows.append(f"| `{item.name}` | {kind_text} | {default} | {_cell(item.help)} |")
    return "\n".join(rows)


def render_all() -> dict[str, str]:
    return {f"table:settings_{kind}": render_kind(kind) for kind in JOB_KINDS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--check", action="store_true")
    group.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    with open(README, encoding="utf-8") as f:
        readme = f.read()
    rendered = render_all()
    if args.write:
        write_atomic(README, replace_regions(readme, rendered).encode("utf-8"))
        return 0
    mismatches = compare(readme, rendered)
    for mismatch in mismatches:
        print(mismatch.diff)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
