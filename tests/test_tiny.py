"""The shared tiny task (benchmarks/tiny.py) is what the fixtures and the distributed
benchmark say it is."""

import numpy as np

from benchmarks.tiny import tiny_cnn, tiny_data


def test_tiny_data_class_is_the_brightest_third():
    x, y = tiny_data(200, seed=5)
    assert x.shape == (200, 8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and set(np.unique(y)) == {0, 1, 2}
    thirds = np.stack([x[:, :, 2 * k:2 * k + 3, 0].mean(axis=(1, 2)) for k in range(3)], axis=1)
    assert np.mean(np.argmax(thirds, axis=1) == y) > 0.95
    again = tiny_data(200, seed=5)
    assert np.array_equal(again[0], x) and np.array_equal(again[1], y)


def test_tiny_cnn_is_seeded_and_maps_images_to_three_logits():
    a, b = tiny_cnn(seed=1), tiny_cnn(seed=1)
    x, _ = tiny_data(4)
    assert a.predict(x, verbose=0).shape == (4, 3)
    assert all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights(), strict=True))
    assert a.layers[-1].name == "logits" and a.input_names == ["img"]
