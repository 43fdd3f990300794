"""The exit-code contract of every command (0 ok, 1 internal error, 2 bad input or flags,
3 a gate failed), the front door (flag parsing, --help, --version) and the error classes.

Exit 0 and 3 of each command are tested beside its features (test_cli_convert, test_cli_qat,
test_compress, test_batch, test_preflight, test_android, test_android_demo); this file adds
the flag errors, the internal errors (exit 1) and the bad inputs that are not ValueErrors.
"""

import ast
import errno
import os
import re
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest
from absl.testing import flagsaver
from conftest import REPO, snapshot, tiny_data

from pipelines import batch, common, compress, convert, demo_assets, device_benchmark, preflight, qat

COMMANDS = {"convert": convert, "qat": qat, "compress": compress, "batch": batch,
            "preflight": preflight, "device_benchmark": device_benchmark,
            "demo_assets": demo_assets}
# One integer flag of each command, for the bad-value case.
INTEGER_FLAG = {"convert": "num_calibration_samples", "qat": "epochs", "compress": "epochs",
                "batch": "workers", "preflight": "seed", "device_benchmark": "num_runs",
                "demo_assets": "num_samples"}
ENUM_FLAG = {"convert": ("normalize", "0_2"), "qat": ("strategy", "gradiant")}


def run_module(name, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", f"pipelines.{name}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(stderr, pattern, prefix="error: "):
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), stderr
    assert re.search(pattern, lines[0]), lines[0]


# --- exit 2: every flag parsing error, before anything is written -------------------------

CASES = [(name, "unknown") for name in COMMANDS] + [(name, "integer") for name in COMMANDS] \
    + [(name, "enum") for name in ENUM_FLAG]


@pytest.mark.parametrize("name, case", CASES)
def test_flag_parsing_errors_exit_2_with_one_error_line(tmp_path, name, case):
    out = tmp_path / "out"
    if case == "unknown":
        args, pattern = ["--num_calibraton_samples=5"], "Unknown command line flag 'num_calibraton_samples'"
    elif case == "integer":
        flag = INTEGER_FLAG[name]
        args, pattern = [f"--{flag}", "abc"], f"--{flag}=abc: invalid literal for int"
    else:
        flag, value = ENUM_FLAG[name]
        args, pattern = [f"--{flag}={value}"], f"--{flag}={value}: value should be one of"
    result = run_module(name, *args, "--assets" if name == "demo_assets" else "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert_one_error_line(result.stderr, pattern)
    assert result.stdout == "" and not out.exists()


def test_stray_words_exit_2(tmp_path):
    result = run_module("qat", "train.npz", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "Unexpected arguments: train.npz")


# --- --help and --version -----------------------------------------------------------------

def _example_lines(module) -> list[str]:
    """The usage example lines of a command's docstring as they stand in its source file: a
    line starting with a command and every line continued from it with a backslash."""
    source = open(module.__file__).read()
    doc_node = ast.parse(source).body[0]
    doc_source = ast.get_source_segment(source, doc_node)
    lines, continued = [], False
    for line in doc_source.splitlines():
        stripped = line.strip()
        if continued or stripped.startswith(("python -m pipelines.", "tflq-")):
            lines.append(line.rstrip())
        continued = stripped.endswith("\\")
    return lines


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_usage_examples_as_written(name):
    module = COMMANDS[name]
    examples = _example_lines(module)
    assert examples, f"{name}: no usage example in the docstring"
    help_text = common.help_text(module)
    for line in examples:
        assert line in help_text.splitlines(), f"{name}: example line broken in --help: {line!r}"
    continued = [ln for ln in examples if ln.endswith("\\")]
    if name in ("convert", "qat", "compress", "device_benchmark", "preflight"):
        assert continued  # these examples span lines: the check above covers a continuation
    assert "--verbose" in help_text and "--version" in help_text


def test_help_exits_0_on_stdout():
    result = run_module("convert", "--help")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("Convert a Keras model to TFLite")
    assert "  --modes: Comma list of converter modes" in result.stdout


EXPECTED_VERSIONS = {"tflq": "tflq", "tensorflow": "tensorflow", "tf_keras": "tf-keras",
                     "keras": "keras", "tfmot": "tensorflow-model-optimization",
                     "ai-edge-litert": "ai-edge-litert", "numpy": "numpy"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_version_prints_the_stack_and_exits_0(name):
    result = run_module(name, "--version")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    printed = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    for shown, dist in EXPECTED_VERSIONS.items():
        assert printed[shown] == metadata.version(dist), shown
    assert printed["python"] == ".".join(map(str, sys.version_info[:3]))


# --- exit 1: internal errors ------------------------------------------------------------

def _prefilled(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keep.txt").write_text("from an earlier run\n")
    return snapshot(folder)


def assert_internal_error(code, err, out, before, message):
    """Exit 1, one ``internal error:`` line, the traceback in out/error.log, nothing else."""
    assert code == 1, err
    assert_one_error_line(err, message, prefix="internal error: ")
    assert "error.log" in err
    log = (out / "error.log").read_text()
    assert log.startswith("Traceback") and message.split(": ")[-1] in log
    after = snapshot(out)
    assert after.pop("error.log")
    assert after == before


def _boom(*args, **kwargs):
    raise RuntimeError("boom from a test")


@pytest.fixture()
def tiny_files(tiny_keras_path, tmp_path):
    x, y = tiny_data(60, seed=4)
    np.savez(tmp_path / "calib.npz", x=x[:30], y=y[:30])
    np.savez(tmp_path / "eval.npz", x=x[30:], y=y[30:])
    return {"model": tiny_keras_path, "data": str(tmp_path / "calib.npz"),
            "eval_data": str(tmp_path / "eval.npz"), "latency_runs": 2, "quiet": True,
            "num_calibration_samples": 10}


class FakeConverter:
    """Stands in for a TFLiteConverter whose convert() raises ``error``."""

    def __init__(self, error):
        self.error = error

    def convert(self):
        raise self.error


def _run(module, capsys, **values):
    with flagsaver.flagsaver(**values):
        code = module.main(["cmd"])
    captured = capsys.readouterr()
    return code, captured.err


def test_convert_memory_error_in_the_converter_is_internal(capsys, tmp_path, tiny_files,
                                                           monkeypatch):
    from tflq import models

    out = tmp_path / "out"
    before = _prefilled(out)
    monkeypatch.setattr(models.LoadedModel, "make_converter",
                        lambda self, workdir: FakeConverter(MemoryError("converter ran out")))
    code, err = _run(convert, capsys, **tiny_files, modes="float32", out=str(out))
    assert_internal_error(code, err, out, before, "MemoryError: converter ran out")


def test_convert_internal_error_with_verbose_prints_the_traceback(capsys, tmp_path, tiny_files,
                                                                  monkeypatch):
    from tflq import interpreter

    monkeypatch.setattr(interpreter, "measure_latency", _boom)
    out = tmp_path / "out"
    code, err = _run(convert, capsys, **tiny_files, modes="float32", out=str(out), verbose=True)
    assert code == 1
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("internal error: ")
    assert not out.exists()  # the run created nothing that stays


def test_convert_bug_inside_tflq_during_calibration_is_internal(capsys, tmp_path, tiny_files,
                                                                monkeypatch):
    from tflq import sampling

    # conform_sample returning None makes tflq's own generator fail (AttributeError in
    # tflq/sampling.py) while the converter calibrates: our bug, not the user's input.
    monkeypatch.setattr(sampling, "conform_sample", lambda *args: None)
    out = tmp_path / "out"
    before = _prefilled(out)
    code, err = _run(convert, capsys, **tiny_files, modes="int8", out=str(out))
    assert_internal_error(code, err, out, before, "AttributeError")


def test_qat_failure_after_fit_is_internal_and_drops_the_checkpoint(capsys, tmp_path,
                                                                    tiny_files, monkeypatch):
    from tflq.ptq import convert as ptq_convert

    monkeypatch.setattr(ptq_convert, "convert_qat", _boom)
    out = tmp_path / "out"
    before = _prefilled(out)
    code, err = _run(qat, capsys, model=tiny_files["model"], train_data=tiny_files["data"],
                     eval_data=tiny_files["eval_data"], out=str(out), epochs=1, batch_size=16)
    assert_internal_error(code, err, out, before, "RuntimeError: boom from a test")
    assert not (out / ".qat_backup").exists()


def test_qat_job_failure_after_fit_drops_the_checkpoint_without_the_cli(tmp_path, tiny_files,
                                                                         monkeypatch):
    from tflq.jobs import qat as qat_job
    from tflq.ptq import convert as ptq_convert

    monkeypatch.setattr(ptq_convert, "convert_qat", _boom)
    job = qat_job.QATJob(model=tiny_files["model"], train_data=tiny_files["data"],
                         eval_data=tiny_files["eval_data"], out=str(tmp_path / "out"), epochs=1,
                         batch_size=16, verbose=0)
    with pytest.raises(RuntimeError, match="boom"):
        qat_job.run_qat_job(job)
    assert not (tmp_path / "out").exists()  # created by the checkpoint, removed with it


def test_compress_internal_error(capsys, tmp_path, tiny_files, monkeypatch):
    from tflq.jobs import compress as compress_job

    monkeypatch.setattr(compress_job, "evaluate_trained", _boom)
    out = tmp_path / "out"
    before = _prefilled(out)
    code, err = _run(compress, capsys, model=tiny_files["model"], train_data=tiny_files["data"],
                     eval_data=tiny_files["eval_data"], out=str(out), epochs=1, batch_size=16,
                     quantization="ptq", num_calibration_samples=10)
    assert_internal_error(code, err, out, before, "RuntimeError: boom from a test")


def test_batch_internal_error(capsys, tmp_path, monkeypatch):
    from tflq import batch as batch_lib

    monkeypatch.setattr(batch_lib, "load_spec", _boom)
    spec = tmp_path / "jobs.toml"
    spec.write_text("[[jobs]]\nmodel = 'm.keras'\n")
    out = tmp_path / "out"
    before = _prefilled(out)
    code, err = _run(batch, capsys, spec=str(spec), out=str(out), quiet=True)
    assert_internal_error(code, err, out, before, "RuntimeError: boom from a test")


def test_preflight_internal_error(capsys, tmp_path, tiny_files, monkeypatch):
    from tflq.ptq import preflight as preflight_checks

    monkeypatch.setattr(preflight_checks, "run", _boom)
    out = tmp_path / "out"
    before = _prefilled(out)
    code, err = _run(preflight, capsys, model=tiny_files["model"], out=str(out))
    assert_internal_error(code, err, out, before, "RuntimeError: boom from a test")


def test_preflight_internal_error_without_out_names_a_temporary_log(capsys, tiny_files,
                                                                    monkeypatch):
    from tflq.ptq import preflight as preflight_checks

    monkeypatch.setattr(preflight_checks, "run", _boom)
    code, err = _run(preflight, capsys, model=tiny_files["model"], out=None)
    assert code == 1
    path = re.search(r"traceback in (\S+?);", err).group(1)
    try:
        assert "RuntimeError: boom from a test" in open(path).read()
    finally:
        os.unlink(path)


def _elf(path):
    header = bytearray(b"\x7fELF\x02\x01\x01" + bytes(57))
    header[18:20] = (183).to_bytes(2, "little")  # aarch64
    path.write_bytes(bytes(header))
    path.chmod(0o755)
    return str(path)


def test_device_benchmark_internal_error(capsys, tmp_path, monkeypatch):
    from tflq import android

    monkeypatch.setattr(android, "run_matrix", _boom)
    (tmp_path / "m.tflite").write_bytes(b"model")
    out = tmp_path / "out"
    before = _prefilled(out)
    code, err = _run(device_benchmark, capsys, model=str(tmp_path / "m.tflite"), out=str(out),
                     benchmark_binary=_elf(tmp_path / "benchmark_model"), report=None)
    assert_internal_error(code, err, out, before, "RuntimeError: boom from a test")


def _demo_report(tmp_path, mode_entry=None):
    import json

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "m_int8.tflite").write_bytes(b"int8 model bytes")
    entry = mode_entry if mode_entry is not None else {"mode": "int8", "path": "m_int8.tflite"}
    (folder / "report.json").write_text(json.dumps(
        {"modes": [entry], "gates": {"passed": True, "failures": []}}))
    return str(folder / "report.json")


def test_demo_assets_internal_error_keeps_the_log_out_of_the_assets(capsys, tmp_path,
                                                                     monkeypatch):
    from tflq import fileio

    monkeypatch.setattr(fileio, "write_atomic", _boom)
    assets = tmp_path / "assets"
    before = _prefilled(assets)
    code, err = _run(demo_assets, capsys, report=_demo_report(tmp_path), mode="int8",
                     assets=str(assets), num_samples=1)
    assert code == 1
    assert_one_error_line(err, "RuntimeError: boom from a test", prefix="internal error: ")
    assert snapshot(assets) == before  # no error.log shipped inside the app
    path = re.search(r"traceback in (\S+?);", err).group(1)
    try:
        assert "Traceback" in open(path).read()
    finally:
        os.unlink(path)


# --- exit 2: bad inputs that are not ValueErrors --------------------------------------------

def test_disk_error_while_writing_exits_2_naming_the_file(capsys, tmp_path, tiny_files,
                                                          monkeypatch):
    from tflq.jobs import common as jobs_common

    real, calls = jobs_common.write_atomic, []

    def fail_second(path, content):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real(path, content)

    monkeypatch.setattr(jobs_common, "write_atomic", fail_second)
    out = tmp_path / "out"
    before = _prefilled(out)
    code, err = _run(convert, capsys, **tiny_files, modes="float32", out=str(out))
    assert code == 2
    assert_one_error_line(err, re.escape(f"cannot access {calls[1]!r}: No space left on device"))
    assert snapshot(out) == before  # the first file, written before the error, is gone again


def failing_factory():
    raise RuntimeError("the factory's own bug")


def failing_generator():
    yield np.zeros((8, 8, 1), np.float32)
    raise KeyError("sample 1")


def test_a_factory_raising_anything_exits_2_naming_it(capsys, tmp_path, tiny_files):
    out = tmp_path / "out"
    code, err = _run(convert, capsys, **{**tiny_files, "model": "test_cli_contract:failing_factory"},
                     modes="float32", out=str(out))
    assert code == 2
    assert_one_error_line(err, "Model factory 'test_cli_contract:failing_factory' raised "
                               "RuntimeError: the factory's own bug")
    code, err = _run(convert, capsys, **{**tiny_files, "data": "test_cli_contract:failing_generator",
                                         "eval_data": None}, modes="float32", out=str(out))
    assert code == 2
    assert_one_error_line(err, "Data generator 'test_cli_contract:failing_generator' raised KeyError")
    assert not out.exists()


def test_converter_refusal_is_bad_input(capsys, tmp_path, tiny_files, monkeypatch):
    from tensorflow.lite.python.convert_phase import ConverterError

    from tflq import models

    monkeypatch.setattr(models.LoadedModel, "make_converter", lambda self, workdir: FakeConverter(
        ConverterError("'tfl.custom' op is neither a custom op nor a flex op")))
    out = tmp_path / "out"
    before = _prefilled(out)
    code, err = _run(convert, capsys, **tiny_files, modes="float32", out=str(out))
    assert code == 2
    assert_one_error_line(err, "Conversion to float32 failed: ConverterError: 'tfl.custom' op")
    assert snapshot(out) == before


def test_demo_assets_missing_labels_file_exits_2(capsys, tmp_path):
    assets = tmp_path / "assets"
    code, err = _run(demo_assets, capsys, report=_demo_report(tmp_path), mode="int8",
                     assets=str(assets), num_samples=1, labels=str(tmp_path / "labels.txt"))
    assert code == 2
    assert_one_error_line(err, "Labels file not found: .*labels.txt.*--labels")
    assert not assets.exists()


def test_demo_assets_mode_without_path_exits_2(capsys, tmp_path):
    code, err = _run(demo_assets, capsys, report=_demo_report(tmp_path, {"mode": "int8"}),
                     mode="int8", assets=str(tmp_path / "assets"), num_samples=1)
    assert code == 2
    assert_one_error_line(err, "the 'int8' model has no 'path'")


def test_device_benchmark_report_mode_without_path_exits_2(capsys, tmp_path):
    report = _demo_report(tmp_path, {"mode": "int8", "size_bytes": 3})
    before = snapshot(tmp_path)
    code, err = _run(device_benchmark, capsys, report=report, model=None,
                     benchmark_binary=_elf(tmp_path / "benchmark_model"))
    assert code == 2
    assert_one_error_line(err, r"modes\[0\] has no 'path'")
    after = snapshot(tmp_path)
    after.pop("benchmark_model")
    assert after == before


def test_device_benchmark_non_executable_adb_exits_2(capsys, tmp_path):
    adb = tmp_path / "adb"
    adb.write_text("#!/bin/sh\necho never runs\n")
    adb.chmod(0o644)
    (tmp_path / "m.tflite").write_bytes(b"model")
    code, err = _run(device_benchmark, capsys, model=str(tmp_path / "m.tflite"), report=None,
                     benchmark_binary=_elf(tmp_path / "benchmark_model"), adb=str(adb),
                     out=str(tmp_path / "out"))
    assert code == 2
    assert_one_error_line(err, "adb '.*adb' cannot be run: Permission denied")
    assert not (tmp_path / "out").exists()


def test_batch_ray_backend_without_ray_exits_2_before_writing(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    spec = tmp_path / "jobs.toml"
    spec.write_text("[[jobs]]\nmodel = 'm.keras'\ndata = 'd.npz'\n")
    out = tmp_path / "out"
    code, err = _run(batch, capsys, spec=str(spec), out=str(out), backend="ray", quiet=True)
    assert code == 2
    assert_one_error_line(err, r"--backend ray needs Ray, which is not installed here")
    assert not out.exists()


def test_internal_error_log_keeps_what_was_captured_until_the_error(capfd, tmp_path,
                                                                     tiny_files, monkeypatch):
    from tflq import console
    from tflq.ptq import preflight as preflight_checks

    def chatter_then_bug(*args):
        os.write(2, b"C++ chatter before the bug\n")  # as TensorFlow's C++ code would
        raise RuntimeError("boom from a test")

    monkeypatch.setattr(preflight_checks, "run", chatter_then_bug)
    out = tmp_path / "out"
    with console.OutputCapture() as capture:  # what run_main wraps main in
        with flagsaver.flagsaver(model=tiny_files["model"], out=str(out)):
            code = preflight.main(["preflight"])
    assert code == 1 and capture.kept  # run_main then writes no tflq.log
    err = capfd.readouterr().err
    assert_one_error_line(err, "RuntimeError: boom from a test", prefix="internal error: ")
    log = (out / "error.log").read_text()
    assert log.index("RuntimeError: boom") < log.index("C++ chatter before the bug")
    assert os.listdir(out) == ["error.log"]


def test_a_multi_line_parser_message_becomes_one_error_line(capsys, tmp_path):
    # Found by the spec fuzzer: PyYAML puts the position on a second line, which made the
    # `error:` output two lines.
    spec = tmp_path / "jobs.yaml"
    spec.write_bytes(b"jobs:\n  - model: m\x13.keras\n")
    out = tmp_path / "out"
    before = _prefilled(out)
    code, err = _run(batch, capsys, spec=str(spec), out=str(out), quiet=True)
    assert code == 2
    assert_one_error_line(err, r"malformed YAML: unacceptable character #x0013: special characters "
                               r"are not allowed in \"<unicode string>\", position 18$")
    assert snapshot(out) == before
