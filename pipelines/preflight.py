"""Preflight: what in a model will hurt int8 quantization, before converting.

  python -m pipelines.preflight --model m.keras                       # weights, ops
  python -m pipelines.preflight --model m.keras --data calib.npz \\
      --eval_data eval.npz --out preflight/                           # + activations, inputs

Prints one row per finding (check, where, what, suggested fix); with --out also writes
preflight.json and preflight.md. Exit codes: 0 (findings are advice, not failures);
2 bad input (nothing written).
"""

from __future__ import annotations

import os
import sys

from absl import app, logging

from pipelines.common import define, require

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


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}", exitcode=2)
    logging.set_verbosity(logging.WARNING)
    from tflq import report
    from tflq.jobs import preflight as preflight_job

    try:
        require(model=_MODEL.value)
        job = preflight_job.PreflightJob(
            model=_MODEL.value, data=_DATA.value, eval_data=_EVAL_DATA.value,
            num_calibration_samples=_NUM_CALIBRATION_SAMPLES.value or 500, seed=_SEED.value,
            out=_OUT.value)
        result = preflight_job.run_preflight_job(job)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.format_findings(result.report["findings"]))
    if result.files:
        print(f"\nwrote preflight.json and preflight.md to {os.path.abspath(_OUT.value)}")
    return 0


if __name__ == "__main__":
    app.run(main)
