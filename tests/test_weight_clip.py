"""Per-tensor weight clipping (tflq.ptq.weight_clip): an outlier channel that ReLU6
saturates no longer sets the whole layer's int8 grid; the converter's own weight scale
follows the clipped kernel; nothing is clipped where it would not help; bias correction
against the unclipped kernel removes clipping's mean shift. References: the float model, the
interpreter's output and quantization parameters, numpy."""

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from tflq.models import tf_keras, wrap_model
from tflq.options import ConvertOptions
from tflq.ptq import convert, equalize, weight_clip

L = tf_keras.layers


def _outlier_block():
    """conv → ReLU6 → depthwise → ReLU6 → 1×1 projection. Depthwise channel 0 has weights
    ~40× the others' (as two channels in nsfwjs' first depthwise have), all positive on a
    non-negative input and a bias of 6.5: ReLU6 saturates it everywhere, so whatever its
    weights are clipped to, its output stays 6."""
    tf_keras.utils.set_random_seed(3)
    inp = L.Input((12, 12, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = L.ReLU(6.0)(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.ReLU(6.0, name="dw_relu")(x)
    model = tf_keras.Model(inp, L.Conv2D(4, 1, name="project")(x))
    rng = np.random.default_rng(0)
    model.get_layer("c1").set_weights([rng.normal(0, 0.5, (3, 3, 3, 8)), np.full(8, 0.5)])
    kernel = rng.normal(0, 0.3, (3, 3, 8, 1))
    kernel[:, :, 0] = np.abs(kernel[:, :, 0]) * 40.0
    bias = np.zeros(8)
    bias[0] = 6.5
    model.get_layer("dw").set_weights([kernel, bias])
    return model


def _x(n, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (n, 12, 12, 3)).astype(np.float32)


def _run(content, x):
    interp = Interpreter(model_content=content)
    detail = interp.get_input_details()[0]
    interp.resize_tensor_input(detail["index"], x.shape)
    interp.allocate_tensors()
    interp.set_tensor(detail["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"]), interp


def _sqnr(want, got):
    return 10 * np.log10(np.sum(want ** 2) / np.sum((got - want) ** 2))


def test_clipping_the_outlier_channel_restores_per_tensor_precision(tmp_path, monkeypatch):
    model = _outlier_block()
    loaded = wrap_model(model, "outlier")
    name = loaded.input_names[0]
    x = _x(96)

    def representative():
        for i in range(48):
            yield {name: x[i:i + 1]}

    want = model.predict(x[48:], verbose=0)
    options = ConvertOptions(per_channel=False, equalize=True)
    clipped = convert.convert_model(loaded, "int8", str(tmp_path / "clip"), representative,
                                    options)
    got, interp = _run(clipped.content, x[48:])
    record = {r["layer"]: r for r in clipped.details["equalize"]["weight_clip"]["layers"]}
    assert set(record) == {"c1", "dw", "project"}
    assert record["dw"]["ratio"] < 0.5
    assert record["dw"]["error_clipped"] < 0.5 * record["dw"]["error_unclipped"]
    assert any("per-tensor weight ranges clipped in" in note for note in clipped.notes)
    # the same pipeline with clipping not allowed (the only candidate: no clipping)
    monkeypatch.setattr(weight_clip, "RATIOS", (1.0,))
    plain = convert.convert_model(loaded, "int8", str(tmp_path / "plain"), representative,
                                  options)
    unclipped, plain_interp = _run(plain.content, x[48:])
    assert _sqnr(want, got) > _sqnr(want, unclipped) + 6.0
    # the converter's own per-tensor depthwise scale follows the clip: T / 127 = ratio × the
    # unclipped scale (both read from the .tflite files; equalization is the same in both)
    scales = [[float(d["quantization_parameters"]["scales"][0])
               for d in i.get_tensor_details()
               if tuple(d["shape"]) == (1, 3, 3, 8) and d["dtype"] == np.int8]
              for i in (interp, plain_interp)]
    assert [len(s) for s in scales] == [1, 1]
    np.testing.assert_allclose(scales[0][0] / scales[1][0], record["dw"]["ratio"], rtol=1e-3)


def test_nothing_is_clipped_where_clipping_cannot_help():
    """A kernel of ±a only: any clip moves every weight, none gains levels."""
    inp = L.Input((6, 6, 2))
    model = tf_keras.Model(inp, L.Conv2D(3, 3, name="c")(inp))
    signs = np.random.default_rng(2).choice([-1.0, 1.0], size=(3, 3, 2, 3)).astype(np.float32)
    model.get_layer("c").set_weights([0.7 * signs, np.zeros(3)])
    x = np.random.default_rng(4).normal(size=(16, 6, 6, 2)).astype(np.float32)
    record = weight_clip.clip_per_tensor(model, lambda: iter([x]))
    assert [(r["layer"], r["ratio"]) for r in record["layers"]] == [("c", 1.0)]
    assert record["clipped_layers"] == 0 and record["originals"] == {}
    np.testing.assert_array_equal(model.get_layer("c").get_weights()[0], 0.7 * signs)


def test_the_activation_chain_ends_at_relu_and_never_takes_softmax():
    inp = L.Input((4,))
    d1 = L.Dense(3, name="d1")
    d2 = L.Dense(3, name="d2")
    x = L.Activation("linear", name="folded")(d1(inp))
    x = L.ReLU(6.0, name="relu6")(x)
    x = L.Activation("relu", name="after")(x)
    out = L.Activation("softmax", name="soft")(d2(x))
    tf_keras.Model(inp, out)
    assert [layer.name for layer in weight_clip._activation_chain(d1)] == ["folded", "relu6"]
    assert weight_clip._activation_chain(d2) == []


def test_bias_correction_against_the_unclipped_kernel_removes_the_clipping_shift():
    inp = L.Input((8, 8, 2))
    model = tf_keras.Model(inp, L.Conv2D(2, 3, name="c")(inp))
    rng = np.random.default_rng(5)
    kernel = np.abs(rng.normal(0.2, 0.1, (3, 3, 2, 2))).astype(np.float32)
    kernel[0, 0, 0, 0] = 5.0  # clipping it to 1 lowers channel 0's mean output
    model.get_layer("c").set_weights([np.clip(kernel, -1, 1), np.zeros(2, np.float32)])
    x = rng.uniform(0, 1, (32, 8, 8, 2)).astype(np.float32)
    want = tf_keras.Model(inp, L.Conv2D(2, 3, weights=[kernel, np.zeros(2)])(inp))(x).numpy()
    equalize.bias_correct(model, lambda: iter([x]), per_channel=False,
                          reference={"c": kernel})
    quantized = equalize.quantize_weights(np.clip(kernel, -1, 1), "Conv2D", False)
    conv = tf_keras.Model(inp, L.Conv2D(2, 3, weights=[quantized, model.get_layer("c")
                                                           .get_weights()[1]])(inp))
    got = conv(x).numpy()
    np.testing.assert_allclose(got.mean(axis=(0, 1, 2)), want.mean(axis=(0, 1, 2)), atol=1e-4)
    assert abs(np.mean(want[..., 0]) - np.mean(got[..., 0] - model.get_layer("c")
                                                 .get_weights()[1][0])) > 0.1


def test_per_tensor_adaround_after_clipping_reconstructs_the_unclipped_model(tmp_path,
                                                                              monkeypatch):
    """``--per_tensor --equalize --adaround``: AdaRound rounds the clipped kernels but its
    target is the equalized model before clipping (else it would learn to reproduce the
    clipping error); the codes it learns are still what the .tflite holds."""
    from tflq.ptq import adaround

    model = _outlier_block()
    loaded = wrap_model(model, "outlier")
    name = loaded.input_names[0]
    x = _x(48)
    seen, real = {}, adaround.apply

    def spy(keras, *args, reference=None, **kwargs):
        seen["rounded"] = keras.get_layer("dw").get_weights()[0]
        seen["target"] = reference.get_layer("dw").get_weights()[0]
        return real(keras, *args, reference=reference, **kwargs)

    monkeypatch.setattr(adaround, "apply", spy)
    conversion = convert.convert_model(
        loaded, "int8", str(tmp_path), lambda: ({name: x[i:i + 1]} for i in range(len(x))),
        ConvertOptions(per_channel=False, equalize=True, adaround=True, adaround_iterations=20))
    ratio = {r["layer"]: r["ratio"] for r in
             conversion.details["equalize"]["weight_clip"]["layers"]}["dw"]
    assert ratio < 0.5
    np.testing.assert_allclose(np.abs(seen["rounded"]).max(),
                               ratio * np.abs(seen["target"]).max(), rtol=1e-5)
    assert [r["deployed_exactly"] for r in conversion.details["adaround"]["layers"]] == [True] * 3
