"""tflq.layer_error against an independent numpy computation on the tiny CNN: the int8
CONV_2D's cumulative numbers from its dequantized output against the Keras layer, and the
FULLY_CONNECTED's per-layer numbers from integer arithmetic in numpy."""

import math

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from conftest import tiny_data

from tflq import layer_error
from tflq.models import load_model, tf_keras
from tflq.ptq import convert

# The float32 .tflite and Keras agree to float rounding; SQNRs derived from them to this.
SQNR_TOL_DB = 0.05
# TFLite requantizes with a fixed-point multiplier, numpy with float64: a rare output may
# round one step apart (none did here; measured agreement 6e-7 relative).
RMSE_REL_TOL = 1e-3


@pytest.fixture(scope="module")
def tiny(tiny_keras_path, tmp_path_factory):
    model = load_model(tiny_keras_path)
    x, _ = tiny_data(40, seed=7)

    def representative():
        for i in range(20):
            yield {"img": x[i:i + 1]}

    scratch = str(tmp_path_factory.mktemp("convert"))
    contents = {mode: convert.convert_model(model, mode, scratch, representative=representative
                                            if mode in ("int8", "int16x8") else None).content
                for mode in ("float32", "float16", "int8", "int16x8")}
    samples = [{"img": x[20 + i:21 + i]} for i in range(6)]
    return model, contents, samples, x[20:26]


def _op_output(content, op_name, sample):
    """Dequantized output of the only ``op_name`` op, from a plain interpreter run, and its
    tensor detail."""
    # The kernels layer_error documents using (XNNPACK hides intermediates and rounds a few
    # int8 outputs differently).
    interp = Interpreter(model_content=content, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    assert detail["dtype"] == np.float32  # float I/O: the model quantizes its input itself
    interp.set_tensor(detail["index"], sample.astype(np.float32))
    interp.invoke()
    ops = [op for op in interp._get_ops_details() if op["op_name"] == op_name]
    assert len(ops) == 1
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    out = tensors[int(ops[0]["outputs"][0])]
    scale, zero = out["quantization"]
    value = (interp.get_tensor(out["index"]).astype(np.float64) - zero) * scale
    return value, out, ops[0], interp, tensors


def test_int8_conv_cumulative_error_matches_numpy(tiny):
    model, contents, samples, x = tiny
    found = layer_error.measure(contents["float32"], {"int8": contents["int8"]}, samples)["int8"]
    assert found["samples"] == 6 and found["unmatched"] == [] and found["note"] is None
    rows = {r["op"]: r for r in found["layers"]}
    assert [r["op"] for r in found["layers"]] == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
    keras = model.keras_model
    conv_ref = tf_keras.Model(keras.inputs, keras.layers[0].output).predict(x, verbose=0)
    deq = np.concatenate([_op_output(contents["int8"], "CONV_2D", x[i:i + 1])[0]
                          for i in range(len(x))])
    out = _op_output(contents["int8"], "CONV_2D", x[:1])[1]
    scale, zero = out["quantization"]
    conv = rows["CONV_2D"]
    noise = np.sum((conv_ref - deq) ** 2)
    assert conv["sqnr_db"] == pytest.approx(10 * np.log10(np.sum(conv_ref ** 2) / noise),
                                            abs=SQNR_TOL_DB)
    rmse = math.sqrt(np.mean((conv_ref - deq) ** 2))
    assert conv["rmse_over_scale"] == pytest.approx(rmse / scale, rel=1e-3)
    assert conv["scale"] == pytest.approx(scale) and conv["zero_point"] == zero
    assert conv["range_used"] == pytest.approx([scale * (-128 - zero), scale * (127 - zero)])
    assert conv["range_observed"] == pytest.approx([conv_ref.min(), conv_ref.max()], abs=1e-5)
    lo, hi = conv["range_used"]
    clipped = np.mean((conv_ref < lo - scale / 2) | (conv_ref > hi + scale / 2))
    assert conv["clipped_share"] == pytest.approx(clipped)
    # The first op reads the quantized model input in both views: the same error.
    assert conv["layer_sqnr_db"] == pytest.approx(conv["sqnr_db"], abs=1e-9)


def test_int8_dense_per_layer_error_matches_integer_numpy(tiny):
    model, contents, samples, x = tiny
    rows = {r["op"]: r for r in layer_error.measure(
        contents["float32"], {"int8": contents["int8"]}, samples)["int8"]["layers"]}
    keras = model.keras_model
    flat = tf_keras.Model(keras.inputs, keras.layers[1].output).predict(x, verbose=0)
    logits = keras.predict(x, verbose=0)
    _, out, op, interp, tensors = _op_output(contents["int8"], "FULLY_CONNECTED", x[:1])
    x_detail, w_detail, b_detail = (tensors[int(i)] for i in op["inputs"])
    s_x, z_x = x_detail["quantization"]
    s_y, z_y = out["quantization"]
    w_scales = np.asarray(w_detail["quantization_parameters"]["scales"], np.float64)
    w_codes = interp.get_tensor(w_detail["index"]).astype(np.int64)  # (units, features)
    bias = interp.get_tensor(b_detail["index"]).astype(np.int64)
    # The op alone: the float model's input quantized with the op's own input scale.
    x_codes = np.clip(np.round(flat / s_x) + z_x, -128, 127).astype(np.int64)
    acc = (x_codes - z_x) @ w_codes.T + bias
    y_codes = np.clip(np.round(acc * (s_x * w_scales) / s_y) + z_y, -128, 127)
    y = (y_codes - z_y) * s_y
    dense = rows["FULLY_CONNECTED"]
    assert dense["layer_rmse"] == pytest.approx(math.sqrt(np.mean((logits - y) ** 2)),
                                                rel=RMSE_REL_TOL)
    assert dense["layer_rmse_over_scale"] == pytest.approx(dense["layer_rmse"] / s_y)
    assert dense["layer_sqnr_db"] == pytest.approx(
        10 * np.log10(np.sum(logits ** 2) / np.sum((logits - y) ** 2)), abs=0.5)
    # Cumulative: the real model's logits against Keras (errors of the conv included).
    real = np.concatenate([_op_output(contents["int8"], "FULLY_CONNECTED", x[i:i + 1])[0]
                           for i in range(len(x))])
    assert dense["sqnr_db"] == pytest.approx(
        10 * np.log10(np.sum(logits ** 2) / np.sum((logits - real) ** 2)), abs=SQNR_TOL_DB)


def test_float16_and_int16x8_rows_are_matched_with_both_views(tiny):
    _, contents, samples, _ = tiny
    found = layer_error.measure(contents["float32"], {"float16": contents["float16"],
                                                      "int16x8": contents["int16x8"]}, samples)
    f16 = found["float16"]["layers"]
    # float16 weights reach the ops through DEQUANTIZE ops: those stay constants when isolated.
    assert [r["op"] for r in f16] == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
    assert all(r["matched"] and r["scale"] is None and r["rmse_over_scale"] is None for r in f16)
    assert all(r["layer_sqnr_db"] is not None and r["layer_sqnr_db"] > 50 for r in f16)
    i16 = found["int16x8"]["layers"]
    assert all(r["dtype"] == "int16" and r["zero_point"] == 0 for r in i16)
    assert all(r["range_used"][0] == pytest.approx(-32768 * r["scale"]) for r in i16)


def test_match_ops_aligns_around_an_op_only_one_model_has():
    def ops(*kinds):
        return [{"index": i, "op": k, "shape": (1, 4)} for i, k in enumerate(kinds)]

    float_ops = ops("CONV_2D", "RELU", "FULLY_CONNECTED")
    quant_ops = ops("CONV_2D", "RELU", "MUL", "FULLY_CONNECTED")
    assert layer_error.match_ops(float_ops, quant_ops) == {0: 0, 1: 1, 3: 2}


def test_isolated_ops_read_private_inputs(tiny):
    _, contents, _, _ = tiny
    content, feeds = layer_error.isolate_ops(contents["int8"], [1, 3])
    interp = Interpreter(model_content=content)
    interp.allocate_tensors()
    inputs = {d["index"] for d in interp.get_input_details()}
    # CONV_2D#1 and FULLY_CONNECTED#3 each read one activation (weights stay constants).
    assert sorted(feeds) == [1, 3] and all(len(f) == 1 for f in feeds.values())
    assert inputs == {tensor for f in feeds.values() for _, tensor in f}
    ops = [op["op_name"] for op in interp._get_ops_details() if op["op_name"] != "DELEGATE"]
    assert ops == ["CONV_2D", "FULLY_CONNECTED"]  # the RESHAPE between them is gone


def test_a_sample_without_the_model_input_is_refused(tiny):
    _, contents, _, _ = tiny
    with pytest.raises(ValueError, match=r"Sample 0 has no input\(s\) \['img'\]"):
        layer_error.measure(contents["float32"], {"int8": contents["int8"]}, [{"x": None}])

