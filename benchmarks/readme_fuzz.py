"""README regions of the fuzz benchmark (benchmark_fuzz.json), rendered from the JSON.

Registered in :data:`benchmarks.readme_tables.RENDERERS`; kept apart only for module size.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["OUTCOME_COLUMNS", "BROKEN", "render_fuzz"]

# Table columns, in order (any other outcome the JSON holds gets a column after them); the
# broken outcomes (a traceback or exit 1) are summed in the last column, which must read 0.
OUTCOME_COLUMNS = ("exit 0", "exit 2", "exit 3", "result", "ValueError")
BROKEN = ("traceback", "exit 1")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_fuzz(data: Mapping) -> dict[str, str]:
    """Regions of the fuzz benchmark: what ran, a row per target, the totals."""
    versions = data["versions"]
    minutes = data["seconds"] / 60
    intro = (
        f"`python -m benchmarks.benchmark_fuzz --examples {data['examples_setting']}` "
        f"({minutes:.0f} minutes here) runs every fuzz target of the suite with "
        f"{data['examples_setting']} random examples (a quarter of that for the damaged model "
        "files, each a full conversion when it happens to load) and counts how each ended "
        f"(`benchmarks/results/benchmark_fuzz.json`; {data['machine']}, TensorFlow "
        f"{versions['tensorflow']}, Hypothesis {versions['hypothesis']}). A command must end in "
        "exit 0 (the input happened to be valid), 2 (one `error:` line, the output folder as "
        "it was) or, with a gate flag drawn, 3; the library in a result or a `ValueError`:")
    seen = {o for t in data["targets"].values() for o in t["outcomes"]}
    columns = [*OUTCOME_COLUMNS, *sorted(seen - set(OUTCOME_COLUMNS) - set(BROKEN))]
    rows = []
    for name, target in data["targets"].items():
        counts = target["outcomes"]
        rows.append([name, f"{target['inputs']:,}",
                     *[f"{counts[c]:,}" if counts.get(c) else "–" for c in columns],
                     str(target["broken"])])
    table = _table(["target", "inputs", *columns, "traceback or exit 1"], rows)
    verdict = ("every run kept the contract" if data["total_broken"] == 0 and
               data["pytest_exit_code"] == 0 else
               f"**{data['total_broken']} runs broke the contract** (pytest exit "
               f"{data['pytest_exit_code']})")
    notes = (f"{data['total_inputs']:,} inputs in all; {verdict}. The CI suite runs the same "
             "targets with a few derandomized examples each (`tests/fuzz_support.py`).")
    return {"intro": intro, "table": table, "notes": notes}
