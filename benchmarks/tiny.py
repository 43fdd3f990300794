"""The tiny synthetic task shared by the test suite and the distributed benchmark: 8×8
images whose class (of 3) is the brightest third, and the small CNN that learns it."""

from __future__ import annotations

import numpy as np

__all__ = ["tiny_data", "tiny_cnn"]


def tiny_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(``n`` images in [0, 1] of shape 8×8×1, int64 labels): the class is the brightest third."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=n)
    for i, label in enumerate(y):
        x[i, :, label * 2:label * 2 + 3, 0] += 0.5
    return np.clip(x, 0, 1), y.astype(np.int64)


def tiny_cnn(seed: int = 0):
    """The untrained, uncompiled 8×8×1 → 3-logit CNN (Conv2D 4 + ReLU, Dense), seeded."""
    from tflq.models import tf_keras

    tf_keras.utils.set_random_seed(seed)
    return tf_keras.Sequential([
        tf_keras.Input((8, 8, 1), name="img"),
        tf_keras.layers.Conv2D(4, 3, activation="relu"),
        tf_keras.layers.Flatten(),
        tf_keras.layers.Dense(3, name="logits"),
    ])
