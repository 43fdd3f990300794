r"""Quantization-aware training → int8 .tflite → validation → report.

  python -m pipelines.qat --model m.keras --train_data train.npz --eval_data eval.npz \
      --scheme pow2 --strategy distill --teacher m.keras --epochs 3 --out qat_out

Installed as tflq-qat (same flags). Writes ``<model>_qat_int8.tflite``, the QAT Keras model
(``<model>_qat.h5``), and report.json / report.md / report.png with the float, QAT-Keras and
int8 numbers and the QAT→TFLite parity. Progress per epoch. Exit codes: 0 success; 1
internal error (traceback in <out>/error.log); 2 bad input or flags (nothing written); 3 a
gate failed (--max_accuracy_drop, --min_agreement; outputs written).
"""

from __future__ import annotations

from absl import logging

from pipelines.common import (
    build_settings_job,
    check_no_arguments,
    define_settings,
    guard,
    keras_verbose,
    output_folder_of,
    report_gates,
    report_warnings,
    run_main,
)
from tflq.jobs.qat import QATJob

# Every flag is a field of tflq.jobs.qat.QATJob (help, default, allowed values).
_SETTINGS = define_settings(QATJob)
DEFAULT_OUT = "tflq_qat"


def build_job() -> QATJob:
    """Turns the flags into a QATJob (ValueError naming the flag on a bad value)."""
    return build_settings_job(QATJob, _SETTINGS, DEFAULT_OUT,
                              required=("model", "train_data", "eval_data"), verbose=keras_verbose())


def output_folder() -> str:
    return output_folder_of(_SETTINGS, DEFAULT_OUT)


def main(argv) -> int:
    """Runs the command under the exit-code contract (see :func:`pipelines.common.guard`)."""
    return guard(lambda: _qat(argv), output_folder())


def _qat(argv) -> int:
    check_no_arguments(argv)
    logging.set_verbosity(logging.WARNING)
    from tflq import report
    from tflq.jobs import qat as qat_job

    job = build_job()
    result = qat_job.run_qat_job(job)
    print(report.format_table(result.report))
    parity = result.report["qat"]["parity"]
    print(f"\nQAT Keras vs TFLite int8: top-1 agreement {100 * parity['top1_agreement']:.2f}%, "
          + (f"{100 * parity['within_1_lsb']:.2f}% of outputs within one LSB"
             if parity["within_1_lsb"] is not None else "float output (no LSB)"))
    report_warnings(result)
    return report_gates(result)


def run() -> None:
    """The installed ``tflq-qat`` (and ``python -m pipelines.qat``)."""
    run_main(main, output_folder)


if __name__ == "__main__":
    run()
