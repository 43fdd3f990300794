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

_MODEL = define("string", "model", None, "Float tf_keras model (.keras/.h5/SavedModel/"
                "module:function); it must output logits.")
_TRAIN_DATA = define("string", "train_data", None, "Training data (same kinds as "
                     "pipelines.convert --data); labels per output as y_<output name> in an .npz; "
                     "unlabelled with distillation.")
_EVAL_DATA = define("string", "eval_data", None, "Evaluation data (labels optional).")
_OUT = define("string", "out", None, "Output folder (default: tflq_compress).")
_EPOCHS = define("integer", "epochs", 10, "Training epochs.")
_QAT_EPOCHS = define("integer", "qat_epochs", None, "QAT epochs (default: --epochs, which "
                     "counts the prune and cluster stages).")
_BATCH_SIZE = define("integer", "batch_size", None, "Batch size (default: 64).")
_LEARNING_RATE = define("float", "learning_rate", 1e-4, "Adam learning rate.")  # cosine-decayed
_QAT_LEARNING_RATE = flags.DEFINE_float("qat_learning_rate", None,
                                        "Adam learning rate of the QAT stage (default: "
                                        "--learning_rate).")
_DISTILL = flags.DEFINE_bool("distill", False, "QAT stage also learns from the original float "
                             "model as teacher (distillation).")
_SPARSITY = flags.DEFINE_float("sparsity", 0.0, "Target fraction of zero weights in [0, 1) "
                               "(0: no pruning).")
_SCHEDULE = flags.DEFINE_string("schedule", "constant", "Pruning schedule: constant or "
                                "polynomial (0 → --sparsity over the first 3/4 of training).")
_STRUCTURE = flags.DEFINE_string("structure", "unstructured", "unstructured, or 2:4 (two "
                                 "zeros in every four input-channel weights; 50%).")
_CLUSTERS = flags.DEFINE_integer("clusters", 0, "Weight clusters per layer (0: none; ≥ 2).")
_LAYERS = flags.DEFINE_string("layers", None, "Regular expression on layer names: which "
                              "layers to prune/cluster (default: all of --layer_types).")
_LAYER_TYPES = flags.DEFINE_list("layer_types", ["Conv2D", "Dense"],
                                 "Layer types to prune/cluster.")
_QUANTIZATION = flags.DEFINE_string("quantization", "qat", "qat (structure-preserving QAT) or "
                                    "ptq (the TFLite converter with calibration).")
_SCHEME = define("string", "scheme", "default_int8",
                 "QAT weight scheme: default_int8, pow2, asymmetric, log_companding, linear or lsq.")
_NUM_TRAIN_SAMPLES = define("integer", "num_train_samples", None,
                            "Train on at most this many samples (seeded draw).")
_NUM_CALIBRATION_SAMPLES = define(
    "integer", "num_calibration_samples", None,
    "Calibration samples drawn from --data with --seed (default: 500).")
_SEED = define("integer", "seed", 0, "Seed for sampling and initialization.")
_OUTPUT_LOSSES = define_output_losses()
_MAX_ACCURACY_DROP, _MIN_AGREEMENT = define_gates()
_OUTPUT_TASKS, _GATE = define_output_checks()


def output_folder() -> str:
    return _OUT.value or "tflq_compress"


def main(argv) -> int:
    """Runs the command under the exit-code contract (see :func:`pipelines.common.guard`)."""
    return guard(lambda: _compress(argv), output_folder())


def _compress(argv) -> int:
    check_no_arguments(argv)
    logging.set_verbosity(logging.WARNING)
    from tflq import report
    from tflq.jobs import compress as compress_job

    require(model=_MODEL.value, train_data=_TRAIN_DATA.value, eval_data=_EVAL_DATA.value)
    job = compress_job.CompressJob(
        model=_MODEL.value, train_data=_TRAIN_DATA.value, eval_data=_EVAL_DATA.value,
        out=output_folder(), verbose=keras_verbose(), sparsity=_SPARSITY.value,
        schedule=_SCHEDULE.value, structure=_STRUCTURE.value, clusters=_CLUSTERS.value,
        layers=_LAYERS.value, layer_types=tuple(_LAYER_TYPES.value),
        quantization=_QUANTIZATION.value, scheme=_SCHEME.value, epochs=_EPOCHS.value,
        qat_epochs=_QAT_EPOCHS.value,
        batch_size=_BATCH_SIZE.value or 64, learning_rate=_LEARNING_RATE.value,
        qat_learning_rate=_QAT_LEARNING_RATE.value, distill=_DISTILL.value,
        num_train_samples=_NUM_TRAIN_SAMPLES.value,
        num_calibration_samples=_NUM_CALIBRATION_SAMPLES.value or 500, seed=_SEED.value,
        output_losses=_OUTPUT_LOSSES.value or (),
        output_tasks=_OUTPUT_TASKS.value,
        gates=report.Gates(max_accuracy_drop=_MAX_ACCURACY_DROP.value,
                           min_agreement=_MIN_AGREEMENT.value, gate=tuple(_GATE.value or ())))
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
