"""Range estimators against numpy on raw samples, and the chosen ranges read back from the
.tflite through the interpreter."""

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from tflq.models import tf_keras
from tflq.ptq import convert, ranges

L = tf_keras.layers


def fake_quant(x, lo, hi, levels=256):
    """Independent numpy reference: asymmetric quantize-dequantize with clipping."""
    scale = (hi - lo) / (levels - 1)
    return np.clip(np.round((x - lo) / scale), 0, levels - 1) * scale + lo


def heavy_tailed(n=50_000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.laplace(0.0, 1.0, n)
    x[:5] = [40.0, -35.0, 30.0, 50.0, -45.0]  # a few outliers
    return x


def test_histogram_minmax_and_percentile_against_numpy():
    x = heavy_tailed()
    hist = ranges.Histogram.of(x)
    width = (hist.hi - hist.lo) / hist.counts.size
    lo, hi = ranges.estimate(hist, "minmax")
    assert lo == pytest.approx(x.min(), abs=width) and hi == pytest.approx(x.max(), abs=width)
    lo, hi = ranges.estimate(hist, "percentile", percentile=99.9)
    assert lo == pytest.approx(np.percentile(x, 0.1), abs=2 * width)
    assert hi == pytest.approx(np.percentile(x, 99.9), abs=2 * width)


def test_mse_range_is_the_best_range_on_the_raw_samples():
    x = np.random.default_rng(4).laplace(0.0, 1.0, 50_000)  # long tails, no huge outliers
    hist = ranges.Histogram.of(x)
    lo, hi = ranges.estimate(hist, "mse")
    mse = np.mean((x - fake_quant(x, lo, hi)) ** 2)
    minmax = np.mean((x - fake_quant(x, x.min(), x.max())) ** 2)
    assert mse < minmax and lo > x.min() and hi < x.max()
    # brute force over clipping ranges, directly on the raw samples
    best = min(np.mean((x - fake_quant(x, a, b)) ** 2)
               for a in np.linspace(x.min(), -1, 40) for b in np.linspace(1, x.max(), 40))
    assert mse <= 1.05 * best


def test_kl_clips_outliers_but_keeps_a_uniform_range():
    hist = ranges.Histogram.of(heavy_tailed())
    lo, hi = ranges.estimate(hist, "kl")
    assert 3.0 < hi < 30.0 and -30.0 < lo < -3.0
    uniform = np.random.default_rng(1).uniform(0, 6, 50_000)
    lo, hi = ranges.estimate(ranges.Histogram.of(uniform), "kl")
    assert lo == 0.0 and hi == pytest.approx(6.0, rel=0.05)


@pytest.mark.parametrize("estimator", ranges.ESTIMATORS)
def test_every_range_contains_zero(estimator):
    positive = np.random.default_rng(2).uniform(1.0, 3.0, 10_000)
    lo, hi = ranges.estimate(ranges.Histogram.of(positive), estimator)
    assert lo == 0.0 and hi > 1.0
    negative = -positive
    lo, hi = ranges.estimate(ranges.Histogram.of(negative), estimator)
    assert hi == 0.0 and lo < -1.0


def test_quantization_mse_matches_numpy_on_bin_centres():
    hist = ranges.Histogram.of(np.random.default_rng(3).normal(size=5000), bins=64)
    c = hist.centers
    expected = np.sum(hist.counts * (c - fake_quant(c, -1.5, 2.0)) ** 2) / hist.counts.sum()
    assert ranges.quantization_mse(hist, -1.5, 2.0) == pytest.approx(expected)


def test_histogram_add_accumulates():
    x = np.linspace(-1, 1, 1000)
    hist = ranges.Histogram.of(x, bins=10)
    hist.add(x)
    assert hist.counts.sum() == 2000


def test_bad_estimator_arguments():
    hist = ranges.Histogram.of(np.arange(10.0))
    with pytest.raises(ValueError, match="Unknown range estimator 'entropy'"):
        ranges.estimate(hist, "entropy")
    with pytest.raises(ValueError, match=r"percentile must be in \(50, 100\]"):
        ranges.estimate(hist, "percentile", percentile=20)


def _model():
    tf_keras.utils.set_random_seed(0)
    inp = L.Input((8, 8, 3), name="img")
    x = L.Conv2D(4, 3, activation="relu", name="c1")(inp)
    x = L.BatchNormalization()(L.Conv2D(4, 3, name="c2")(x))
    return tf_keras.Model(inp, L.Dense(3, name="d")(L.Flatten()(x)))


@pytest.mark.parametrize("estimator", ["percentile", "kl"])
def test_estimated_ranges_are_the_scales_in_the_tflite(estimator, tmp_path):
    model = _model()
    data = np.random.default_rng(0).normal(0, 1, (64, 8, 8, 3)).astype(np.float32)

    def batches():
        return (data[i:i + 16] for i in range(0, 64, 16))

    q, chosen = ranges.calibrated_model(model, batches, estimator)
    assert set(chosen) == {"input:img", "c1", "c2", "d"}
    # the float tensors the ranges were estimated on, computed independently with Keras
    c1 = tf_keras.Model(model.inputs, model.get_layer("c1").output).predict(data, verbose=0)
    hist = ranges.Histogram.of(c1)
    assert chosen["c1"] == pytest.approx(ranges.estimate(hist, estimator), rel=1e-3, abs=1e-3)
    interp = Interpreter(model_content=convert.convert_qat(q, str(tmp_path)))
    scales = {t["name"]: t["quantization_parameters"]["scales"]
              for t in interp.get_tensor_details() if t["dtype"] == np.int8}
    for layer, marker in (("c1", "quant_c1/Relu"), ("c2", "quant_c2/MovingAvgQuantize")):
        lo, hi = chosen[layer]
        found = [s[0] for n, s in scales.items() if marker in n and len(s) == 1]
        assert found, (layer, list(scales))
        assert found[0] == pytest.approx((hi - lo) / 255, rel=1e-5)


def test_calibrated_model_refuses_an_unknown_estimator():
    with pytest.raises(ValueError, match="Unknown range estimator 'max'"):
        ranges.calibrated_model(_model(), lambda: iter([]), "max")
