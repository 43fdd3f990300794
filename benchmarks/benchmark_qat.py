"""QAT benchmark on Fashion-MNIST (writes JSON; not a timed test).

Starting from the bundled CNN (trained on all 60,000 train images), evaluated on all
10,000 test images: float; PTQ int8 (the plain converter); QAT int8 (default_int8);
QAT 4-bit pow2 weights; 4-bit linear weights after training (QAT) and without training
(PTQ: statistics strategy, weights frozen); each QAT variant with and without
distillation from the float model. Accuracy of the deployed int8 .tflite (and of the Keras
QAT model) and size.

  python -m benchmarks.benchmark_qat --out bench_qat        # about 15 minutes on 2 cores

Targets (QAT issue): QAT int8 drop ≤ 0.1 pp; 4-bit pow2 drop ≤ 1.0 pp and better than
4-bit linear PTQ.
"""

from __future__ import annotations

import os
import sys

from absl import app, logging

from benchmarks.fashion_mnist import image_files
from pipelines.common import define

_OUT = define("string", "out", None, "Output folder (default: bench_qat).")
_DATA_DIR = define("string", "data_dir", "/usr/share/datasets/fashion-mnist",
                   "Fashion-MNIST IDX folder (apt-get install dataset-fashion-mnist).")
_QAT_EPOCHS = define("integer", "qat_epochs", None, "QAT epochs per variant (default: 2).")
_NUM_TRAIN_SAMPLES = define("integer", "num_train_samples", None,
                            "Train on at most this many samples (default: all 60,000).")

EXAMPLE_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pipelines")
MODEL = os.path.join(EXAMPLE_ROOT, "example", "fashion_mnist_cnn.keras")
TARGETS = {"qat_int8_drop_pp_max": 0.1, "pow2_4bit_drop_pp_max": 1.0}
VARIANTS = (  # name, scheme, strategy, overrides, learning rate
    ("qat_int8", "default_int8", "gradient", (), 1e-5),
    ("qat_int8_distill", "default_int8", "distill", (), 1e-5),
    ("qat_pow2_4bit", "pow2", "gradient", (), 1e-4),
    ("qat_pow2_4bit_distill", "pow2", "distill", (), 1e-4),
    ("qat_linear_4bit", "linear", "gradient", (), 1e-4),
    ("qat_linear_4bit_distill", "linear", "distill", (), 1e-4),
    ("ptq_linear_4bit", "linear", "statistics", (), 1e-4),
)


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}", exitcode=2)
    logging.set_verbosity(logging.WARNING)
    from tflq import ConvertJob, runtime
    from tflq.fileio import write_atomic
    from tflq.jobs import convert as convert_job
    from tflq.jobs import qat as qat_job
    from tflq.report import to_json

    out = _OUT.value or "bench_qat"
    try:
        train, test = image_files(_DATA_DIR.value)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ptq = convert_job.run_job(ConvertJob(model=MODEL, data=train, eval_data=test,
                                      out=os.path.join(out, "ptq"), modes=("float32", "int8"),
                                      num_calibration_samples=1000, latency_runs=20,
                                      batch_size=500, progress=False))
    modes = {m["mode"]: m for m in ptq.report["modes"]}
    float_accuracy = ptq.report["float"]["accuracy"]
    results = {"float": {"accuracy": float_accuracy, "size_bytes": modes["float32"]["size_bytes"]},
               "ptq_int8": {"accuracy": modes["int8"]["accuracy"],
                            "drop_pp": modes["int8"]["accuracy_drop_pp"],
                            "size_bytes": modes["int8"]["size_bytes"]}}
    print(f"float {float_accuracy:.4f}; ptq int8 {modes['int8']['accuracy']:.4f}", flush=True)
    for name, scheme, strategy, overrides, rate in VARIANTS:
        job = qat_job.QATJob(model=MODEL, train_data=train, eval_data=test,
                         out=os.path.join(out, name), scheme=scheme, strategy=strategy,
                         teacher=MODEL if strategy == "distill" else None,
                         epochs=1 if strategy == "statistics" else (_QAT_EPOCHS.value or 2),
                         batch_size=128, learning_rate=rate, overrides=overrides,
                         num_train_samples=_NUM_TRAIN_SAMPLES.value, latency_runs=20, verbose=2)
        report = qat_job.run_qat_job(job).report
        row = report["modes"][0]
        train_samples = report["data"]["calibration"]["num_samples"]  # QAT trains on these
        results[name] = {
            "scheme": scheme, "strategy": strategy, "accuracy": row["accuracy"],
            "drop_pp": row["accuracy_drop_pp"], "size_bytes": row["size_bytes"],
            "float_ops": len(row["float_ops"]),
            "keras_qat_accuracy": report["qat"]["keras_qat_accuracy"],
            "parity": report["qat"]["parity"],
            "weights_exact": all(w.get("exact") for w in report["qat"]["weights"]),
        }
        print(f"{name}: tflite {row['accuracy']:.4f} (drop {row['accuracy_drop_pp']:+.2f} pp), "
              f"keras {report['qat']['keras_qat_accuracy']:.4f}", flush=True)
    best_int8 = min(results["qat_int8"]["drop_pp"], results["qat_int8_distill"]["drop_pp"])
    best_pow2 = min(results["qat_pow2_4bit"]["drop_pp"], results["qat_pow2_4bit_distill"]["drop_pp"])
    checks = {
        "qat_int8_drop_pp": {"value": best_int8, "met": best_int8 <= TARGETS["qat_int8_drop_pp_max"]},
        "pow2_4bit_drop_pp": {"value": best_pow2,
                              "met": best_pow2 <= TARGETS["pow2_4bit_drop_pp_max"]},
        "pow2_4bit_beats_linear_4bit_ptq": {
            "value": results["ptq_linear_4bit"]["drop_pp"] - best_pow2,
            "met": best_pow2 < results["ptq_linear_4bit"]["drop_pp"]},
    }
    summary = {"benchmark": "qat", "machine": runtime.machine_description(),
               "versions": runtime.versions(), "model": MODEL,
               "evaluation_samples": ptq.report["data"]["evaluation"]["num_samples"],
               "train_samples": train_samples,
               "qat_epochs": (_QAT_EPOCHS.value or 2), "results": results, "targets": TARGETS,
               "checks": checks}
    path = os.path.join(out, "benchmark_qat.json")
    write_atomic(path, to_json(summary))
    for key, check in checks.items():
        print(f"{key}: {check['value']:.3f} -> {'met' if check['met'] else 'NOT MET'}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    app.run(main)
