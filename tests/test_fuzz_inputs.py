"""Fuzzed front door, files and arrays: truncated and bit-flipped model files (.keras zip, .h5,
SavedModel folder) and random arrays (shapes, dtypes, NaN/Inf; as .npy/.npz files and in
memory) thrown at ``pipelines.convert`` and ``tflq.convert``/``qat``/``compress``/``preflight``.

Each must end in exit 2 with one ``error:`` line (ValueError from the library), or exit 0
(a result) when the input happens to be valid: never a traceback, never exit 1, and an
existing output folder stays byte-identical. CI runs a few derandomized examples per target
(``fuzz_support.profile``); the ``slow`` twins run ``TFLQ_FUZZ_EXAMPLES`` of them.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
from conftest import snapshot, tiny_data
from fuzz_support import check_cli_outcome, corrupt, prefilled_folder, profile, record, remove_tree, run_cli
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tflq
from pipelines import convert

MODEL_KINDS = ("keras", "h5", "savedmodel")
# Settings that keep a valid conversion to a second or two on the 8x8 model.
FAST_CONVERT = ["--modes", "float32", "--latency_runs", "1", "--num_calibration_samples",
                "10", "--layer_error_samples", "0", "--quiet"]
FAST_JOB = {"convert": dict(latency_runs=1, layer_error_samples=0, progress=False),
            "qat": dict(latency_runs=1, layer_error_samples=0, verbose=0, epochs=1, batch_size=16),
            "compress": dict(latency_runs=1, verbose=0, epochs=1, batch_size=16)}


@pytest.fixture(scope="module")
def fuzz_files(tiny_model, tmp_path_factory):
    """The tiny CNN in each format, and small calibration / evaluation files."""
    folder = tmp_path_factory.mktemp("fuzz_inputs")
    tiny_model.save(folder / "tiny.keras")
    tiny_model.save(folder / "tiny.h5")
    tiny_model.save(folder / "tiny_savedmodel", save_format="tf")
    x, y = tiny_data(40, seed=7)
    np.savez(folder / "calib.npz", x=x[:20], y=y[:20])
    np.savez(folder / "eval.npz", x=x[20:], y=y[20:])
    return {"keras": str(folder / "tiny.keras"), "h5": str(folder / "tiny.h5"),
            "savedmodel": str(folder / "tiny_savedmodel"), "calib": str(folder / "calib.npz"),
            "eval": str(folder / "eval.npz")}


def _damaged_model(kind: str, source: str, data, work: str) -> str:
    """A copy of ``source`` with one file truncated and/or bit-flipped (for a SavedModel, one
    file of the folder, drawn)."""
    if kind != "savedmodel":
        path = os.path.join(work, os.path.basename(source))
        with open(source, "rb") as f:
            original = f.read()
        with open(path, "wb") as f:
            f.write(data.draw(corrupt(original), label="bytes"))
        return path
    path = os.path.join(work, "model")
    shutil.copytree(source, path)
    members = sorted(os.path.relpath(os.path.join(root, name), path)
                     for root, _, names in os.walk(path) for name in names)
    member = os.path.join(path, data.draw(st.sampled_from(members), label="member"))
    with open(member, "rb") as f:
        original = f.read()
    with open(member, "wb") as f:
        f.write(data.draw(corrupt(original), label="bytes") if original else b"\x00")
    return path


def check_damaged_model(kind, fuzz_files, capfd, data):
    work = tempfile.mkdtemp(prefix="fuzz-model-")
    try:
        model = _damaged_model(kind, fuzz_files[kind], data, work)
        out, before = (prefilled_folder() if data.draw(st.booleans(), label="existing out")
                       else (os.path.join(work, "out"), None))
        run = run_cli(convert, ["--model", model, "--data", fuzz_files["calib"], "--eval_data",
                                fuzz_files["eval"], "--out", out, *FAST_CONVERT], capfd)
        check_cli_outcome(f"convert: damaged {kind} model", run, out, before)
        if before is not None:
            remove_tree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("kind", MODEL_KINDS)
@profile("model")
@given(data=st.data())
def test_damaged_model_file(kind, fuzz_files, capfd, data):
    check_damaged_model(kind, fuzz_files, capfd, data)


@pytest.mark.slow
@pytest.mark.parametrize("kind", MODEL_KINDS)
@profile("model", many=True)
@given(data=st.data())
def test_damaged_model_file_many(kind, fuzz_files, capfd, data):
    check_damaged_model(kind, fuzz_files, capfd, data)


# --- arrays: random shapes, dtypes, NaN/Inf -------------------------------------------------

NUMERIC = ("float32", "float64", "float16", "int8", "uint8", "int32", "int64", "bool", "complex64")


@st.composite
def sample_arrays(draw, labels: bool = False):
    """An array of samples for the 8x8x1 model: near the right shape (a few samples, the
    sample shape right or one axis off) or any shape; any numeric dtype, strings or objects;
    NaN and Inf drawn in by the float elements. With ``labels``: an (x, y) pair."""
    n = draw(st.integers(0, 12))
    shape = draw(st.one_of(
        st.just((n, 8, 8, 1)),
        st.sampled_from([(n, 8, 8), (n, 8, 8, 3), (n, 9, 8, 1), (n, 64), (8, 8, 1), (n, 8, 8, 1, 1)]),
        hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6)))
    kind = draw(st.sampled_from([*NUMERIC, "float32", "float32", "str", "object"]))
    if kind == "str":
        x = np.full(shape, "a", dtype="U1")
    elif kind == "object":
        x = np.empty(shape, dtype=object)
    else:
        x = draw(hnp.arrays(kind, shape, elements=_elements(kind, draw)))
    if not labels:
        return x
    m = draw(st.sampled_from([n, n, max(n - 1, 0), n + 1]))
    y = draw(hnp.arrays(draw(st.sampled_from(["int64", "int32", "float32", "int8"])), (m,),
                        elements=st.integers(-2, 4) | st.just(3)))
    return x, y


def _elements(dtype: str, draw):
    if dtype.startswith("float"):
        width = np.finfo(dtype).bits
        return draw(st.sampled_from([
            st.floats(0, 1, width=width),
            st.floats(allow_nan=True, allow_infinity=True, width=width),
            st.sampled_from([0.0, 0.5, float("nan"), float("inf"), -float("inf")])]))
    if dtype.startswith("complex"):
        return st.complex_numbers(max_magnitude=2, width=64)
    return None  # the dtype's whole range


def check_data_file(fuzz_files, capfd, data, suffix):
    work = tempfile.mkdtemp(prefix="fuzz-data-")
    try:
        x, y = data.draw(sample_arrays(labels=True), label="arrays")
        path = os.path.join(work, f"data{suffix}")
        if suffix == ".npy":
            np.save(path, x, allow_pickle=True)
        else:
            keys = data.draw(st.sampled_from([("x", "y"), ("x",), ("images", "labels"), ("a", "b")]))
            np.savez(path, **dict(zip(keys, (x, y), strict=False)))
        role = data.draw(st.sampled_from(["--data", "--eval_data"]), label="role")
        files = {"--data": fuzz_files["calib"], "--eval_data": fuzz_files["eval"], role: path}
        out, before = prefilled_folder()
        run = run_cli(convert, ["--model", fuzz_files["keras"], "--data", files["--data"],
                                "--eval_data", files["--eval_data"], "--out", out, *FAST_CONVERT],
                      capfd)
        check_cli_outcome(f"convert: random {suffix} {role[2:]}", run, out, before)
        remove_tree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
@profile("cheap")
@given(data=st.data())
def test_random_data_file(suffix, fuzz_files, capfd, data):
    check_data_file(fuzz_files, capfd, data, suffix)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".npy", ".npz"])
@profile("cheap", many=True)
@given(data=st.data())
def test_random_data_file_many(suffix, fuzz_files, capfd, data):
    check_data_file(fuzz_files, capfd, data, suffix)


# --- the library's front door: in-memory arrays ---------------------------------------------

def _api_call(entry: str, model, x, y, ex, ey, out):
    if entry == "convert":
        return tflq.convert(model, (x, y) if y is not None else x, (ex, ey), modes=("float32",),
                            num_calibration_samples=10, out=out, **FAST_JOB["convert"])
    if entry == "preflight":
        return tflq.preflight(model, x, (ex, ey), out=out, num_calibration_samples=10)
    train = (x, y) if y is not None else x
    if entry == "qat":
        return tflq.qat(model, train, (ex, ey), out=out, **FAST_JOB["qat"])
    return tflq.compress(model, train, (ex, ey), out=out, quantization="ptq",
                         num_calibration_samples=10, **FAST_JOB["compress"])


def check_api(entry, tiny_model, data):
    pair = data.draw(st.booleans(), label="with labels")
    x, y = data.draw(sample_arrays(labels=True), label="data") if pair else (
        data.draw(sample_arrays(), label="data"), None)
    ex, ey = tiny_data(12, seed=3)
    if data.draw(st.booleans(), label="fuzz eval_data instead"):
        x, y, ex, ey = ex, ey, x, y
    out, before = prefilled_folder()
    try:
        try:
            result = _api_call(entry, tiny_model, x, y, ex, ey, out)
        except ValueError as e:
            record(f"tflq.{entry}: random arrays", "ValueError")
            assert str(e).strip() and "Unknown option" not in str(e), e  # not this test's own call
            assert snapshot(out) == before, f"{entry} raised {e!r} after writing"
        else:
            record(f"tflq.{entry}: random arrays", "result")
            assert result.report["modes"] if entry != "preflight" else result.report["findings"] is not None
    finally:
        remove_tree(out)


API_ENTRIES = ("convert", "preflight")  # a valid draw converts or checks in under a second
API_TRAINING = ("qat", "compress")  # a valid draw trains an epoch


@pytest.mark.parametrize("entry", API_ENTRIES)
@profile("cheap")
@given(data=st.data())
def test_library_entry_points_with_random_arrays(entry, tiny_model, data):
    check_api(entry, tiny_model, data)


@pytest.mark.parametrize("entry", API_TRAINING)
@profile("job")
@given(data=st.data())
def test_library_training_entry_points_with_random_arrays(entry, tiny_model, data):
    check_api(entry, tiny_model, data)


@pytest.mark.slow
@pytest.mark.parametrize("entry", API_ENTRIES + API_TRAINING)
@profile("cheap", many=True)
@given(data=st.data())
def test_library_entry_points_with_random_arrays_many(entry, tiny_model, data):
    check_api(entry, tiny_model, data)
