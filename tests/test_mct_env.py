"""MCT's own virtualenv (benchmarks.mct_env): versions read, wrong folders refused untouched,
a failed install leaves nothing behind."""

import os
import sys

import pytest

from benchmarks import mct_env


def test_installed_versions_reads_what_the_interpreter_has():
    import tensorflow as tf

    found = mct_env.installed_versions(sys.executable)
    assert found["tensorflow"] == tf.__version__
    with pytest.raises(ImportError):
        import model_compression_toolkit  # noqa: F401 - not in tflq's environment
    assert found["model-compression-toolkit"] is None


def test_a_python_that_does_not_run_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="Cannot run"):
        mct_env.installed_versions(str(tmp_path / "python"))


def test_a_virtualenv_with_other_versions_is_refused_and_left_unchanged(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")  # tflq's TensorFlow, no MCT
    before = sorted(p.name for p in (venv / "bin").iterdir())
    with pytest.raises(ValueError, match=r"has \{.*'model-compression-toolkit': None.*needs "
                                         r".*'2.6.1'.*left unchanged"):
        mct_env.ensure(str(venv))
    assert sorted(p.name for p in (venv / "bin").iterdir()) == before


def test_a_folder_without_python_is_refused_and_left_unchanged(tmp_path):
    (tmp_path / "data.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a virtualenv"):
        mct_env.ensure(str(tmp_path))
    assert os.listdir(tmp_path) == ["data.txt"]


def test_a_failed_install_leaves_no_half_made_virtualenv(tmp_path):
    lines = []
    venv = tmp_path / "venv"
    with pytest.raises(ValueError, match=r"Making MCT's virtualenv failed \(nothing left at .*"
                                         r"pip could not install"):
        mct_env.ensure(str(venv), pip_args=("--isolated", "--no-index"), log=lines.append)
    assert not venv.exists()
    assert len(lines) == 1 and "tensorflow==2.15.1" in lines[0]
