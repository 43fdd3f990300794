r"""Prune and/or cluster → quantize (structure-preserving QAT, or PTQ) → validate → report.

  python -m pipelines.compress --model m.keras --train_data train.npz --eval_data eval.npz \
      --sparsity 0.8 --schedule polynomial --epochs 2 --out compressed

  python -m pipelines.compress ... --structure 2:4 --layers '^(?!conv2d$)'   # 2:4 sparsity
  python -m pipelines.compress ... --clusters 16                              # CQAT
  python -m pipelines.compress ... --sparsity 0.5 --quantization ptq          # pruned PTQ

Installed as tflq-compress (same flags). Writes ``<model>_compressed_int8.tflite`` and
report.json / report.md: accuracy against the float model, raw and gzip size, per-layer
sparsity and unique int8 values read from the .tflite, 2:4 compliance, and the size with
TFLite's sparse tensor encoding. The prune
and cluster stages train ``--epochs`` epochs, QAT ``--qat_epochs``; progress per epoch.
Exit codes: 0 success; 1 internal error (traceback in <out>/error.log); 2 bad input or flags
(nothing written); 3 a gate failed (--max_accuracy_drop, --min_agreement; outputs written).
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
from tflq.jobs.compress import CompressJob

# Every flag is a field of tflq.jobs.compress.CompressJob (help, default, allowed values).
_SETTINGS = define_settings(CompressJob)
DEFAULT_OUT = "tflq_compress"


def build_job() -> CompressJob:
    """Turns the flags into a CompressJob (ValueError naming the flag on a bad value)."""
    return build_settings_job(CompressJob, _SETTINGS, DEFAULT_OUT,
                              required=("model", "train_data", "eval_data"), verbose=keras_verbose())


def output_folder() -> str:
    return output_folder_of(_SETTINGS, DEFAULT_OUT)


def main(argv) -> int:
    """Runs the command under the exit-code contract (see :func:`pipelines.common.guard`)."""
    return guard(lambda: _compress(argv), output_folder())


def _compress(argv) -> int:
    check_no_arguments(argv)
    logging.set_verbosity(logging.WARNING)
    from tflq import report
    from tflq.jobs import compress as compress_job

    job = build_job()
    result = compress_job.run_compress_job(job)
    print(report.format_table(result.report))
    c = result.report["compression"]
    print(f"\n{' → '.join(c['stages'])}")
    print(f"size {c['size_bytes']:,} B, gzip {c['gzip_bytes']:,} B "
          f"(float32 gzip {c['float32_gzip_bytes']:,} B); weight sparsity "
          f"{100 * c['weight_sparsity']:.1f}%; sparse encoding {c['sparse_encoding']['size_bytes']:,} B "
          f"({c['sparse_encoding']['sparse_tensors']} tensor(s) encoded)")
    report_warnings(result)
    return report_gates(result)


def run() -> None:
    """The installed ``tflq-compress`` (and ``python -m pipelines.compress``)."""
    run_main(main, output_folder)


if __name__ == "__main__":
    run()
