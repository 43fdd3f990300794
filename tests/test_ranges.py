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


@pytest.mark.parametrize("estimator", ["percentile", "minmax"])
def test_calibrated_model_records_what_it_set_and_what_it_kept(estimator):
    model = _model()
    data = np.random.default_rng(1).normal(0, 1, (64, 8, 8, 3)).astype(np.float32)

    def batches():
        return (data[i:i + 16] for i in range(0, 64, 16))

    record = {}
    _, chosen = ranges.calibrated_model(model, batches, estimator, percentile=90.0, record=record)
    assert sorted(record["kept_minmax"]) == ["d", "input:img"]
    assert record["kept_minmax"]["input:img"].startswith("model input")
    assert record["kept_minmax"]["d"].startswith("model output")
    assert record["estimated"] == 2  # c1 and c2
    assert record["quantizers"] >= 4
    # the kept ranges are the observed min/max (with 0), computed here with Keras and numpy
    out = model.predict(data, verbose=0)
    assert chosen["d"] == pytest.approx((min(out.min(), 0.0), max(out.max(), 0.0)), rel=1e-5)
    assert chosen["input:img"] == pytest.approx((data.min(), data.max()), rel=1e-5)
    # the 90th percentile narrows both hidden ranges; minmax changes none
    c1 = tf_keras.Model(model.inputs, model.get_layer("c1").output).predict(data, verbose=0)
    assert (chosen["c1"][1] < 0.99 * c1.max()) == (estimator == "percentile")
    assert record["narrowed"] == (2 if estimator == "percentile" else 0)
    assert any("BatchNorm folding" in line for line in record["prepare"])


def test_calibrated_model_refuses_an_unknown_estimator():
    with pytest.raises(ValueError, match="Unknown range estimator 'max'"):
        ranges.calibrated_model(_model(), lambda: iter([]), "max")


def _mobilenet_blocks(seed=0):
    """Two MobileNetV2 inverted-residual blocks (expand 1x1 + ReLU6, depthwise 3x3 + BN +
    ReLU6, linear 1x1 project, residual Add), with depthwise channels spanning three
    orders of magnitude as in pretrained MobileNets: per-tensor depthwise weights
    round most channels to zero."""
    rng = np.random.default_rng(seed)
    tf_keras.utils.set_random_seed(seed)
    inp = L.Input((12, 12, 8))
    x = inp
    for b in range(2):
        skip = x
        y = L.ReLU(6.0)(L.Conv2D(24, 1, name=f"expand{b}")(x))
        y = L.DepthwiseConv2D(3, padding="same", name=f"depthwise{b}")(y)
        y = L.ReLU(6.0)(L.BatchNormalization(name=f"bn{b}")(y))
        x = L.Add()([skip, L.Conv2D(8, 1, name=f"project{b}")(y)])
    model = tf_keras.Model(inp, L.Dense(5)(L.GlobalAveragePooling2D()(x)))
    for b in range(2):
        layer = model.get_layer(f"depthwise{b}")
        kernel, bias = layer.get_weights()
        spread = np.logspace(-2.5, 0.5, kernel.shape[2]).reshape(1, 1, -1, 1)
        layer.set_weights([kernel * rng.permutation(spread, axis=2), bias])
    return model


def _depthwise_scales(content: bytes) -> list[np.ndarray]:
    from tflq.tflite_inspect import ops_details

    interp = Interpreter(model_content=content)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    return [np.asarray(tensors[int(op["inputs"][1])]["quantization_parameters"]["scales"])
            for op in ops_details(interp) if op["op_name"] == "DEPTHWISE_CONV_2D"]


@pytest.mark.parametrize("estimator", ["minmax", "mse"])
def test_depthwise_kernels_stay_per_channel_through_the_qat_graph(tmp_path, estimator):
    # The estimator path converts through tflq's QAT graph; tfmot's per-axis weight
    # quantizers take the last kernel axis (the depthwise multiplier, 1), which gave
    # per-tensor depthwise weights and wrecked MobileNet-style models.
    from tflq import options
    from tflq.metrics import sqnr_db
    from tflq.models import wrap_model

    model = _mobilenet_blocks()
    x = np.random.default_rng(1).normal(size=(48, 12, 12, 8)).astype(np.float32)
    loaded = wrap_model(model, "blocks")
    name = loaded.input_names[0]

    def representative():
        for i in range(32):
            yield {name: x[i:i + 1]}

    plain = convert.convert_model(loaded, "int8", str(tmp_path), representative).content
    estimated = convert.convert_model(loaded, "int8", str(tmp_path), representative,
                                      options.ConvertOptions(range_estimator=estimator)).content
    ours, reference = _depthwise_scales(estimated), _depthwise_scales(plain)
    assert len(ours) == len(reference) == 2
    for got, want in zip(ours, reference, strict=True):
        assert got.size == want.size == 24
        # The converter's own per-channel scales (max|w_c| / 127) are the reference.
        np.testing.assert_allclose(got, want, rtol=1e-3)
    # And the deployed model is about as close to the float model as the converter's.
    float_out = model.predict(x[32:], verbose=0)

    def run(content):
        interp = Interpreter(model_content=content)
        interp.resize_tensor_input(interp.get_input_details()[0]["index"], x[32:].shape)
        interp.allocate_tensors()
        interp.set_tensor(interp.get_input_details()[0]["index"], x[32:])
        interp.invoke()
        return interp.get_tensor(interp.get_output_details()[0]["index"])

    # 3 dB: estimators may trade a little SQNR on random data; per-tensor depthwise
    # weights cost more than 10 dB here.
    assert sqnr_db(float_out, run(estimated)) > sqnr_db(float_out, run(plain)) - 3.0
