"""Converter modes on a tiny model: dtypes and scales read back through the interpreter."""

import os

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from conftest import tiny_data

from tflq import fileio, models, options, sampling
from tflq.data import open_data
from tflq.models import tf_keras
from tflq.ptq import convert


@pytest.fixture(scope="module")
def loaded(tiny_model):
    return models.wrap_model(tiny_model, "tiny")


@pytest.fixture(scope="module")
def representative():
    x, _ = tiny_data(32, seed=5)

    def gen():
        for row in x:
            yield {"img": row[None]}

    return gen


def _tensor(content, predicate):
    interp = Interpreter(model_content=content)
    return [t for t in interp.get_tensor_details() if predicate(t)]


def _conv_weight_tensors(content):
    return _tensor(content, lambda t: len(t["shape"]) == 4 and t["shape"][0] == 4
                   and list(t["shape"][1:3]) == [3, 3])


def _conv_weights(content):
    found = _conv_weight_tensors(content)
    assert len(found) == 1
    return found[0]


def test_parse_modes():
    assert options.parse_modes("int8, float16,int8") == [options.Mode.INT8, options.Mode.FLOAT16]
    assert options.parse_modes(["dynamic"]) == [options.Mode.DYNAMIC]
    with pytest.raises(ValueError, match=r"Unknown mode 'int4'. Available: \["):
        options.parse_modes("int8,int4")
    with pytest.raises(ValueError, match="No conversion mode given"):
        options.parse_modes(" , ")


def test_float32_keeps_everything_float(loaded, tmp_path):
    result = convert.convert_model(loaded, "float32", str(tmp_path))
    assert result.mode == options.Mode.FLOAT32
    assert _conv_weights(result.content)["dtype"] == np.float32
    names = {op.split("#")[0] for op in result.float_ops}
    assert {"CONV_2D", "FULLY_CONNECTED"} <= names


def test_float16_stores_half_weights(loaded, tmp_path):
    result = convert.convert_model(loaded, "float16", str(tmp_path))
    dtypes = sorted(np.dtype(t["dtype"]).name for t in _conv_weight_tensors(result.content))
    assert dtypes == ["float16", "float32"]  # stored half, dequantized for float kernels


def test_dynamic_has_int8_weights_and_float_ops(tmp_path):
    # The converter leaves tensors under 1,024 elements in float: use a 32x64 kernel.
    inp = tf_keras.Input((32,), name="x")
    loaded = models.wrap_model(tf_keras.Model(inp, tf_keras.layers.Dense(64)(inp)), "d")
    result = convert.convert_model(loaded, options.Mode.DYNAMIC, str(tmp_path))
    kernels = _tensor(result.content, lambda t: sorted(t["shape"]) == [32, 64])
    assert [np.dtype(t["dtype"]).name for t in kernels] == ["int8"]
    assert [op.split("#")[0] for op in result.float_ops] == ["FULLY_CONNECTED"]


@pytest.mark.parametrize("per_channel, expected_scales", [(True, 4), (False, 1)])
def test_int8_is_fully_integer_per_channel_or_tensor(loaded, representative, tmp_path,
                                                     per_channel, expected_scales):
    settings = options.ConvertOptions(per_channel=per_channel)
    result = convert.convert_model(loaded, "int8", str(tmp_path), representative, settings)
    assert result.float_ops == ()
    weights = _conv_weights(result.content)
    assert weights["dtype"] == np.int8
    params = weights["quantization_parameters"]
    assert len(params["scales"]) == expected_scales
    np.testing.assert_array_equal(params["zero_points"], 0)  # symmetric weights per spec
    interp = Interpreter(model_content=result.content)
    assert interp.get_input_details()[0]["dtype"] == np.float32


@pytest.mark.parametrize("mode, dtype", [("int8", np.int8), ("int16x8", np.int16)])
def test_integer_io(loaded, representative, tmp_path, mode, dtype):
    settings = options.ConvertOptions(integer_io=True)
    result = convert.convert_model(loaded, mode, str(tmp_path), representative, settings)
    interp = Interpreter(model_content=result.content)
    assert interp.get_input_details()[0]["dtype"] == dtype
    assert interp.get_output_details()[0]["dtype"] == dtype
    assert result.float_ops == ()


def test_calibrated_modes_need_data(loaded, tmp_path):
    with pytest.raises(ValueError, match="needs calibration data"):
        convert.convert_model(loaded, "int8", str(tmp_path))


def _model_with_sin():
    inp = tf_keras.Input((4,), name="x")
    h = tf_keras.layers.Dense(4)(inp)
    h = tf_keras.layers.Lambda(lambda t: tf_keras.backend.cos(t) * 3.0)(h)
    return tf_keras.Model(inp, tf_keras.layers.Dense(2)(h))


def test_op_without_int8_kernel_is_an_error_unless_allowed(tmp_path):
    loaded = models.wrap_model(_model_with_sin(), "cos")
    data = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)

    def gen():
        for row in data:
            yield {"x": row[None]}

    with pytest.raises(ValueError, match="--allow_float_ops"):
        convert.convert_model(loaded, "int8", str(tmp_path), gen)
    allowed = convert.convert_model(loaded, "int8", str(tmp_path), gen,
                                    options.ConvertOptions(allow_float_ops=True))
    assert any(op.startswith("COS#") for op in allowed.float_ops)


def test_keras3_model_converts_through_export(tmp_path):
    import keras

    inp = keras.Input((4,), name="feat")
    model = keras.Model(inp, keras.layers.Dense(3)(inp))
    loaded = models.wrap_model(model, "k3")
    data = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)

    def gen():
        for row in data:
            yield {"feat": row[None]}

    result = convert.convert_model(loaded, "int8", str(tmp_path), gen)
    assert result.float_ops == ()
    assert os.path.isdir(tmp_path / "keras3_export")


def test_calibration_generator_errors_surface(loaded, tmp_path):
    source = open_data("test_convert:bad_generator", loaded.inputs)
    gen = sampling.representative_dataset(source, loaded.inputs, [0, 1])
    with pytest.raises(ValueError, match="sample 1, input 'img': contains NaN"):
        convert.convert_model(loaded, "int8", str(tmp_path), gen)


def bad_generator():
    yield np.zeros((8, 8, 1), np.float32)
    yield np.full((8, 8, 1), np.nan, np.float32)


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"old")
    fileio.write_atomic(str(path), b"new content")
    assert path.read_bytes() == b"new content"
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_write_atomic_failure_keeps_old_file(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        fileio.write_atomic(str(path), "not bytes")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_write_atomic_permissions(tmp_path):
    old_umask = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.tflite"
        fileio.write_atomic(str(fresh), b"x")
        assert fresh.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "kept.tflite"
        kept.write_bytes(b"old")
        kept.chmod(0o600)
        fileio.write_atomic(str(kept), b"new")
        assert kept.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old_umask)
