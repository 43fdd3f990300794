r"""Convert a Keras model to TFLite in every mode, validate each, report, and gate.

  python -m pipelines.convert                      # the bundled Fashion-MNIST example
  python -m pipelines.convert --model m.keras --data calib.npz --eval_data eval.npz \
      --modes int8,float16 --out out/ --max_accuracy_drop 0.5
  tflq-convert --model nmp/ --data audio.npz --modes float32,int8 --allow_float_ops \
      --output_tasks contour=multilabel --gate 'onset:f1>=0.95'   # per-output tasks and gates
  tflq-convert --backend both --modes int8 \
      --recipes static_wi8_ai8,dynamic_wi4_afp32     # converter and LiteRT Quantizer side by side

Installed as tflq-convert (same flags). Exit codes: 0 success; 1 internal error (traceback
in <out>/error.log); 2 bad input or flags (nothing written); 3 a quality gate failed (models
and report written, the report says which gate).
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging

from pipelines.common import (
    check_no_arguments,
    define,
    define_settings,
    guard,
    output_folder_of,
    progress_setting,
    report_gates,
    run_main,
    setting_values,
)
from tflq.jobs.convert import BACKENDS, DEFAULT_RECIPES, ConvertJob

EXAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "example")
EXAMPLE_MODEL = os.path.join(EXAMPLE_DIR, "fashion_mnist_cnn.keras")
EXAMPLE_CALIBRATION = os.path.join(EXAMPLE_DIR, "calibration-images-idx3-ubyte.gz")
EXAMPLE_EVALUATION = os.path.join(EXAMPLE_DIR, "evaluation-images-idx3-ubyte.gz")
ALL_MODES = ("float32", "float16", "dynamic", "int8", "int16x8")
__all__ = ["BACKENDS", "DEFAULT_RECIPES", "build_job", "output_folder", "main", "run"]

# Every flag of the job is a field of tflq.jobs.convert.ConvertJob (help, default, values).
_SETTINGS = define_settings(ConvertJob)
_QUIET = define("bool", "quiet", False, "No progress bars.")


def build_job() -> ConvertJob:
    """Turns the flags into a tflq.ConvertJob (ValueError on bad combinations)."""
    from tflq import settings

    values = setting_values(ConvertJob, _SETTINGS)
    if values.get("model") is None:
        values["model"] = EXAMPLE_MODEL
        if values.get("data") is None:
            values["data"] = EXAMPLE_CALIBRATION
            values["eval_data"] = values.get("eval_data") or EXAMPLE_EVALUATION
    elif values.get("data") is None:
        raise ValueError("--data is required when --model is given (calibration data).")
    if values.get("backend") == "litert" and not flags.FLAGS["modes"].using_default_value:
        raise ValueError("--modes picks converter modes; with --backend litert use --recipes "
                         "(or --backend both for converter and LiteRT side by side).")
    values["out"] = output_folder()
    return settings.build(ConvertJob, values, progress=progress_setting(_QUIET.value))


def output_folder() -> str:
    return output_folder_of(_SETTINGS, "tflq_out")


def main(argv) -> int:
    """Runs the command under the exit-code contract (see :func:`pipelines.common.guard`)."""
    return guard(lambda: _convert(argv), output_folder())


def _convert(argv) -> int:
    check_no_arguments(argv)
    logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines drown the table
    from tflq import report, report_outputs
    from tflq.jobs import convert as convert_job

    job = build_job()
    result = convert_job.run_job(job)
    print(report.format_table(result.report))
    headline = report_outputs.headline_line(result.report)
    if headline:
        print(headline)
    for line in result.report.get("warnings", []):
        print(f"warning: {line}", file=sys.stderr)
    print(f"\nwrote {len(result.files)} files to {os.path.abspath(job.out)}")
    return report_gates(result)


def run() -> None:
    """The installed ``tflq-convert`` (and ``python -m pipelines.convert``)."""
    run_main(main, output_folder)


if __name__ == "__main__":
    run()
