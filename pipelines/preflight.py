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

from pipelines.common import check_no_arguments, define, guard, require, run_main

_MODEL = define("string", "model", None, "Model to check (.keras/.h5/SavedModel/"
                "module:function).")
_DATA = define("string", "data", None, "Calibration data: .npz/.npy, IDX images file, image "
               "folder, or package.module:function. Required with --model.")
_EVAL_DATA = define("string", "eval_data", None, "Labelled evaluation data.")
_NUM_CALIBRATION_SAMPLES = define(
    "integer", "num_calibration_samples", None,
    "Calibration samples drawn from --data with --seed (default: 500).")
_SEED = define("integer", "seed", 0, "Seed for sampling and initialization.")
_OUT = define("string", "out", None, "Output folder for preflight.json/md (default: print "
              "only).")


def output_folder() -> str | None:
    return _OUT.value


def main(argv) -> int:
    """Runs the command under the exit-code contract (see :func:`pipelines.common.guard`)."""
    return guard(lambda: _preflight(argv), output_folder())


def _preflight(argv) -> int:
    check_no_arguments(argv)
    logging.set_verbosity(logging.WARNING)
    from tflq import report
    from tflq.jobs import preflight as preflight_job

    require(model=_MODEL.value)
    job = preflight_job.PreflightJob(
        model=_MODEL.value, data=_DATA.value, eval_data=_EVAL_DATA.value,
        num_calibration_samples=_NUM_CALIBRATION_SAMPLES.value or 500, seed=_SEED.value,
        out=_OUT.value)
    result = preflight_job.run_preflight_job(job)
    print(report.format_findings(result.report["findings"]))
    if result.files:
        print(f"\nwrote preflight.json and preflight.md to {os.path.abspath(_OUT.value)}")
    return 0


def run() -> None:
    """The installed ``tflq-preflight`` (and ``python -m pipelines.preflight``)."""
    run_main(main, output_folder)


if __name__ == "__main__":
    run()
