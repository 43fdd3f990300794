"""Trains the bundled example: a small CNN on the full Fashion-MNIST train set.

Writes ``fashion_mnist_cnn.keras`` (tf_keras, float32, < 1 MB) and two disjoint slices of
the real Fashion-MNIST *test* set as gzipped IDX files: images 0–499 for calibration and
500–1999 for evaluation. Reads the Debian package ``dataset-fashion-mnist``.

  python -m pipelines.train_example [--epochs 10] [--out_dir pipelines/example]
"""

from __future__ import annotations

import os

from absl import app, flags

_DATA_DIR = flags.DEFINE_string(
    "data_dir", "/usr/share/datasets/fashion-mnist",
    "Folder with the Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist).")
_OUT_DIR = flags.DEFINE_string(
    "out_dir", os.path.join(os.path.dirname(__file__), "example"), "Where to write.")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Training epochs.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")

CALIBRATION_SLICE = (0, 500)
EVALUATION_SLICE = (500, 2000)


def fashion_mnist(data_dir: str, split: str):
    """Returns (images uint8 (N, 28, 28), labels uint8 (N,)) for ``train`` or ``t10k``."""
    from tflq.calibration import read_idx

    images = os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz")
    labels = os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz")
    for path in (images, labels):
        if not os.path.exists(path):
            raise ValueError(
                f"Fashion-MNIST file not found: {path!r}. "
                "Install it with: apt-get install -y dataset-fashion-mnist"
            )
    return read_idx(images), read_idx(labels)


def build_cnn(tf_keras):
    """The example architecture: three conv blocks and a small dense head (~131k params)."""
    layers = tf_keras.layers
    return tf_keras.Sequential([
        tf_keras.Input((28, 28, 1), name="image"),
        layers.Conv2D(32, 3, padding="same", use_bias=False),
        layers.BatchNormalization(),
        layers.ReLU(),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", use_bias=False),
        layers.BatchNormalization(),
        layers.ReLU(),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", use_bias=False),
        layers.BatchNormalization(),
        layers.ReLU(),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.3),
        layers.Dense(10, name="logits"),
    ], name="fashion_mnist_cnn")


def train(data_dir: str, out_dir: str, epochs: int, seed: int) -> dict:
    from tflq.calibration import write_idx
    from tflq.keras_compat import tf_keras

    tf_keras.utils.set_random_seed(seed)
    x_train, y_train = fashion_mnist(data_dir, "train")
    x_test, y_test = fashion_mnist(data_dir, "t10k")
    model = build_cnn(tf_keras)
    steps = epochs * -(-len(x_train) // 128)
    schedule = tf_keras.optimizers.schedules.CosineDecay(2e-3, decay_steps=steps)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(schedule),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    x = (x_train.astype("float32") / 255.0)[..., None]
    xt = (x_test.astype("float32") / 255.0)[..., None]
    model.fit(x, y_train, batch_size=128, epochs=epochs, validation_data=(xt, y_test), verbose=2)
    _, test_accuracy = model.evaluate(xt, y_test, verbose=0)
    os.makedirs(out_dir, exist_ok=True)
    stripped = tf_keras.models.clone_model(model)  # uncompiled: no optimizer state saved
    stripped.set_weights(model.get_weights())
    stripped.save(os.path.join(out_dir, "fashion_mnist_cnn.keras"))
    for name, (lo, hi) in (("calibration", CALIBRATION_SLICE), ("evaluation", EVALUATION_SLICE)):
        write_idx(os.path.join(out_dir, f"{name}-images-idx3-ubyte.gz"), x_test[lo:hi])
        write_idx(os.path.join(out_dir, f"{name}-labels-idx1-ubyte.gz"), y_test[lo:hi])
    return {"test_accuracy": float(test_accuracy), "params": int(model.count_params())}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    result = train(_DATA_DIR.value, _OUT_DIR.value, _EPOCHS.value, _SEED.value)
    print(f"test accuracy {result['test_accuracy']:.4f}, {result['params']} parameters, "
          f"written to {_OUT_DIR.value}")


if __name__ == "__main__":
    app.run(main)
