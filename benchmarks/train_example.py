"""Trains the bundled example: a small CNN on the full Fashion-MNIST train set.

Writes ``fashion_mnist_cnn.keras`` (tf_keras, float32, < 1 MB) and two disjoint slices of
the real Fashion-MNIST *test* set as gzipped IDX files: images 0–499 for calibration and
500–1999 for evaluation. Reads the Debian package ``dataset-fashion-mnist``.

  python -m benchmarks.train_example [--epochs 10] [--out_dir pipelines/example]
"""

from __future__ import annotations

import os

from absl import app, flags

from pipelines.common import define

_DATA_DIR = define(
    "string", "data_dir", "/usr/share/datasets/fashion-mnist",
    "Folder with the Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist).")
_OUT_DIR = flags.DEFINE_string(
    "out_dir", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pipelines",
                            "example"), "Where to write.")
_EPOCHS = define("integer", "epochs", 10, "Training epochs.")
_SEED = define("integer", "seed", 0, "Random seed.")

CALIBRATION_SLICE = (0, 500)
EVALUATION_SLICE = (500, 2000)


def train(data_dir: str, out_dir: str, epochs: int, seed: int) -> dict:
    from benchmarks.fashion_mnist import train_cnn
    from tflq.data import write_idx

    model, test_accuracy, (x_test, y_test) = train_cnn(data_dir, epochs, seed)
    os.makedirs(out_dir, exist_ok=True)
    model.save(os.path.join(out_dir, "fashion_mnist_cnn.keras"))
    for name, (lo, hi) in (("calibration", CALIBRATION_SLICE), ("evaluation", EVALUATION_SLICE)):
        write_idx(os.path.join(out_dir, f"{name}-images-idx3-ubyte.gz"), x_test[lo:hi])
        write_idx(os.path.join(out_dir, f"{name}-labels-idx1-ubyte.gz"), y_test[lo:hi])
    return {"test_accuracy": test_accuracy, "params": int(model.count_params())}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    result = train(_DATA_DIR.value, _OUT_DIR.value, _EPOCHS.value, _SEED.value)
    print(f"test accuracy {result['test_accuracy']:.4f}, {result['params']} parameters, "
          f"written to {_OUT_DIR.value}")


if __name__ == "__main__":
    app.run(main)
