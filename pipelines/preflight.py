r"""Preflight: what in a model will hurt int8 quantization, before converting.

  python -m pipelines.preflight --model m.keras                       # weights, ops
  tflq-preflight --model m.keras --data calib.npz \
      --eval_data eval.npz --out preflight/                           # + activations, inputs

Installed as tflq-preflight (same flags). Prints one row per finding (check, where, what,
suggested fix); with --out also writes preflight.json and preflight.md. Exit codes: 0
(findings are advice, not failures); 1 internal error (traceback in <out>/error.log, or a
temporary file without --out); 2 bad input or flags (nothing written).
"""

from __future__ import annotations

import os

from absl import logging

from pipelines.common import check_no_arguments, define_settings, guard, require, run_main, setting_values
from tflq.jobs.preflight import PreflightJob

# Every flag is a field of tflq.jobs.preflight.PreflightJob (help, default).
_SETTINGS = define_settings(PreflightJob)


def build_job() -> PreflightJob:
    """Turns the flags into a PreflightJob (ValueError naming the flag on a bad value)."""
    from tflq import settings

    values = setting_values(PreflightJob, _SETTINGS)
    require(model=values.get("model"))
    return settings.build(PreflightJob, values)


def output_folder() -> str | None:
    return _SETTINGS["out"].value


def main(argv) -> int:
    """Runs the command under the exit-code contract (see :func:`pipelines.common.guard`)."""
    return guard(lambda: _preflight(argv), output_folder())


def _preflight(argv) -> int:
    check_no_arguments(argv)
    logging.set_verbosity(logging.WARNING)
    from tflq import report
    from tflq.jobs import preflight as preflight_job

    job = build_job()
    result = preflight_job.run_preflight_job(job)
    print(report.format_findings(result.report["findings"]))
    if result.files:
        print(f"\nwrote preflight.json and preflight.md to {os.path.abspath(job.out)}")
    return 0


def run() -> None:
    """The installed ``tflq-preflight`` (and ``python -m pipelines.preflight``)."""
    run_main(main, output_folder)


if __name__ == "__main__":
    run()
