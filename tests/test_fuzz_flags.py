"""Fuzzed front door, flags and specs: random values for each command's own flags (every
command: convert, qat, compress, batch, preflight, device_benchmark, demo_assets), parsed as
the installed command parses them; and malformed TOML/YAML batch specs.

Each run must end in exit 0 (the values happen to be valid), 2 (one ``error:`` line, the
output folder as it was) or, when a gate flag was drawn, 3: never exit 1 or a traceback.
Integer flags that make a valid run slow (epochs, iterations, runs, threads) are drawn small
or invalid; the others also get huge values.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from unittest import mock

import numpy as np
import pytest
from conftest import REPO, snapshot, tiny_data
from fuzz_support import check_cli_outcome, prefilled_folder, profile, run_cli
from hypothesis import given
from hypothesis import strategies as st

from pipelines import batch, common, compress, convert, demo_assets, device_benchmark, preflight, qat

COMMANDS = {"convert": convert, "qat": qat, "compress": compress, "batch": batch,
            "preflight": preflight, "device_benchmark": device_benchmark,
            "demo_assets": demo_assets}
# Integer flags that may take large values (their cost does not grow with them).
LARGE_OK = {"seed", "batch_size", "num_eval_samples", "num_calibration_samples",
            "num_train_samples", "num_samples", "max_worker_rss_mb"}
NOT_FUZZED = {"verbose", "version", "help"}  # --verbose shows tracebacks by design
GATES = {"max_accuracy_drop", "min_agreement", "gate"}
FIXTURES = os.path.join(REPO, "tests", "fixtures")


@pytest.fixture(scope="module")
def world(tiny_keras_path, tmp_path_factory):
    """Valid and invalid files for every kind of flag."""
    d = tmp_path_factory.mktemp("fuzz_flags")
    x, y = tiny_data(40, seed=5)
    np.savez(d / "calib.npz", x=x[:20], y=y[:20])
    np.savez(d / "eval.npz", x=x[20:], y=y[20:])
    (d / "text.txt").write_text("not a model\n")
    (d / "empty").mkdir()
    (d / "m_int8.tflite").write_bytes(b"int8 model bytes")
    (d / "report.json").write_text(json.dumps(
        {"modes": [{"mode": "int8", "path": "m_int8.tflite"}], "gates": {"passed": True, "failures": []}}))
    (d / "garbage.json").write_bytes(b"{\"modes\": [1, {]")
    (d / "labels.txt").write_text("a\nb\nc\n")
    (d / "spec.toml").write_text(f"[[jobs]]\nmodel = '{d / 'missing.keras'}'\ndata = '{d / 'calib.npz'}'\n")
    elf = bytearray(b"\x7fELF\x02\x01\x01" + bytes(57))
    elf[18:20] = (183).to_bytes(2, "little")  # aarch64
    (d / "benchmark_model").write_bytes(bytes(elf))
    (d / "benchmark_model").chmod(0o755)
    adb = d / "adb"
    adb.write_text(f"#!{sys.executable}\n" + open(os.path.join(FIXTURES, "fake_adb.py")).read())
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    return {k: str(d / v) for k, v in {
        "model": "tiny.keras", "calib": "calib.npz", "eval": "eval.npz", "text": "text.txt",
        "dir": "empty", "tflite": "m_int8.tflite", "report": "report.json",
        "garbage": "garbage.json", "labels": "labels.txt", "spec": "spec.toml",
        "binary": "benchmark_model", "adb": "adb"}.items()} | {"model": tiny_keras_path, "root": str(d)}


def base_argv(name: str, w: dict, out: str) -> list[str]:
    """A valid, fast command line for each command (the drawn flags come after it and win)."""
    return {
        "convert": ["--model", w["model"], "--data", w["calib"], "--eval_data", w["eval"],
                    "--modes", "float32", "--latency_runs", "1", "--num_calibration_samples", "10",
                    "--layer_error_samples", "0", "--adaround_iterations", "2", "--quiet"],
        "qat": ["--model", w["model"], "--train_data", w["calib"], "--eval_data", w["eval"],
                "--epochs", "1", "--batch_size", "16", "--layer_error_samples", "0"],
        "compress": ["--model", w["model"], "--train_data", w["calib"], "--eval_data", w["eval"],
                     "--epochs", "1", "--batch_size", "16", "--quantization", "ptq",
                     "--num_calibration_samples", "10"],
        "batch": ["--spec", w["spec"], "--quiet"],
        "preflight": ["--model", w["model"]],
        "device_benchmark": ["--model", w["tflite"], "--benchmark_binary", w["binary"],
                             "--adb", w["adb"], "--threads", "1", "--delegates", "xnnpack",
                             "--num_runs", "2"],
        "demo_assets": ["--report", w["report"], "--mode", "int8", "--num_samples", "1"],
    }[name] + (["--assets", out] if name == "demo_assets" else ["--out", out])


def own_flags(module) -> list[str]:
    holders = [v for v in vars(module).values() if isinstance(v, common.flags.FlagHolder)]
    return sorted({h.name for h in holders} | {"quiet", "progress"} - NOT_FUZZED)


TEXT = st.text(alphabet="abcxyz019,:=-_.*()[]{}/ \\'\"", max_size=12)
PATH_FLAGS = {  # flag -> which files of the world it may name (plus missing, dir, text)
    "model": ["model", "calib", "tflite"], "teacher": ["model", "calib"],
    "data": ["calib", "eval", "model"], "train_data": ["calib", "eval", "model"],
    "eval_data": ["calib", "eval", "model"], "spec": ["spec", "garbage", "calib"],
    "report": ["report", "garbage", "calib"], "labels": ["labels", "calib"],
    "samples": ["calib", "labels"], "benchmark_binary": ["binary", "text", "adb"],
    "adb": ["adb", "text", "binary"],
}
CHOICES = {  # string flags with a vocabulary: valid words, mixed into random text
    "modes": ["float32", "int8", "float16,dynamic", "int16x8", "int8,int8"],
    "backend": ["converter", "litert", "both", "local", "ray"],
    "recipes": ["static_wi8_ai8", "dynamic_wi8_afp32", "weight_only_wi4_afp32"],
    "scheme": ["default_int8", "pow2", "per_tensor"], "image_size": ["8x8", "0x8", "8x", "9x9"],
    "quantization": ["qat", "ptq"], "schedule": ["constant", "polynomial"],
    "structure": ["unstructured", "2:4", "1:4"], "layers": ["conv.*", "(", "[", "dense"],
    "layer_types": ["Conv2D", "Dense,Conv2D", "Nope"], "mode": ["int8", "float32", "float16"],
    "threads": ["1", "2,4", "0", "-1", "a"], "delegates": ["xnnpack", "gpu,cpu", "nnapi", "tpu"],
    "output_losses": ["logits=kl", "logits=mse", "x=kl", "logits"],
    "output_tasks": ["logits=multilabel", "logits=regression", "x=regression", "logits=rank"],
    "gate": ["sqnr_db>=1", "logits:f1>=0.5", "top1_agreement>2", "f1=>1", "x:sqnr_db<3"],
    "overrides": ['[{"layer": "logits", "scheme": "pow2"}]', "[1]", "{}", "[", '[{"x": 1}]'],
    "serial": ["R58M123ABC", "nope"], "taskset": ["f0", "zz"], "ray_address": ["auto", "x:1"],
}


@st.composite
def flag_value(draw, name: str, w: dict) -> list[str]:
    """``["--name", value]`` (or a bool form) with a value drawn for the flag's type."""
    flag = common.flags.FLAGS[name]
    kind = flag.flag_type()
    if kind == "bool":
        return [draw(st.sampled_from([f"--{name}", f"--no{name}", f"--{name}=maybe"]))]
    if kind == "int":
        large = name in LARGE_OK
        value = draw(st.one_of(st.integers(-3, 4).map(str), st.sampled_from(["", "abc", "1.5", "1e3"]),
                               st.integers(-2**40, 2**40).map(str) if large else st.just("0")))
    elif kind == "float":
        value = draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                               st.floats(-2, 2).map(repr), st.sampled_from(["", "abc", "nan", "-inf"])))
    elif kind == "enum":
        value = draw(st.sampled_from([*flag.parser.enum_values, "", "nope"]))
    elif name in PATH_FLAGS:
        value = draw(st.one_of(st.sampled_from([w[k] for k in PATH_FLAGS[name]]),
                               st.sampled_from([os.path.join(w["root"], "missing.npz"), w["dir"],
                                                w["text"], "", "os:getcwd", "no_such_module:f",
                                                "math:pi", "a:b:c"])))
    else:
        value = draw(st.one_of(st.sampled_from(CHOICES.get(name, ["x"])), TEXT))
    return [f"--{name}={value}"]


def _out_for(choice: str, root: str) -> tuple[str, str, dict | None, str]:
    """(--out value, the folder to watch, its hashes or None when it must stay absent, the
    temporary folder to remove afterwards)."""
    if choice == "existing":
        out, before = prefilled_folder()
        return out, out, before, os.path.dirname(out)
    work = tempfile.mkdtemp(prefix="fuzz-flags-", dir=root)
    out = os.path.join(work, "out")
    if choice == "new":
        return out, out, None, work
    with open(out, "w") as f:
        f.write("a file where the folder should be\n")
    return (out if choice == "file" else os.path.join(out, "sub")), work, snapshot(work), work


def check_flags(name: str, w: dict, capfd, data) -> None:
    module = COMMANDS[name]
    drawn = data.draw(st.lists(st.sampled_from(own_flags(module)), min_size=1, max_size=3,
                               unique=True), label="flags")
    args, out_choice = [], "new"
    for flag in drawn:
        if flag in ("out", "assets"):
            out_choice = data.draw(st.sampled_from(["new", "existing", "file", "under_file"]),
                                   label=flag)
        else:
            args += data.draw(flag_value(flag, w), label=flag)
    out, watched, before, work = _out_for(out_choice, w["root"])
    cwd = os.getcwd()
    os.chdir(tempfile.mkdtemp(prefix="fuzz-cwd-", dir=w["root"]))  # default outputs land here
    env = {"FAKE_ADB_LOG": os.path.join(w["root"], "adb_log.jsonl"),
           "FAKE_ADB_FIXTURES": os.path.join(FIXTURES, "benchmark"),
           "FAKE_ADB_DEVICES": "R58M123ABC device product:p model:Pixel_7 device:d",
           "FAKE_ADB_PROPS": json.dumps({"ro.product.cpu.abi": "arm64-v8a", "ro.product.model": "Pixel 7",
                                         "ro.build.version.sdk": "34"}),
           "FAKE_ADB_OUTPUTS": json.dumps({"xnnpack": "tflite_new_xnnpack.txt", "gpu": "tflite_gpu.txt",
                                           "cpu": "tflite_old_no_prefix.txt",
                                           "nnapi": "tflite_gpu_nothing.txt"})}
    try:
        with mock.patch.dict(os.environ, env):
            run = run_cli(module, base_argv(name, w, out) + args, capfd)
    finally:
        os.chdir(cwd)
    allowed = (0, 2, 3) if GATES & set(drawn) else (0, 2)
    check_cli_outcome(f"{name}: random flags", run, watched, before, allowed)
    shutil.rmtree(work, ignore_errors=True)


CHEAP = ("batch", "device_benchmark", "demo_assets")  # exit 0 in well under a second
JOBS = ("convert", "qat", "compress", "preflight")  # a valid draw converts, trains or checks


@pytest.mark.parametrize("name", CHEAP)
@profile("cheap")
@given(data=st.data())
def test_random_flag_values(name, world, capfd, data):
    check_flags(name, world, capfd, data)


@pytest.mark.parametrize("name", JOBS)
@profile("job")
@given(data=st.data())
def test_random_flag_values_of_job_commands(name, world, capfd, data):
    check_flags(name, world, capfd, data)


@pytest.mark.slow
@pytest.mark.parametrize("name", CHEAP + JOBS)
@profile("cheap", many=True)
@given(data=st.data())
def test_random_flag_values_many(name, world, capfd, data):
    check_flags(name, world, capfd, data)
