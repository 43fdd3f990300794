"""What the fuzz tests share: Hypothesis profiles, the outcome counter, corrupted bytes, and
running a command in-process under the exit-code contract.

Two settings (:func:`profile`): CI's (a few derandomized examples per target, see
:data:`CI_EXAMPLES`: the suite stays fast and a failure reproduces) and ``many``
(``TFLQ_FUZZ_EXAMPLES`` examples per target, default 200, random, for the
``@pytest.mark.slow`` twins and ``benchmarks/benchmark_fuzz.py``). No deadline (the machine
is shared) and no shrinking. Every example a target runs is counted in :data:`OUTCOMES`
(target → {outcome: count}).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections import Counter, defaultdict

from absl.testing import flagsaver
from conftest import snapshot
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

__all__ = ["CI_EXAMPLES", "MANY_EXAMPLES", "OUTCOMES", "profile", "record", "corrupt",
           "CliRun", "run_cli", "check_cli_outcome", "output_folder", "prefilled_folder",
           "remove_tree"]

CI_EXAMPLES = {"cheap": 10, "model": 4, "job": 3}
MANY_EXAMPLES = int(os.environ.get("TFLQ_FUZZ_EXAMPLES", "200"))
# No shrinking: a run takes up to seconds and the failing example is printed as drawn.
_COMMON = dict(deadline=None, database=None, print_blob=True,
               phases=[Phase.explicit, Phase.reuse, Phase.generate],
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture,
                                      HealthCheck.filter_too_much])

# target -> Counter of outcomes ("exit 0", "exit 2", "ValueError", ...), filled by record().
OUTCOMES: dict[str, Counter] = defaultdict(Counter)


def profile(cost: str, many: bool = False):
    """Hypothesis settings for a target: ``cost`` (cheap, model or job) bounds the CI
    examples; ``many`` takes :data:`MANY_EXAMPLES` (cheap targets) or a quarter of it."""
    if many:
        count = MANY_EXAMPLES if cost == "cheap" else max(1, MANY_EXAMPLES // 4)
        return settings(max_examples=count, derandomize=False, **_COMMON)
    return settings(max_examples=CI_EXAMPLES[cost], derandomize=True, **_COMMON)


def record(target: str, outcome: str) -> None:
    """Counts one example of ``target``: ``exit N``, ``traceback``, ``ValueError``, ``result``."""
    OUTCOMES[target][outcome] += 1


@st.composite
def corrupt(draw, data: bytes) -> bytes:
    """``data`` truncated, bit-flipped (1-8 bits anywhere), or both."""
    kind = draw(st.sampled_from(["truncate", "flip", "both"]))
    out = bytearray(data)
    if kind in ("flip", "both"):
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(out) - 1))
            out[pos] ^= 1 << draw(st.integers(0, 7))
    if kind in ("truncate", "both"):
        out = out[:draw(st.integers(0, len(out) - 1))]
    return bytes(out)


class CliRun:
    def __init__(self, code: int, stdout: str, stderr: str):
        self.code, self.stdout, self.stderr = code, stdout, stderr


def run_cli(module, argv: list[str], capfd) -> CliRun:
    """``module``'s command line as ``tflq-X argv`` would run it (flag parsing, the contract,
    the capture of descriptors 1 and 2), in this process; flags are restored afterwards.
    ``capfd`` is pytest's fixture: the command writes to the descriptors themselves."""
    from pipelines import common

    folder = getattr(module, "output_folder", lambda: None)
    capfd.readouterr()
    with flagsaver.flagsaver():
        try:
            common.run_main(module.main, folder, ["tflq", *argv])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    captured = capfd.readouterr()
    return CliRun(code, captured.out, captured.err)


def check_cli_outcome(target: str, run: CliRun, out: str | None, before: dict | None,
                      allowed=(0, 2)) -> None:
    """The front door's promise: an allowed exit code, never a traceback; exit 2 with exactly
    one ``error:`` line and ``out`` as it was (byte for byte, or absent if it was new)."""
    record(target, "traceback" if "Traceback" in run.stderr else f"exit {run.code}")
    assert "Traceback" not in run.stderr, run.stderr
    assert run.code in allowed, f"exit {run.code}:\n{run.stderr}"
    if run.code == 2:
        lines = run.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
        assert re.search(r"\S", lines[0][len("error: "):]), run.stderr
        if out is not None:
            if before is None:
                assert not os.path.exists(out), os.listdir(out)
            else:
                assert snapshot(out) == before


def output_folder(prefix: str = "fuzz-") -> str:
    """A new temporary folder's path, not yet created (a fresh one per example)."""
    return os.path.join(tempfile.mkdtemp(prefix=prefix), "out")


def prefilled_folder() -> tuple[str, dict]:
    """An output folder holding an earlier run's files, and their hashes."""
    out = output_folder()
    os.makedirs(out)
    with open(os.path.join(out, "report.json"), "w") as f:
        f.write('{"from": "an earlier run"}\n')
    with open(os.path.join(out, "model_float32.tflite"), "wb") as f:
        f.write(b"earlier model bytes")
    return out, snapshot(out)


def remove_tree(out: str) -> None:
    shutil.rmtree(os.path.dirname(out), ignore_errors=True)
