"""Shared flag definitions across pipeline scripts."""

import os

import pytest
from absl import flags

from pipelines import common


def test_identical_definition_is_shared_and_conflict_is_refused():
    a = common.define("integer", "tflq_test_shared", 3, "help a")
    b = common.define("integer", "tflq_test_shared", 3, "help b")
    assert a.value == b.value == 3
    flags.FLAGS.tflq_test_shared = 7
    assert b.value == 7
    with pytest.raises(ValueError, match="defined twice with different kinds or defaults"):
        common.define("integer", "tflq_test_shared", 4, "other default")
    with pytest.raises(ValueError, match="defined twice"):
        common.define("string", "tflq_test_shared", 3, "other kind")


def test_every_pipeline_script_imports_into_one_process():
    import importlib
    import os

    folder = os.path.dirname(common.__file__)
    names = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py")
    for name in names:
        importlib.import_module(f"pipelines.{name}")
    assert {"convert", "batch", "qat", "device_benchmark"} <= set(names)


def test_require_names_the_first_missing_flag():
    common.require(model="m.keras", data="d.npz")
    with pytest.raises(ValueError, match=r"^--train_data is required\.$"):
        common.require(model="m.keras", train_data=None, eval_data=None)


def test_build_settings_job_checks_required_flags_and_defaults_the_output_folder(tmp_path):
    from absl.testing import flagsaver

    from tflq.jobs.qat import QATJob

    holders = common.define_settings(QATJob)  # the flags pipelines.qat defines, shared
    required = ("model", "train_data", "eval_data")
    given = {"model": "m.keras", "train_data": "t.npz", "eval_data": "e.npz"}
    with flagsaver.flagsaver(epochs=3, learning_rate=0.01, **given):
        assert common.output_folder_of(holders, "fallback") == "fallback"
        job = common.build_settings_job(QATJob, holders, "fallback", required=required, verbose=0)
    assert job == QATJob(out="fallback", epochs=3, learning_rate=0.01, verbose=0, **given)
    out = str(tmp_path / "o")
    with flagsaver.flagsaver(out=out, **given):
        assert common.output_folder_of(holders, "fallback") == out
        assert common.build_settings_job(QATJob, holders, "fallback", required=required).out == out
    with flagsaver.flagsaver(model="m.keras", eval_data="e.npz"):
        with pytest.raises(ValueError, match=r"^--train_data is required\.$"):
            common.build_settings_job(QATJob, holders, "fallback", required=required)
    with flagsaver.flagsaver(eval_data="e.npz"):  # the first missing one, in the given order
        with pytest.raises(ValueError, match=r"^--model is required\.$"):
            common.build_settings_job(QATJob, holders, "fallback", required=required)


def test_fashion_mnist_image_files(tmp_path):
    from conftest import fashion_file

    from benchmarks.fashion_mnist import image_files

    train, test = image_files(os.path.dirname(fashion_file("train-images-idx3-ubyte.gz")))
    assert train.endswith("train-images-idx3-ubyte.gz") and test.endswith(
        "t10k-images-idx3-ubyte.gz") and os.path.exists(test)
    with pytest.raises(ValueError, match="apt-get install -y dataset-fashion-mnist"):
        image_files(str(tmp_path))
