"""AdaRound: learned codes on the grid, lower output error than rounding to nearest, and the
.tflite carrying exactly the learned int8 codes (read back through the interpreter)."""

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from tflq import options, tflite_inspect
from tflq.models import tf_keras, wrap_model
from tflq.ptq import adaround, convert
from tflq.quant import graph

L = tf_keras.layers


def _model(seed=0, outliers=False):
    tf_keras.utils.set_random_seed(seed)
    inp = L.Input((10, 10, 3))
    x = L.Conv2D(8, 3, activation="relu", name="conv")(inp)
    x = L.DepthwiseConv2D(3, activation="relu", name="dw")(x)
    x = L.Conv2D(6, 1, name="pw")(x)
    model = tf_keras.Model(inp, L.Dense(4, name="head")(L.GlobalAveragePooling2D()(x)))
    if outliers:  # one weight per channel at 4x the layer's largest: 4-bit must clip
        for name in ("conv", "pw"):
            kernel, bias = model.get_layer(name).get_weights()
            flat = kernel.reshape(-1, kernel.shape[-1])
            flat[0] = 4.0 * np.abs(flat).max()
            model.get_layer(name).set_weights([flat.reshape(kernel.shape), bias])
    return model


def _x(n=48, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 10, 10, 3)).astype(np.float32)


def _convert_int8(model, tmp_path, **settings):
    """``model``'s int8 .tflite with ``settings``, calibrated on :func:`_x` one sample at a
    time (the Conversion)."""
    loaded = wrap_model(model, "ada")
    name = loaded.input_names[0]
    x = _x()
    return convert.convert_model(loaded, "int8", str(tmp_path),
                                 lambda: ({name: x[i:i + 1]} for i in range(len(x))),
                                 options.ConvertOptions(**settings))


def _nearest(model, num_bits):
    """Independent numpy reference: every kernel rounded to the nearest level of the grid."""
    grid = adaround.levels(num_bits)
    copy = tf_keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        if type(layer).__name__ not in ("Conv2D", "DepthwiseConv2D", "Dense"):
            continue
        kernel, *rest = layer.get_weights()
        flat = kernel.reshape(*kernel.shape[:2], -1) if kernel.ndim == 4 and type(
            layer).__name__ == "DepthwiseConv2D" else kernel
        scale = np.abs(flat).max(axis=tuple(range(flat.ndim - 1)), keepdims=True) / 127.0
        codes = flat / scale
        nearest = grid[np.abs(codes[..., None] - grid).argmin(axis=-1)]
        layer.set_weights([(nearest * scale).reshape(kernel.shape).astype(np.float32), *rest])
    return copy


def test_grids():
    np.testing.assert_array_equal(adaround.levels(8), np.arange(-127, 128))
    four = adaround.levels(4)
    np.testing.assert_array_equal(four, [-127, -109, -91, -73, -54, -36, -18, 0,
                                         18, 36, 54, 73, 91, 109, 127])
    with pytest.raises(ValueError, match=r"num_bits must be one of \[8, 4\]. Received: 3"):
        adaround.levels(3)


def test_the_converter_rounds_uniform_4bit_weights_to_the_grid_codes(tmp_path):
    """Weights at k·T_c/7 (k = −7…7, a different T_c per channel) come out of the plain
    converter as the codes round(127k/7) = levels(4), and weights at code·T_c/127 (what
    AdaRound writes) read back as exactly those codes with scale T_c/127."""
    tops = np.array([0.5, 0.031, 2.7], np.float32)
    k = np.arange(-7, 8, dtype=np.float32)
    uniform = (k[:, None] * tops[None, :] / 7.0).reshape(1, 1, 15, 3)
    on_codes = (np.round(127 * k / 7)[:, None] * (tops[None, :] / 127)).reshape(1, 1, 15, 3)
    x = np.random.default_rng(3).uniform(0, 1, size=(8, 4, 4, 15)).astype(np.float32)
    for kernel in (uniform, on_codes):
        inp = L.Input((4, 4, 15))
        model = tf_keras.Model(inp, L.Conv2D(3, 1, name="c")(inp))
        model.get_layer("c").set_weights([kernel.astype(np.float32), np.zeros(3, np.float32)])
        loaded = wrap_model(model, "grid")
        name = loaded.input_names[0]
        content = convert.convert_model(
            loaded, "int8", str(tmp_path),
            lambda n=name: ({n: x[i:i + 1]} for i in range(8))).content
        tensors = [t for t in tflite_inspect.int8_weight_tensors(content)
                   if t["codes"].size == 45]
        assert len(tensors) == 1
        codes = tensors[0]["codes"].reshape(3, 15).T  # TFLite layout (out, h, w, in)
        np.testing.assert_array_equal(codes, np.round(127 * k / 7)[:, None].repeat(3, axis=1))
        np.testing.assert_array_equal(np.unique(codes), adaround.levels(4))
        np.testing.assert_allclose(tensors[0]["scales"], tops / 127, rtol=1e-6)


def test_four_bit_clipping_is_the_output_error_argmin_per_channel():
    """A Dense layer with an outlier weight per channel: each channel's threshold T_c is the
    candidate whose clipped, nearest-rounded weights give the smallest output error
    (numpy reference), below max|w_c|, and the learned codes use T_c/127 as scale."""
    tf_keras.utils.set_random_seed(4)
    inp = L.Input((16,))
    model = tf_keras.Model(inp, L.Dense(5, name="head")(inp))
    kernel, bias = model.get_layer("head").get_weights()
    kernel[3] = 5.0 * np.abs(kernel).max(axis=0)
    model.get_layer("head").set_weights([kernel, bias])
    x = np.random.default_rng(5).normal(size=(64, 16)).astype(np.float32)
    x[:, 3] *= 0.02  # the outliers' input is small: clipping them costs little output
    want = x.astype(np.float64) @ kernel + bias
    record = adaround.apply(model, lambda: iter([x]), 4, True, iterations=30)
    grid = adaround.levels(4)
    top = np.abs(kernel).max(axis=0).astype(np.float64)
    errors = []
    for ratio in adaround.CLIP_RATIOS:
        scale = ratio * top / 127
        codes = np.clip(kernel / scale, -127, 127)
        nearest = grid[np.abs(codes[..., None] - grid).argmin(axis=-1)]
        errors.append(np.mean((x @ (nearest * scale) + bias - want) ** 2, axis=0))
    best = np.asarray(adaround.CLIP_RATIOS)[np.argmin(errors, axis=0)]
    assert np.all(best < 1.0)
    np.testing.assert_allclose(record["scales"]["head"], best * top / 127, rtol=1e-9)
    stats = record["layers"][0]
    assert stats["clipped_channels"] == 5
    assert stats["clip_ratio_median"] == pytest.approx(np.median(best))
    codes = record["codes"]["head"]
    np.testing.assert_array_equal(np.abs(codes).max(axis=0), 127)
    np.testing.assert_allclose(model.get_layer("head").get_weights()[0],
                               codes * record["scales"]["head"], rtol=1e-6)


@pytest.mark.parametrize("num_bits", [8, 4])
def test_four_bit_bias_correction_against_numpy(num_bits):
    """4-bit: each channel's bias gains the mean output error of the rounded kernel on the
    calibration inputs (numpy reference, a linear Dense layer, where that shift always
    lowers the MSE); 8-bit leaves the bias alone."""
    tf_keras.utils.set_random_seed(6)
    inp = L.Input((12,))
    model = tf_keras.Model(inp, L.Dense(5, name="head")(inp))
    kernel, _ = model.get_layer("head").get_weights()
    bias = np.linspace(-0.3, 0.3, 5).astype(np.float32)
    model.get_layer("head").set_weights([kernel, bias])
    x = np.random.default_rng(7).uniform(0, 1, size=(64, 12)).astype(np.float32)
    record = adaround.apply(model, lambda: iter([x]), num_bits, True, iterations=20)
    rounded, corrected = model.get_layer("head").get_weights()
    if num_bits == 8:
        np.testing.assert_array_equal(corrected, bias)
        assert "bias_corrected" not in record["layers"][0]
        return
    shift = np.mean(x.astype(np.float64) @ (kernel - rounded), axis=0)
    np.testing.assert_allclose(corrected, bias + shift, rtol=1e-5, atol=1e-7)
    stats = record["layers"][0]
    assert stats["bias_corrected"] is True and stats["bias_corrected_channels"] == 5
    want = x @ kernel + bias
    before = np.mean((x @ rounded + bias - want) ** 2)
    after = np.mean((x @ rounded + corrected - want) ** 2)
    assert after < before
    assert stats["output_mse_bias_corrected"] == pytest.approx(after, rel=1e-4)


@pytest.mark.parametrize("num_bits", [8, 4])
def test_learned_codes_lie_on_the_grid_and_keep_each_channel_scale(num_bits):
    model = graph.prepare(_model(outliers=True))
    before = {layer.name: layer.get_weights()[0] for layer in model.layers if layer.weights}
    record = adaround.apply(model, lambda: iter([_x()]), num_bits, True, iterations=60)
    grid = set(adaround.levels(num_bits))
    assert [r["layer"] for r in record["layers"]] == ["conv", "dw", "pw", "head"]
    for layer_name, codes in record["codes"].items():
        assert set(np.unique(codes)) <= grid
        flat = codes.reshape(-1, codes.shape[-1])
        np.testing.assert_array_equal(np.abs(flat).max(axis=0), 127)  # scale kept
        kernel = model.get_layer(layer_name).get_weights()[0]
        original = before[layer_name].reshape(codes.shape)
        top = np.abs(original.reshape(-1, codes.shape[-1])).max(axis=0)
        scale = record["scales"][layer_name]
        if num_bits == 8:  # the converter's own scale
            np.testing.assert_allclose(scale, top / 127.0, rtol=1e-6)
        else:  # a clipping threshold T_c = 127·scale from the candidates
            ratios = scale * 127.0 / top
            assert np.all(np.min(np.abs(ratios[:, None] - adaround.CLIP_RATIOS), axis=1) < 1e-6)
        np.testing.assert_allclose(kernel.reshape(codes.shape), codes * scale, rtol=1e-6)
    clipped = {r["layer"]: r["clipped_channels"] for r in record["layers"]}
    if num_bits == 8:
        assert set(clipped.values()) == {0}
    else:  # the outliers planted in conv and pw are clipped away
        assert clipped["conv"] > 0 and clipped["pw"] > 0


def test_four_bit_adaround_beats_rounding_to_nearest():
    model = _model()
    x = _x()
    want = model.predict(x, verbose=0)
    prepared = graph.prepare(model)
    nearest_error = np.mean((_nearest(prepared, 4).predict(x, verbose=0) - want) ** 2)
    adaround.apply(prepared, lambda: iter([x]), 4, True, iterations=300)
    learned_error = np.mean((prepared.predict(x, verbose=0) - want) ** 2)
    assert learned_error < 0.8 * nearest_error


def _nearest_on(model, scales: dict, num_bits: int):
    """numpy reference: each rounded layer's float kernel on the grid with the given per-channel
    scales (the 4-bit clipping AdaRound chose), clipped to ±127 and rounded to nearest."""
    grid = adaround.levels(num_bits)
    copy = tf_keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for name, scale in scales.items():
        layer = copy.get_layer(name)
        kernel, *rest = layer.get_weights()
        depthwise = type(layer).__name__ == "DepthwiseConv2D"
        flat = kernel.reshape(*kernel.shape[:2], -1) if depthwise else kernel
        codes = np.clip(flat / scale, -127, 127)
        nearest = grid[np.abs(codes[..., None] - grid).argmin(axis=-1)] * scale
        layer.set_weights([nearest.reshape(kernel.shape).astype(np.float32), *rest])
    return copy


def test_eight_bit_learned_rounding_beats_nearest_on_the_same_grid_on_held_out_inputs():
    x, held = _x(64, seed=1), _x(64, seed=9)
    prepared = graph.prepare(_model(seed=3))
    want = prepared.predict(held, verbose=0)
    record = adaround.apply(prepared, lambda: iter([x]), 8, True, iterations=500)
    nearest = _nearest_on(graph.prepare(_model(seed=3)), record["scales"], 8)
    learned_error = np.mean((prepared.predict(held, verbose=0) - want) ** 2)
    nearest_error = np.mean((nearest.predict(held, verbose=0) - want) ** 2)
    assert [s["kept"] for s in record["layers"]] == ["adaround"] * 4
    assert learned_error < 0.8 * nearest_error, (learned_error, nearest_error)


def test_four_bit_learned_rounding_helps_a_pretrained_resnet8_on_held_out_photo_crops():
    # Found on this model: the regularizer, as a mean over all weights, barely pulled h(V) to
    # 0 or 1, so the hard rounding lost to nearest and most layers fell back to it (here:
    # +3.8 dB over one step, 5 of 10 layers kept; now +5.2 dB, 9 kept). One step is nearest
    # on the same clipped grid with the same bias correction. Real photos, calibration side
    # only: the benchmark's evaluation photos are not touched.
    from benchmarks import corpus, photo_crops
    from tflq import metrics, models

    photos = corpus.fetch_images()
    calibration_photos, _ = photo_crops.split_photos(photos, seed=0)
    paths = [photos[k] for k in calibration_photos]
    fit = photo_crops.make_crops(paths, 64, 32, 0) / 255.0  # the model reads 0..1
    held = photo_crops.make_crops(paths, 200, 32, 99) / 255.0
    keras = models.load_model(corpus.fetch_model("resnet8_cifar10")).to_tf_keras([fit])
    want = keras.predict(held, verbose=0)
    sqnr, kept = {}, {}
    for steps in (1, 500):
        prepared = graph.prepare(keras, [fit])
        if prepared is keras:
            prepared = tf_keras.models.clone_model(keras)
            prepared.set_weights(keras.get_weights())
        record = adaround.apply(prepared, lambda: iter([fit]), 4, True, iterations=steps)
        sqnr[steps] = metrics.sqnr_db(want, prepared.predict(held, verbose=0))
        kept[steps] = sum(s["kept"] == "adaround" for s in record["layers"])
    assert sqnr[500] > sqnr[1] + 4.5, sqnr
    assert kept[500] >= 8, kept


@pytest.mark.parametrize("num_bits", [8, 4])
def test_the_tflite_holds_exactly_the_learned_codes(tmp_path, num_bits):
    model = _model(outliers=True)
    conversion = _convert_int8(model, tmp_path, adaround=True, adaround_bits=num_bits,
                               adaround_iterations=40)
    record = conversion.details["adaround"]
    assert [r["deployed_exactly"] for r in record["layers"]] == [True] * 4
    # Independently: every int8 weight tensor of a conv/dense op holds grid codes only.
    interp = Interpreter(model_content=conversion.content)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    from tflq.tflite_inspect import ops_details

    grid = set(adaround.levels(num_bits))
    weight_ops = [op for op in ops_details(interp)
                  if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert len(weight_ops) == 4
    for op in weight_ops:
        codes = interp.get_tensor(tensors[int(op["inputs"][1])]["index"])
        assert set(np.unique(codes)) <= grid
    assert conversion.notes[-1].startswith(f"AdaRound {num_bits}-bit weights")
    if num_bits == 4:  # clipped channels deployed exactly too, at scale T_c / 127
        assert sum(r["clipped_channels"] for r in record["layers"]) > 0
        assert "4-bit grid clipped per channel" in conversion.notes[-1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="iterations >= 1"):
        adaround.apply(graph.prepare(_model()), lambda: iter([_x()]), iterations=0)
    with pytest.raises(ValueError, match="adaround_bits must be 8 or 4. Received: 6"):
        options.ConvertOptions(adaround=True, adaround_bits=6)
    with pytest.raises(ValueError, match="--adaround_bits needs --adaround"):
        options.ConvertOptions(adaround_bits=4)
    with pytest.raises(ValueError, match="adaround_iterations must be a positive integer"):
        options.ConvertOptions(adaround=True, adaround_iterations=0)
    with pytest.raises(ValueError, match="adaround_reg must be >= 0"):
        options.ConvertOptions(adaround=True, adaround_reg=-1.0)


def test_nearly_dead_channels_are_deployed_exactly(tmp_path):
    """The converter floors a channel's weight range at 1e-6 (scale 1e-6/254): AdaRound must
    round such a channel on that scale too (VWW's MobileNetV1 has many such channels)."""
    model = _model()
    pw = model.get_layer("pw")
    kernel, bias = pw.get_weights()
    kernel[..., 2] *= 1e-8 / np.abs(kernel[..., 2]).max()  # max |w| = 1e-8
    pw.set_weights([kernel, bias])
    conversion = _convert_int8(model, tmp_path, adaround=True, adaround_iterations=20)
    record = conversion.details["adaround"]
    assert [r["deployed_exactly"] for r in record["layers"]] == [True] * 4
    interp = Interpreter(model_content=conversion.content)
    scales = [t["quantization_parameters"]["scales"] for t in interp.get_tensor_details()
              if t["dtype"] == np.int8 and len(t["quantization_parameters"]["scales"]) == 6]
    assert len(scales) == 1 and scales[0][2] == pytest.approx(1e-6 / 254, rel=1e-6)


def test_four_bit_per_tensor_is_deployed_exactly(tmp_path):
    """Per tensor: one clipping threshold for the whole kernel (its largest weight pinned at
    ±127), read back exactly from the .tflite."""
    model = _model(outliers=True)
    conversion = _convert_int8(model, tmp_path, per_channel=False, adaround=True, adaround_bits=4,
                               adaround_iterations=20)
    layers = conversion.details["adaround"]["layers"]
    assert [r["deployed_exactly"] for r in layers] == [True] * 4
    for row in layers:  # one ratio per tensor
        assert row["clip_ratio_min"] == row["clip_ratio_median"]
    tensors = tflite_inspect.int8_weight_tensors(conversion.content)
    assert tensors and all(t["scales"].size == 1 for t in tensors)


def test_channels_whose_bias_needs_a_larger_weight_scale_are_left_to_the_converter(tmp_path):
    """A dead channel with a bias (nsfwjs's block_11_expand): the converter raises its weight
    scale to |b| / (2^30 · input scale) so the int32 bias fits, and rounds it itself; the
    other channels still carry exactly the learned codes, and the note says so. A channel
    of weights 1e-30 with a bias (VWW's MobileNetV1) is pinned at code 0 and checked too."""
    model = _model()
    pw = model.get_layer("pw")
    kernel, bias = pw.get_weights()
    kernel[..., 2] = -3.1e-9  # below the converter's floor: its own scale would be 1e-6/254
    kernel[..., 3] = 1e-30  # rounds to code 0 on every scale: AdaRound pins it at 0 itself
    bias[2:4] = 2.0
    pw.set_weights([kernel, bias])
    conversion = _convert_int8(model, tmp_path, adaround=True, adaround_iterations=20)
    layers = {r["layer"]: r for r in conversion.details["adaround"]["layers"]}
    assert layers["pw"]["bias_limited_channels"] == 1
    assert [r["deployed_exactly"] for r in layers.values()] == [True] * 4
    assert "1 channel(s) left to the converter's rounding" in conversion.notes[-1]
    # Independently, from the interpreter: the weight scale of channel 2 is the one the int32
    # bias needs (bias scale = input scale · weight scale = |b| / 2^30), not the 1e-6/254
    # floor; and the other channels' scales are max|w_c| / 127 of the rounded kernel.
    interp = Interpreter(model_content=conversion.content)
    weights = [t for t in interp.get_tensor_details()
               if t["dtype"] == np.int8 and len(t["quantization_parameters"]["scales"]) == 6]
    biases = [t for t in interp.get_tensor_details()
              if t["dtype"] == np.int32 and len(t["quantization_parameters"]["scales"]) == 6]
    assert len(weights) == 1 and len(biases) == 1
    assert biases[0]["quantization_parameters"]["scales"][2] == pytest.approx(2.0 / 2 ** 30,
                                                                              rel=1e-5)
    assert weights[0]["quantization_parameters"]["scales"][2] > 10 * 1e-6 / 254
    codes = interp.get_tensor(weights[0]["index"])
    assert codes[2].max() == 0 and codes[3].max() == 0  # -3.1e-9 and 1e-30: code zero
    assert weights[0]["quantization_parameters"]["scales"][3] > 10 * 1e-6 / 254


def test_adaround_with_a_range_estimator_is_deployed_exactly(tmp_path):
    """The range estimators convert through tflq's QAT graph, which quantizes Dense kernels
    per tensor (tfmot's 8-bit scheme): AdaRound rounds the head on that grid, so its codes
    survive too (per channel, the head's codes were re-rounded by the converter)."""
    model = _model(outliers=True)
    conversion = _convert_int8(model, tmp_path, adaround=True, adaround_iterations=20,
                               range_estimator="mse")
    layers = conversion.details["adaround"]["layers"]
    assert [r["deployed_exactly"] for r in layers] == [True] * 4
    assert conversion.details["ranges"]["estimator"] == "mse"
    scales = {t["codes"].shape: t["scales"].size
              for t in tflite_inspect.int8_weight_tensors(conversion.content)}
    assert scales[(4, 6)] == 1 and scales[(6, 1, 1, 8)] == 6  # head per tensor, pw per channel


def _tflite_biases(content: bytes) -> list[np.ndarray]:
    """Each conv / fully-connected op's bias, dequantized from its int32 codes, in op order
    (0 where the op has none: the converter drops an all-zero bias)."""
    from tflq.tflite_inspect import ops_details

    interp = Interpreter(model_content=content)
    interp.allocate_tensors()
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    biases = []
    for op in ops_details(interp):
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            if int(op["inputs"][2]) < 0:
                biases.append(np.zeros(1))
                continue
            detail = tensors[int(op["inputs"][2])]
            scales = detail["quantization_parameters"]["scales"]
            biases.append(interp.get_tensor(detail["index"]).astype(np.float64) * scales)
    return biases


def test_after_equalization_adaround_keeps_the_equalized_float_biases(tmp_path):
    """Bias correction shifts each bias by the mean error of rounding to nearest; AdaRound
    replaces that rounding, so after CLE + AdaRound the deployed biases must be those of the
    equalized float model (CLE alone keeps the function), not shifted by a correction for an
    error the learned rounding no longer makes. CLE alone still corrects them."""
    from tflq.ptq import equalize

    model = _model(outliers=True)
    rng = np.random.default_rng(3)
    for name in ("conv", "dw", "pw", "head"):
        kernel, bias = model.get_layer(name).get_weights()
        model.get_layer(name).set_weights([kernel, rng.normal(0, 0.1, bias.shape)])
    x = _x()
    reference, _ = equalize.equalize(graph.prepare(model), samples=[x],
                                     batches=lambda: iter([x]))
    float_biases = [layer.get_weights()[1] for layer in reference.layers
                    if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense")]
    both = _convert_int8(model, tmp_path / "both", equalize=True, adaround=True,
                         adaround_iterations=40)
    alone = _convert_int8(model, tmp_path / "alone", equalize=True)
    deployed, corrected = _tflite_biases(both.content), _tflite_biases(alone.content)
    assert len(deployed) == len(float_biases) == 4
    for got, want in zip(deployed, float_biases, strict=True):
        np.testing.assert_allclose(np.broadcast_to(got, want.shape), want,
                                   atol=1e-5 + 1e-4 * np.abs(want).max())
    shifts = [np.abs(c - w).max() / np.abs(w).max() for c, w in
              zip(corrected, float_biases, strict=True)]
    assert max(shifts) > 1e-3  # CLE alone moves them: the check above can tell the two apart
    assert both.details["equalize"]["bias_corrected"] == {}
    assert "bias correction left to AdaRound" in both.notes[0]
    assert "bias correction on 4 layers" in alone.notes[0]


def test_adaround_reconstructs_the_reference_model_it_is_given():
    """``reference``: the outputs AdaRound reconstructs (e.g. before per-tensor weight
    clipping). A reference whose conv kernel sits 0.45 code above the rounded model's makes
    AdaRound round many of that layer's weights up, none down; without it few move."""
    prepared = graph.prepare(_model())
    x = _x()
    reference = tf_keras.models.clone_model(prepared)
    reference.set_weights(prepared.get_weights())
    kernel, bias = prepared.get_layer("conv").get_weights()
    scale = np.abs(kernel).max(axis=(0, 1, 2)) / 127.0
    reference.get_layer("conv").set_weights([kernel + 0.45 * scale, bias])
    nearest = np.round(kernel / scale)

    def ups(ref):
        model = tf_keras.models.clone_model(prepared)
        model.set_weights(prepared.get_weights())
        record = adaround.apply(model, lambda: iter([x]), iterations=100, reference=ref)
        changed = record["codes"]["conv"] - nearest
        return (changed > 0).sum(), (changed < 0).sum()

    up, down = ups(reference)
    assert up >= 20 and down == 0
    assert sum(ups(None)) < up / 4  # its own outputs: few weights leave nearest, either way
