"""Fashion-MNIST helpers shared by the example trainer and the benchmarks (no flags here)."""

from __future__ import annotations

import os


def _missing(path: str) -> ValueError:
    return ValueError(f"Fashion-MNIST file not found: {path!r}. "
                      "Install it with: apt-get install -y dataset-fashion-mnist")


def image_files(data_dir: str) -> tuple[str, str]:
    """(train, test) images IDX paths of the Fashion-MNIST folder; raises ValueError (with
    the install command) when either is missing. Labels are their sibling files."""
    paths = tuple(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz")
                  for split in ("train", "t10k"))
    for path in paths:
        if not os.path.exists(path):
            raise _missing(path)
    return paths


def fashion_mnist(data_dir: str, split: str):
    """Returns (images uint8 (N, 28, 28), labels uint8 (N,)) for ``train`` or ``t10k``."""
    from tflq.data import read_idx

    images = os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz")
    labels = os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz")
    for path in (images, labels):
        if not os.path.exists(path):
            raise _missing(path)
    return read_idx(images), read_idx(labels)


def build_cnn(tf_keras, widths=(32, 64, 64), dense=128, name="fashion_mnist_cnn"):
    """Three conv blocks (conv-BN-ReLU-pool) and a small dense head.

    The default (~131k parameters) is the bundled example; the PTQ benchmark uses a wider one.
    """
    layers = tf_keras.layers
    blocks = [tf_keras.Input((28, 28, 1), name="image")]
    for width in widths:
        blocks += [layers.Conv2D(width, 3, padding="same", use_bias=False),
                   layers.BatchNormalization(), layers.ReLU(), layers.MaxPooling2D()]
    blocks += [layers.Flatten(), layers.Dense(dense, activation="relu"), layers.Dropout(0.3),
               layers.Dense(10, name="logits")]
    return tf_keras.Sequential(blocks, name=name)


def train_cnn(data_dir: str, epochs: int, seed: int, widths=(32, 64, 64), dense=128,
              name="fashion_mnist_cnn"):
    """Trains a CNN on the full train set; returns (uncompiled model, test accuracy, test data)."""
    from tflq.models import tf_keras

    tf_keras.utils.set_random_seed(seed)
    x_train, y_train = fashion_mnist(data_dir, "train")
    x_test, y_test = fashion_mnist(data_dir, "t10k")
    model = build_cnn(tf_keras, widths, dense, name)
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
    stripped = tf_keras.models.clone_model(model)  # uncompiled: no optimizer state saved
    stripped.set_weights(model.get_weights())
    return stripped, float(test_accuracy), (x_test, y_test)
