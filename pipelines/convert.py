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
    BACKEND_HELP,
    check_no_arguments,
    define,
    define_gates,
    define_output_checks,
    guard,
    progress_setting,
    report_gates,
    run_main,
)

EXAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "example")
EXAMPLE_MODEL = os.path.join(EXAMPLE_DIR, "fashion_mnist_cnn.keras")
EXAMPLE_CALIBRATION = os.path.join(EXAMPLE_DIR, "calibration-images-idx3-ubyte.gz")
EXAMPLE_EVALUATION = os.path.join(EXAMPLE_DIR, "evaluation-images-idx3-ubyte.gz")
ALL_MODES = ("float32", "float16", "dynamic", "int8", "int16x8")

_MODEL = define(
    "string", "model", None, "Model: .keras (Keras 3 or tf_keras), .h5, SavedModel folder, or "
    "package.module:function. Default: the bundled Fashion-MNIST CNN.")
_DATA = define(
    "string", "data", None, "Calibration data: .npz/.npy, IDX images file, image folder, or "
    "package.module:function. Required with --model.")
_EVAL_DATA = define(
    "string", "eval_data", None, "Evaluation data (same kinds as --data). Default: the samples of "
    "--data not drawn for calibration (the bundled evaluation slice for the example).")
_MODES = flags.DEFINE_string("modes", ",".join(ALL_MODES), "Comma list of converter modes: "
                             + ", ".join(ALL_MODES) + ".")
_BACKEND = define("string", "backend", None, BACKEND_HELP)
BACKENDS = ("converter", "litert", "both")
_RECIPES = flags.DEFINE_string(
    "recipes", None, "Comma list of LiteRT Quantizer recipes for --backend litert/both "
    "(default: static_wi8_ai8,dynamic_wi8_afp32,weight_only_wi8_afp32; also static_wi8_ai16, "
    "dynamic_wi4_afp32, weight_only_wi4_afp32).")
DEFAULT_RECIPES = "static_wi8_ai8,dynamic_wi8_afp32,weight_only_wi8_afp32"
_OUT = define("string", "out", None, "Output folder for .tflite files and reports (default: tflq_out).")
_NUM_CALIBRATION_SAMPLES = define(
    "integer", "num_calibration_samples", None,
    "Calibration samples drawn from --data with --seed (default: 500).")
_NUM_EVAL_SAMPLES = flags.DEFINE_integer(
    "num_eval_samples", None, "Evaluate on at most this many samples (default: all).")
_SEED = define("integer", "seed", 0, "Seed for drawing calibration samples.")
_NUM_THREADS = flags.DEFINE_integer("num_threads", 1, "Interpreter threads.")
_BATCH_SIZE = define("integer", "batch_size", None, "Evaluation batch size (default: 256).")
_LATENCY_RUNS = define("integer", "latency_runs", None, "Timed batch-1 runs per mode (default: 50).")
_INTEGER_IO = flags.DEFINE_bool(
    "integer_io", False, "int8/int16x8 models take and return integers instead of float32.")
_PER_TENSOR = flags.DEFINE_bool(
    "per_tensor", False, "int8 weights per tensor instead of per channel.")
_ALLOW_FLOAT_OPS = flags.DEFINE_bool(
    "allow_float_ops", False, "Let int8/int16x8 keep ops without integer kernels in float.")
_RANGE_ESTIMATOR = flags.DEFINE_enum(
    "range_estimator", None, ["minmax", "percentile", "mse", "kl"],
    "int8 activation ranges from tflq's estimators instead of the converter's min/max "
    "(tf_keras models).")
_PERCENTILE = flags.DEFINE_float("percentile", 99.99, "Percentile for "
                                 "--range_estimator=percentile.")
_EQUALIZE = flags.DEFINE_bool("equalize", False, "int8 after cross-layer equalization and bias "
                              "correction (tf_keras models).")
_ADAROUND = flags.DEFINE_bool(
    "adaround", False, "int8 weights rounded by AdaRound (learned up/down rounding, layer by "
    "layer on the calibration data); the .tflite carries exactly the learned codes.")
_ADAROUND_BITS = flags.DEFINE_enum(
    "adaround_bits", "8", ["8", "4"], "AdaRound weight grid: 8 (int8) or 4 (15 int8 code levels "
    "per channel: 0, ±18, …, ±108, ±127).")
_ADAROUND_ITERATIONS = flags.DEFINE_integer(
    "adaround_iterations", 500, "AdaRound optimizer steps per layer.")
_ADAROUND_REG = flags.DEFINE_float(
    "adaround_reg", 0.01, "AdaRound rounding-regularizer weight λ.")
_AUTO = flags.DEFINE_bool(
    "auto", False, "int8 from the best of the plain converter, the range estimators and "
    "equalization, chosen on one calibration sample in five held apart (never on --eval_data); "
    "the report lists every candidate's score.")
_SELECTIVE = flags.DEFINE_bool(
    "selective", False, "int8 keeps the fewest most sensitive ops in float (TFLite's "
    "QuantizationDebugger RMSE/scale) that bring the accuracy drop within --max_accuracy_drop "
    "(labelled data) and/or the top-1 agreement above --min_agreement, chosen on one calibration "
    "sample in five held apart (never on --eval_data); if even all-float misses it, the best "
    "model is written and the gate exits 3.")
_NORMALIZE = flags.DEFINE_enum(
    "normalize", "0_1", ["0_1", "-1_1", "none"],
    "How IDX and image-folder pixels are scaled: x/255, x/127.5-1, or raw 0..255.")
_IMAGE_SIZE = flags.DEFINE_string(
    "image_size", None, "HxW to resize image-folder images to (default: the model's size).")
_MAX_ACCURACY_DROP, _MIN_AGREEMENT = define_gates()
_OUTPUT_TASKS, _GATE = define_output_checks()
_QUIET = define("bool", "quiet", False, "No progress bars.")
_LAYER_ERROR_SAMPLES = define(
    "integer", "layer_error_samples", None, "Calibration (QAT: training) samples for the per-layer "
    "error of every quantized mode (default: 16; 0 turns it off).")


def _default(value, fallback):
    return fallback if value is None else value


def parse_image_size(text: str | None):
    if not text:
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--image_size must look like 224x224. Received: {text!r}")
    return int(parts[0]), int(parts[1])


def build_job():
    """Turns the flags into a tflq.ConvertJob (ValueError on bad combinations)."""
    import tflq

    model, data, eval_data = _MODEL.value, _DATA.value, _EVAL_DATA.value
    if model is None:
        model = EXAMPLE_MODEL
        if data is None:
            data = EXAMPLE_CALIBRATION
            eval_data = eval_data or EXAMPLE_EVALUATION
    elif data is None:
        raise ValueError("--data is required when --model is given (calibration data).")
    backend = _BACKEND.value or "converter"
    if backend not in BACKENDS:
        raise ValueError(f"Unknown --backend {backend!r} for pipelines.convert. "
                         f"Available: {list(BACKENDS)}")
    if backend == "converter" and _RECIPES.value:
        raise ValueError("--recipes needs --backend litert or --backend both.")
    if backend == "litert" and not flags.FLAGS["modes"].using_default_value:
        raise ValueError("--modes picks converter modes; with --backend litert use --recipes "
                         "(or --backend both for converter and LiteRT side by side).")
    modes = ("float32",) if backend == "litert" else tuple(
        m.value for m in tflq.parse_modes(_MODES.value))
    recipes = () if backend == "converter" else tuple(
        r.strip() for r in (_RECIPES.value or DEFAULT_RECIPES).split(",") if r.strip())
    return tflq.ConvertJob(
        model=model, data=data, eval_data=eval_data, out=_OUT.value or "tflq_out",
        modes=modes, recipes=recipes,
        num_calibration_samples=_default(_NUM_CALIBRATION_SAMPLES.value, 500),
        num_eval_samples=_NUM_EVAL_SAMPLES.value, seed=_SEED.value,
        num_threads=_NUM_THREADS.value, batch_size=_default(_BATCH_SIZE.value, 256),
        latency_runs=_default(_LATENCY_RUNS.value, 50),
        convert_options=tflq.ConvertOptions(
            integer_io=_INTEGER_IO.value, per_channel=not _PER_TENSOR.value,
            allow_float_ops=_ALLOW_FLOAT_OPS.value, range_estimator=_RANGE_ESTIMATOR.value,
            percentile=_PERCENTILE.value, equalize=_EQUALIZE.value,
            selective=_SELECTIVE.value, auto=_AUTO.value, adaround=_ADAROUND.value,
            adaround_bits=int(_ADAROUND_BITS.value),
            adaround_iterations=_ADAROUND_ITERATIONS.value, adaround_reg=_ADAROUND_REG.value),
        data_options=tflq.DataOptions(normalize=_NORMALIZE.value,
                                      image_size=parse_image_size(_IMAGE_SIZE.value)),
        gates=tflq.Gates(max_accuracy_drop=_MAX_ACCURACY_DROP.value,
                         min_agreement=_MIN_AGREEMENT.value, gate=tuple(_GATE.value or ())),
        output_tasks=_OUTPUT_TASKS.value,
        progress=progress_setting(_QUIET.value),
        layer_error_samples=_default(_LAYER_ERROR_SAMPLES.value, 16),
    )


def output_folder() -> str:
    return _OUT.value or "tflq_out"


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
