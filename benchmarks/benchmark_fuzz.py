"""Fuzz benchmark: runs every fuzz target of the test suite with many examples and records
how many inputs each one tried and how they ended (writes JSON; not a timed test).

The targets are the ``*_many`` tests of ``tests/test_fuzz_inputs.py``,
``tests/test_fuzz_flags.py`` and ``tests/test_fuzz_specs.py`` (the slow twins of the CI fuzz
tests), run in this process with ``TFLQ_FUZZ_EXAMPLES`` examples per cheap target and a
quarter of that per model-file target. Outcomes are counted as they happen
(``fuzz_support.OUTCOMES``): ``exit 0``/``exit 2``/``exit 3`` for the commands,
``ValueError``/``result`` for the library, ``traceback`` and ``exit 1`` for broken promises.

  python -m benchmarks.benchmark_fuzz --examples 200   # about 40 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from importlib import metadata

from benchmarks.readme_fuzz import BROKEN  # outcomes the contract forbids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
FUZZ_FILES = ("test_fuzz_inputs.py", "test_fuzz_flags.py", "test_fuzz_specs.py")
DEFAULT_JSON = os.path.join(ROOT, "benchmarks", "results", "benchmark_fuzz.json")

__all__ = ["run_fuzzers", "summarize", "main"]


def run_fuzzers(examples: int, select: str | None = None) -> tuple[int, dict, float]:
    """Runs the slow fuzz tests in this process; returns pytest's exit code, the outcome
    counts per target and the seconds taken."""
    os.environ["TFLQ_FUZZ_EXAMPLES"] = str(examples)
    sys.path.insert(0, TESTS)
    import fuzz_support  # the module the tests import: the same counter
    import pytest

    args = [os.path.join(TESTS, f) for f in FUZZ_FILES]
    args += ["-q", "-p", "no:cacheprovider", "-m", "slow", "-k", select or "many", "--rootdir", ROOT]
    start = time.perf_counter()
    code = pytest.main(args)
    return int(code), {k: dict(v) for k, v in fuzz_support.OUTCOMES.items()}, \
        time.perf_counter() - start


def summarize(code: int, outcomes: dict, seconds: float, examples: int) -> dict:
    from tflq import runtime

    targets = {name: {"inputs": sum(counts.values()), "outcomes": dict(sorted(counts.items())),
                      "broken": sum(counts.get(b, 0) for b in BROKEN)}
               for name, counts in sorted(outcomes.items())}
    return {
        "benchmark": "fuzz", "machine": runtime.machine_description(),
        "versions": {**runtime.versions(), "hypothesis": metadata.version("hypothesis")},
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "examples_setting": examples, "pytest_exit_code": code, "seconds": round(seconds, 1),
        "total_inputs": sum(t["inputs"] for t in targets.values()),
        "total_broken": sum(t["broken"] for t in targets.values()), "targets": targets,
    }


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one `error:` line and exit 2, like every tflq command
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m benchmarks.benchmark_fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200,
                        help="examples per cheap target (model-file targets: a quarter)")
    parser.add_argument("--json", default=DEFAULT_JSON, help="where to write the results")
    parser.add_argument("-k", dest="select", default=None, help="pytest -k expression (default: many)")
    args = parser.parse_args(argv)
    if args.examples < 1:
        parser.error(f"--examples must be at least 1. Received: {args.examples}")
    code, outcomes, seconds = run_fuzzers(args.examples, args.select)
    summary = summarize(code, outcomes, seconds, args.examples)
    from tflq.fileio import write_atomic
    from tflq.report import to_json

    write_atomic(args.json, to_json(summary))
    print(f"{summary['total_inputs']} inputs, {summary['total_broken']} broken promises, "
          f"pytest exit {code}; wrote {args.json}")
    return 0 if code == 0 and summary["total_broken"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
