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

import json

from absl import flags, logging

from pipelines.common import (
    check_no_arguments,
    define,
    define_gates,
    define_output_checks,
    define_output_losses,
    guard,
    keras_verbose,
    report_gates,
    report_warnings,
    require,
    run_main,
)

_MODEL = define("string", "model", None, "Float tf_keras model to train (.keras/.h5/SavedModel/"
                "module:function).")
_TRAIN_DATA = define("string", "train_data", None, "Training data (same kinds as "
                     "pipelines.convert --data); labels per output as y_<output name> in an .npz; "
                     "unlabelled with distillation.")
_EVAL_DATA = define("string", "eval_data", None, "Evaluation data (labels optional).")
_SCHEME = define("string", "scheme", "default_int8",
                 "QAT weight scheme: default_int8, pow2, asymmetric, log_companding, linear or lsq.")
_STRATEGY = flags.DEFINE_enum("strategy", "gradient", ["gradient", "statistics", "distill"],
                              "gradient (STE, optional quantization-error loss), statistics "
                              "(moving-average ranges, weights frozen), distill (teacher).")
_TEACHER = flags.DEFINE_string("teacher", None, "Float teacher for --strategy=distill.")
_EPOCHS = define("integer", "epochs", 10, "Training epochs.")
_BATCH_SIZE = define("integer", "batch_size", None, "Batch size (default: 64).")
_LEARNING_RATE = define("float", "learning_rate", 1e-4, "Adam learning rate.")
_QUANT_ERROR_WEIGHT = flags.DEFINE_float("quant_error_weight", 0.0,
                                         "λ of the quantization-error loss (gradient strategy).")
_TEMPERATURE = flags.DEFINE_float("temperature", 4.0, "Distillation temperature.")
_ALPHA = flags.DEFINE_float("alpha", 0.5, "Weight of the label loss against distillation.")
_OVERRIDES = flags.DEFINE_string("overrides", None, "JSON list of per-layer overrides, e.g. "
                                 '\'[{"match": "^conv2d$", "weight_bits": 8}]\'.')
_ACTIVATION_RANGES = flags.DEFINE_enum(
    "activation_ranges", "default", ["default", "minmax", "meanstd"],
    "Activation ranges: moving averages of batch min/max (default: tfmot's quantizer; minmax: "
    "tflq's) or of mean ± k·σ (meanstd, clipped to min/max).")
_RANGE_K = flags.DEFINE_float("range_k", 3.0, "k for --activation_ranges=meanstd.")
_DISTRIBUTION = flags.DEFINE_enum("distribution", "default",
                                  ["default", "mirrored", "multi_worker"],
                                  "tf.distribute strategy (multi_worker reads TF_CONFIG).")
_NUM_TRAIN_SAMPLES = define("integer", "num_train_samples", None,
                                          "Train on at most this many samples (seeded draw).")
_OUT = define("string", "out", None, "Output folder (default: tflq_qat).")
_SEED = define("integer", "seed", 0, "Seed for sampling and initialization.")
_LAYER_ERROR_SAMPLES = define(
    "integer", "layer_error_samples", None, "Calibration (QAT: training) samples for the per-layer "
    "error of every quantized mode (default: 16; 0 turns it off).")
_OUTPUT_LOSSES = define_output_losses()
_MAX_ACCURACY_DROP, _MIN_AGREEMENT = define_gates()
_OUTPUT_TASKS, _GATE = define_output_checks()


def output_folder() -> str:
    return _OUT.value or "tflq_qat"


def main(argv) -> int:
    """Runs the command under the exit-code contract (see :func:`pipelines.common.guard`)."""
    return guard(lambda: _qat(argv), output_folder())


def _qat(argv) -> int:
    check_no_arguments(argv)
    logging.set_verbosity(logging.WARNING)
    from tflq import report
    from tflq.jobs import qat as qat_job

    require(model=_MODEL.value, train_data=_TRAIN_DATA.value, eval_data=_EVAL_DATA.value)
    try:
        overrides = tuple(json.loads(_OVERRIDES.value)) if _OVERRIDES.value else ()
    except json.JSONDecodeError as e:
        raise ValueError(f"--overrides is not valid JSON: {e}") from e
    job = qat_job.QATJob(
        model=_MODEL.value, train_data=_TRAIN_DATA.value, eval_data=_EVAL_DATA.value,
        out=output_folder(), verbose=keras_verbose(), scheme=_SCHEME.value,
        strategy=_STRATEGY.value,
        teacher=_TEACHER.value, epochs=_EPOCHS.value, batch_size=_BATCH_SIZE.value or 64,
        learning_rate=_LEARNING_RATE.value, quant_error_weight=_QUANT_ERROR_WEIGHT.value,
        temperature=_TEMPERATURE.value, alpha=_ALPHA.value, overrides=overrides,
        activation_ranges=None if _ACTIVATION_RANGES.value == "default"
        else _ACTIVATION_RANGES.value, range_k=_RANGE_K.value,
        distribution=_DISTRIBUTION.value, num_train_samples=_NUM_TRAIN_SAMPLES.value,
        seed=_SEED.value,
        output_losses=_OUTPUT_LOSSES.value or (),
        layer_error_samples=16 if _LAYER_ERROR_SAMPLES.value is None else _LAYER_ERROR_SAMPLES.value,
        output_tasks=_OUTPUT_TASKS.value,
        gates=report.Gates(max_accuracy_drop=_MAX_ACCURACY_DROP.value,
                           min_agreement=_MIN_AGREEMENT.value, gate=tuple(_GATE.value or ())))
    result = qat_job.run_qat_job(job)
    print(report.format_table(result.report))
    parity = result.report["qat"]["parity"]
    print(f"\nQAT Keras vs TFLite int8: top-1 agreement {100 * parity['top1_agreement']:.2f}%, "
          f"{100 * parity['within_1_lsb']:.2f}% of outputs within one LSB")
    report_warnings(result)
    return report_gates(result)


def run() -> None:
    """The installed ``tflq-qat`` (and ``python -m pipelines.qat``)."""
    run_main(main, output_folder)


if __name__ == "__main__":
    run()
