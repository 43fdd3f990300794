"""Post-training calibration benchmark (writes JSON; not a timed test).

A MobileNetV2 (alpha 0.35, ReLU instead of ReLU6 so equalization keeps its function,
BatchNorm momentum 0.99) is
trained on all 60,000 Fashion-MNIST train images, padded to 32x32; then, side by side in
one run, int8 models are calibrated on 500 train images and evaluated on all 10,000 test
images: the plain converter (per-channel and per-tensor), each tflq range estimator,
cross-layer equalization + bias correction (per-channel and per-tensor), and selective
quantization with a 0.1 pp budget.

  python -m benchmarks.benchmark_calibration --out bench_calibration    # about 20 minutes

Targets (calibration issue): per-tensor int8 with CLE + bias correction within 1 pp of
float; the best tflq result at least as accurate as the plain converter in every
configuration (per-channel, per-tensor).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from benchmarks.fashion_mnist import image_files
from pipelines.common import define

_OUT = define("string", "out", None, "Output folder (default: bench_calibration).")
_DATA_DIR = define("string", "data_dir", "/usr/share/datasets/fashion-mnist",
                   "Fashion-MNIST IDX folder (apt-get install dataset-fashion-mnist).")
_TRAIN_EPOCHS = flags.DEFINE_integer("train_epochs", 6, "Epochs to train the MobileNetV2.")
_RETRAIN = define("bool", "retrain", False, "Retrain even if a cached model exists.")

CONFIGS = (  # name, ConvertOptions settings
    ("converter_per_channel", {}),
    ("converter_per_tensor", {"per_channel": False}),
    ("tflq_minmax", {"range_estimator": "minmax"}),
    ("tflq_percentile", {"range_estimator": "percentile"}),
    ("tflq_mse", {"range_estimator": "mse"}),
    ("tflq_kl", {"range_estimator": "kl"}),
    ("tflq_cle_bc_per_channel", {"equalize": True}),
    ("tflq_cle_bc_per_tensor", {"equalize": True, "per_channel": False}),
    ("tflq_selective_0.1pp", {"selective": True}),
)
SELECTIVE_BUDGET_PP = 0.1


def build_model(tf_keras):
    inp = tf_keras.Input((28, 28, 1), name="image")
    padded = tf_keras.layers.ZeroPadding2D(2)(inp)
    net = tf_keras.applications.MobileNetV2(
        input_tensor=padded, alpha=0.35, weights=None, classes=10,
        classifier_activation=None)
    model = tf_keras.Model(inp, net.output, name="mobilenetv2_fashion")

    def clone(layer):
        config = layer.get_config()
        if type(layer).__name__ == "ReLU" and config.get("max_value") == 6:
            config["max_value"] = None  # ReLU: equalization keeps the function
        if type(layer).__name__ == "BatchNormalization":
            config["momentum"] = 0.99  # keras' 0.999 leaves stale statistics after 6 epochs
        return layer.__class__.from_config(config)

    return tf_keras.models.clone_model(model, clone_function=clone)


def train(out: str, data_dir: str, epochs: int):
    from benchmarks.fashion_mnist import fashion_mnist
    from tflq.models import tf_keras

    tf_keras.utils.set_random_seed(0)
    x, y = fashion_mnist(data_dir, "train")
    xt, yt = fashion_mnist(data_dir, "t10k")
    x = (x.astype("float32") / 255.0)[..., None]
    xt = (xt.astype("float32") / 255.0)[..., None]
    model = build_model(tf_keras)
    steps = epochs * -(-len(x) // 128)
    model.compile(optimizer=tf_keras.optimizers.Adam(
        tf_keras.optimizers.schedules.CosineDecay(3e-3, steps)),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    model.fit(x, y, batch_size=128, epochs=epochs, validation_data=(xt, yt), verbose=2)
    clean = tf_keras.models.clone_model(model)
    clean.set_weights(model.get_weights())
    path = os.path.join(out, "mobilenetv2_fashion.keras")
    clean.save(path)
    return path


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}", exitcode=2)
    logging.set_verbosity(logging.WARNING)
    from tflq import ConvertJob, options, runtime
    from tflq import report as report_module
    from tflq.fileio import write_atomic
    from tflq.jobs import convert as convert_job
    from tflq.report import to_json

    out = _OUT.value or "bench_calibration"
    try:
        train_images, test_images = image_files(_DATA_DIR.value)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(out, exist_ok=True)
    model_path = os.path.join(out, "mobilenetv2_fashion.keras")
    if _RETRAIN.value or not os.path.exists(model_path):
        model_path = train(out, _DATA_DIR.value, _TRAIN_EPOCHS.value)
    results, float_accuracy, samples = {}, None, {}
    for name, settings in CONFIGS:
        job = ConvertJob(model=model_path, data=train_images, eval_data=test_images,
                         out=os.path.join(out, name), modes=("int8",),
                         num_calibration_samples=500, latency_runs=20, progress=False,
                         convert_options=options.ConvertOptions(**settings),
                         gates=report_module.Gates(
                             max_accuracy_drop=SELECTIVE_BUDGET_PP if settings.get("selective")
                             else None))
        report = convert_job.run_job(job).report
        row = report["modes"][0]
        float_accuracy = report["float"]["accuracy"]
        samples = {"calibration_samples": report["data"]["calibration"]["num_samples"],
                   "evaluation_samples": report["data"]["evaluation"]["num_samples"]}
        results[name] = {**settings, "accuracy": row["accuracy"],
                         "drop_pp": row["accuracy_drop_pp"], "sqnr_db": row["sqnr_db"],
                         "top1_agreement": row["top1_agreement"], "size_bytes": row["size_bytes"],
                         "latency_ms": row["latency_ms"]["median"],
                         "float_ops": len(row["float_ops"])}
        if "selective" in report:
            results[name]["kept_float"] = report["selective"]["kept_float"]
            results[name]["budget_met"] = report["selective"]["met"]
        print(f"{name}: {row['accuracy']:.4f} (drop {row['accuracy_drop_pp']:+.2f} pp), "
              f"SQNR {row['sqnr_db']:.1f} dB", flush=True)
    per_channel_tflq = max(v["accuracy"] for k, v in results.items()
                           if k.startswith("tflq") and v.get("per_channel", True))
    per_tensor_tflq = results["tflq_cle_bc_per_tensor"]["accuracy"]
    checks = {
        "per_tensor_cle_bc_drop_pp": {
            "value": results["tflq_cle_bc_per_tensor"]["drop_pp"],
            "met": results["tflq_cle_bc_per_tensor"]["drop_pp"] <= 1.0},
        "best_tflq_vs_converter_per_channel_pp": {
            "value": 100 * (per_channel_tflq - results["converter_per_channel"]["accuracy"]),
            "met": per_channel_tflq >= results["converter_per_channel"]["accuracy"]},
        "best_tflq_vs_converter_per_tensor_pp": {
            "value": 100 * (per_tensor_tflq - results["converter_per_tensor"]["accuracy"]),
            "met": per_tensor_tflq >= results["converter_per_tensor"]["accuracy"]},
    }
    summary = {"benchmark": "calibration", "machine": runtime.machine_description(),
               "versions": runtime.versions(), "model": "MobileNetV2 alpha 0.35, ReLU, 32x32",
               "train_epochs": _TRAIN_EPOCHS.value, "float_accuracy": float_accuracy,
               **samples,
               "selective_budget_pp": SELECTIVE_BUDGET_PP,
               "results": results, "checks": checks}
    path = os.path.join(out, "benchmark_calibration.json")
    write_atomic(path, to_json(summary))
    for key, check in checks.items():
        print(f"{key}: {check['value']:.3f} -> {'met' if check['met'] else 'NOT MET'}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    app.run(main)
