"""Pruning/clustering + quantization benchmark on Fashion-MNIST (writes JSON; not a timed test).

Starting from the bundled CNN, trained on all 60,000 train images and evaluated on all
10,000 test images, side by side in one run: dense int8 (PTQ); 50% and 80% sparse int8,
each by PTQ of the pruned model and by sparsity-preserving QAT (PQAT); clustered int8
(16 clusters per layer) by PTQ and by cluster-preserving QAT (CQAT). Accuracy of the
deployed .tflite, raw and gzip size, weight sparsity read from the .tflite.

Pruning and clustering fine-tune ``--stage_epochs`` epochs (Adam, 1e-3 cosine-decayed to
0); PQAT/CQAT then train ``--qat_epochs`` more (Adam, 1e-4 cosine-decayed) than their
PTQ counterparts (the same recipe as tfmot's collaborative-optimization figures).

  python -m benchmarks.benchmark_compress --out bench_compress     # about 25 minutes

Targets (pruning issue): 80%-sparse PQAT int8 at least 2.5x smaller gzipped than dense
int8 with at most 1 pp accuracy loss; PQAT and CQAT beat their PTQ counterparts.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from benchmarks.fashion_mnist import image_files
from pipelines.common import define

_OUT = define("string", "out", None, "Output folder (default: bench_compress).")
_DATA_DIR = define("string", "data_dir", "/usr/share/datasets/fashion-mnist",
                   "Fashion-MNIST IDX folder (apt-get install dataset-fashion-mnist).")
_STAGE_EPOCHS = flags.DEFINE_integer("stage_epochs", 4, "Epochs of the prune and cluster "
                                     "stages (learning rate 1e-3).")
_QAT_EPOCHS = define("integer", "qat_epochs", None, "Epochs of the PQAT/CQAT stage "
                     "(default: 2, learning rate 1e-4).")
_NUM_TRAIN_SAMPLES = define("integer", "num_train_samples", None,
                            "Train on at most this many samples (default: all 60,000).")

EXAMPLE_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pipelines")
MODEL = os.path.join(EXAMPLE_ROOT, "example", "fashion_mnist_cnn.keras")
TARGETS = {"pqat80_gzip_ratio_min": 2.5, "pqat80_drop_pp_max": 1.0}
LEARNING_RATES = {"prune_cluster": 1e-3, "qat": 1e-4}
# The first conv (288 of 131k weights; 9 per filter on a grey image) is not pruned: 80% of
# a 3x3x1 kernel leaves two weights per filter, for no size gain.
PRUNED = "^(?!conv2d$)"
VARIANTS = {  # name: CompressJob settings
    "dense_ptq": {"quantization": "ptq"},
    "sparse50_ptq": {"sparsity": 0.5, "layers": PRUNED, "quantization": "ptq"},
    "sparse50_pqat": {"sparsity": 0.5, "layers": PRUNED, "quantization": "qat"},
    "sparse80_ptq": {"sparsity": 0.8, "schedule": "polynomial", "layers": PRUNED,
                     "quantization": "ptq"},
    "sparse80_pqat": {"sparsity": 0.8, "schedule": "polynomial", "layers": PRUNED,
                      "quantization": "qat"},
    "clustered16_ptq": {"clusters": 16, "quantization": "ptq"},
    "clustered16_cqat": {"clusters": 16, "quantization": "qat"},
}


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}", exitcode=2)
    logging.set_verbosity(logging.WARNING)
    from tflq import runtime
    from tflq.fileio import write_atomic
    from tflq.jobs import compress as compress_job
    from tflq.report import to_json

    out = _OUT.value or "bench_compress"
    try:
        train, test = image_files(_DATA_DIR.value)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = {}
    for name, settings in VARIANTS.items():
        job = compress_job.CompressJob(
            model=MODEL, train_data=train, eval_data=test, out=os.path.join(out, name),
            epochs=_STAGE_EPOCHS.value, qat_epochs=_QAT_EPOCHS.value or 2, batch_size=128,
            learning_rate=LEARNING_RATES["prune_cluster"], qat_learning_rate=LEARNING_RATES["qat"],
            num_train_samples=_NUM_TRAIN_SAMPLES.value,
            num_calibration_samples=1000, latency_runs=20, **settings)
        report = compress_job.run_compress_job(job).report
        row, c = report["modes"][0], report["compression"]
        results[name] = {
            **settings, "accuracy": row["accuracy"], "drop_pp": row["accuracy_drop_pp"],
            "size_bytes": c["size_bytes"], "gzip_bytes": c["gzip_bytes"],
            "weight_sparsity": c["weight_sparsity"],
            "max_unique_per_channel": max(w["max_unique_per_channel"] for w in c["weights"]),
            "sparse_encoding": c["sparse_encoding"], "float_ops": len(row["float_ops"]),
            "stages": c["stages"],
        }
        print(f"{name}: accuracy {row['accuracy']:.4f} (drop {row['accuracy_drop_pp']:+.2f} pp), "
              f"{c['size_bytes']:,} B, gzip {c['gzip_bytes']:,} B, sparsity "
              f"{100 * c['weight_sparsity']:.1f}%", flush=True)
        float_accuracy = report["float"]["accuracy"]
        samples = {"evaluation_samples": report["data"]["evaluation"]["num_samples"],
                   "train_samples": report["data"]["calibration"]["num_samples"]}  # trained on
    dense_gzip = results["dense_ptq"]["gzip_bytes"]
    pqat80 = results["sparse80_pqat"]
    checks = {
        "pqat80_gzip_ratio": {"value": dense_gzip / pqat80["gzip_bytes"],
                              "met": dense_gzip / pqat80["gzip_bytes"]
                              >= TARGETS["pqat80_gzip_ratio_min"]},
        "pqat80_drop_pp": {"value": pqat80["drop_pp"],
                           "met": pqat80["drop_pp"] <= TARGETS["pqat80_drop_pp_max"]},
    }
    for qat_name, ptq_name in (("sparse50_pqat", "sparse50_ptq"), ("sparse80_pqat", "sparse80_ptq"),
                               ("clustered16_cqat", "clustered16_ptq")):
        gain = 100 * (results[qat_name]["accuracy"] - results[ptq_name]["accuracy"])
        checks[f"{qat_name}_beats_{ptq_name}_pp"] = {"value": gain, "met": gain > 0}
    summary = {"benchmark": "compress", "machine": runtime.machine_description(),
               "versions": runtime.versions(), "model": MODEL, **samples,
               "float_accuracy": float_accuracy, "stage_epochs": _STAGE_EPOCHS.value,
               "qat_epochs": _QAT_EPOCHS.value or 2,
               "learning_rates": LEARNING_RATES,
               "results": results, "targets": TARGETS, "checks": checks}
    path = os.path.join(out, "benchmark_compress.json")
    write_atomic(path, to_json(summary))
    for key, check in checks.items():
        print(f"{key}: {check['value']:.3f} -> {'met' if check['met'] else 'NOT MET'}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    app.run(main)
