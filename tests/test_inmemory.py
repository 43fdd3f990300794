"""In-memory data and models (tflq.inmemory, open_data, load_arrays, load_model): every data
kind yields the same checked samples as the .npz file of the same arrays, bad inputs fail
with the file's own messages, Datasets and functions stream, and a model object's
fingerprint is the sha256 of its weights."""

import dataclasses
import hashlib
import re

import keras
import numpy as np
import pytest

from tests.conftest import tiny_data
from tflq import inmemory, sampling
from tflq.data import open_data
from tflq.jobs.common import job_settings
from tflq.jobs.convert import ConvertJob
from tflq.models import load_model, tf, tf_keras
from tflq.signature import TensorSpec

SPECS = (TensorSpec("img", (8, 8, 1), "float32"),)
N = 12


def _arrays():
    return tiny_data(N, seed=3)


def _kinds():
    x, y = _arrays()

    def samples():
        for i in range(N):
            yield {"img": x[i]}, int(y[i])

    return {
        "array": (x, False),
        "dict by input name": ({"img": x, "y": y}, True),
        "dict with x": ({"x": x, "y": y}, True),
        "(x, y) tuple": ((x, y), True),
        "(dict, y) tuple": (({"img": x}, y), True),
        "dataset": (tf.data.Dataset.from_tensor_slices((x, y)), True),
        "batched dataset": (tf.data.Dataset.from_tensor_slices((x, y)).batch(5), True),
        "dict dataset, squeezed channel": (
            tf.data.Dataset.from_tensor_slices({"img": x[..., 0]}).batch(4), False),
        "unknown-cardinality dataset": (
            tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True), True),
        "function": (samples, True),
    }


@pytest.fixture()
def npz_source(tmp_path):
    x, y = _arrays()
    path = tmp_path / "same.npz"
    np.savez(path, x=x, y=y)
    return open_data(str(path), SPECS)


@pytest.mark.parametrize("kind", sorted(_kinds()))
def test_every_kind_yields_the_samples_of_the_same_npz_file(kind, npz_source):
    data, labelled = _kinds()[kind]
    source = open_data(data, SPECS)
    assert len(source) == N
    assert source.has_labels == labelled
    indices = [0, 3, 4, 11]
    got = list(sampling.iter_batches(source, SPECS, 3, indices))
    want = list(sampling.iter_batches(npz_source, SPECS, 3, indices))
    assert len(got) == len(want) == 2
    for (gx, gy), (wx, wy) in zip(got, want, strict=True):
        np.testing.assert_array_equal(gx["img"], wx["img"])  # same values, channel added
        assert gx["img"].dtype == np.float32
        if labelled:
            np.testing.assert_array_equal(gy, wy)
        else:
            assert gy is None


def _message(error: Exception, source: str) -> str:
    return str(error).replace(source, "SOURCE")


@pytest.mark.parametrize("damage", ["shape", "nan", "integers"])
def test_sample_errors_are_the_files_errors(damage, tmp_path):
    x, y = _arrays()
    if damage == "shape":
        x = x[:, :7, :7]
    elif damage == "nan":
        x[5, 2, 2, 0] = np.nan
    else:
        x = (x * 255).astype(np.uint8)
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=y)
    errors = {}
    for name, data in (("file", str(path)), ("memory", (x, y)),
                       ("dataset", tf.data.Dataset.from_tensor_slices((x, y)).batch(4))):
        source = open_data(data, SPECS)
        with pytest.raises(ValueError) as info:
            sampling.scan(source, SPECS, None)
        errors[name] = _message(info.value, source.description)
    assert errors["memory"] == errors["file"] == errors["dataset"]
    expected = {"shape": r"shape \(7, 7, 1\) does not match", "nan": r"sample 5, .*contains NaN",
                "integers": "dtype uint8 but the model expects float32"}[damage]
    assert re.search(expected, errors["memory"])
    assert "<numpy arrays (12 samples)>" in str(
        pytest.raises(ValueError, sampling.scan, open_data((x, y), SPECS), SPECS, None).value)


def test_range_check_names_the_in_memory_source():
    x, y = _arrays()
    reference = sampling.scan(open_data(x, SPECS), SPECS, None)
    with pytest.raises(ValueError, match=r"<numpy arrays \(12 samples\)>: sample 0, input 'img': "
                                         r"values in .* lie far outside"):
        sampling.scan(open_data(x * 255, SPECS), SPECS, None, reference=reference,
                      reference_name="eval")


def test_wrong_dict_keys_and_lengths_give_the_files_messages(tmp_path):
    x, y = _arrays()
    path = tmp_path / "keys.npz"
    np.savez(path, a=x, y=y)
    with pytest.raises(ValueError) as from_file:
        open_data(str(path), SPECS)
    with pytest.raises(ValueError) as from_memory:
        open_data({"a": x, "y": y}, SPECS)
    tail = "has no array for model input(s) ['img']. Expected 'x' (single input) or one array " \
           "per input name ['img']. Received arrays: ['a', 'y']"
    assert str(from_file.value).endswith(tail) and str(from_memory.value).endswith(tail)
    np.savez(path, x=x, y=y[:-1])
    with pytest.raises(ValueError, match=r"arrays differ in length: \{'img': 12, 'y': 11\}"):
        open_data((x, y[:-1]), SPECS)
    with pytest.raises(ValueError, match=r"arrays differ in length: \{'img': 12, 'y': 11\}"):
        open_data(str(path), SPECS)


@pytest.mark.parametrize("data, match", [
    ((i for i in range(3)), "generator, which can be read only once"),
    (tf.data.Dataset.range(3).repeat(), "infinite"),
    ((np.zeros((3, 8, 8, 1), np.float32), np.eye(3)), r"class indices of shape \(N,\)"),
    ((np.zeros((3, 8, 8, 1), np.float32), np.zeros(3), np.zeros(3)), "tuple of 3 items"),
    ({"img": np.zeros((3, 8, 8, 1), np.float32)} | {"y": np.zeros(3)}, None),
    (object(), "Expected data as a path, 'module:function', numpy arrays"),
    (np.zeros((0, 8, 8, 1), np.float32), "is empty"),
    (lambda: 5, "must return an iterable of samples"),
])
def test_bad_in_memory_data_is_refused(data, match):
    if match is None:  # the control: the same dict with int labels is fine
        assert len(open_data(data, SPECS)) == 3
        return
    with pytest.raises(ValueError, match=match):
        open_data(data, SPECS)


def test_a_multi_input_model_needs_a_dict():
    specs = (TensorSpec("a", (2,), "float32"), TensorSpec("b", (3,), "float32"))
    with pytest.raises(ValueError, match=r"holds one array but the model has inputs \['a', 'b'\]"):
        open_data(np.zeros((4, 2), np.float32), specs)
    source = open_data({"a": np.ones((4, 2), np.float32), "b": np.zeros((4, 3), np.float32)},
                       specs)
    (_, inputs, label), = source.iter_samples([2])
    assert inputs["a"].shape == (2,) and inputs["b"].shape == (3,) and label is None


def test_datasets_and_functions_stream():
    pulled = []

    def rows():
        for i in range(1000):
            pulled.append(i)
            yield np.full((8, 8, 1), i / 1000, np.float32)

    source = open_data(rows, SPECS)
    assert len(source) == 1000 and max(pulled) == 999  # counted in one pass (open_data checks)
    pulled.clear()
    first = [i for i, _, _ in source.iter_samples([0, 2])]
    assert first == [0, 2] and max(pulled) < 10  # stopped after the last wanted sample
    dataset = tf.data.Dataset.from_generator(
        rows, output_signature=tf.TensorSpec((8, 8, 1), tf.float32)).batch(10)
    pulled.clear()
    source = open_data(dataset, SPECS)
    assert source.description == "<tf.data.Dataset>"
    assert len(source) == 1000  # unknown cardinality: counted in one streaming pass
    pulled.clear()
    (index, inputs, _), = source.iter_samples([15])
    assert index == 15 and inputs["img"][0, 0, 0] == pytest.approx(0.015)
    assert max(pulled) < 200  # a few batches (and tf.data's prefetch), not all 1000


def test_load_arrays_from_memory_names_the_source():
    x, y = _arrays()
    got_x, got_y = sampling.load_arrays((x, y), SPECS, limit=5, seed=1)
    picked = sampling.sample_indices(N, 5, 1)
    np.testing.assert_array_equal(got_x["img"], x[picked])
    np.testing.assert_array_equal(got_y, y[picked])
    with pytest.raises(ValueError, match=r"Training data '<numpy arrays \(12 samples\)>' has no "
                                         "labels"):
        sampling.load_arrays(x, SPECS, labelled="Training data")


def _weights_sha(model) -> str:
    digest = hashlib.sha256()
    for w in model.get_weights():
        w = np.ascontiguousarray(w)
        digest.update(f"{w.dtype.str}{w.shape}".encode() + w.tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("api", [tf_keras, keras], ids=["tf_keras", "keras3"])
def test_model_objects_load_with_a_weight_fingerprint(api):
    inp = api.Input((8, 8, 1), name="img")
    model = api.Model(inp, api.layers.Dense(2)(api.layers.Flatten()(inp)), name="my net")
    loaded = load_model(model)
    assert loaded.source == "<in-memory model>"
    assert loaded.flavor == ("tf_keras" if api is tf_keras else "keras3")
    assert loaded.stem == "my_net"
    assert loaded.fingerprint() == _weights_sha(model)
    before = loaded.fingerprint()
    model.set_weights([w + 1 for w in model.get_weights()])
    assert loaded.fingerprint() != before
    assert load_model(loaded) is loaded


def test_non_models_are_refused():
    with pytest.raises(ValueError, match=r"Expected a tf_keras or Keras 3 model from "
                                         r"'<in-memory model>'. Received: builtins.dict"):
        load_model({"not": "a model"})
    with pytest.raises(ValueError, match="Expected a model path"):
        load_model("")


def test_jobs_describe_in_memory_inputs_and_refuse_to_serialize(tiny_model):
    x, y = _arrays()
    job = ConvertJob(model=tiny_model, data=(x, y), out=None, eval_data=x)
    settings = job_settings(job)
    assert settings["model"] == "<in-memory model>"
    assert settings["data"] == "<numpy arrays (12 samples)>"
    assert settings["gates"] == {"max_accuracy_drop": None, "min_agreement": None, "gate": ()}
    with pytest.raises(ValueError, match=r"ConvertJob.to_dict: model=<in-memory model>, data="
                                         r"<numpy arrays \(12 samples\)>, eval_data=.* is held in "
                                         "memory"):
        job.to_dict()
    paths = ConvertJob(model="m.keras", data="d.npz", out="o")
    assert ConvertJob.from_dict(paths.to_dict()) == paths
    assert job_settings(paths) == dataclasses.asdict(paths)  # path jobs: settings as before
    assert inmemory.describe(tf.data.Dataset.range(2)) == "<tf.data.Dataset>"
    assert inmemory.describe(_kinds) == "<generator _kinds>"
