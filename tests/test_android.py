"""The adb harness: the parser on every output variant, device selection, the binary check,
the CLI end to end through a fake adb, and Debian's real adb with no device attached."""

import json
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest
from absl.testing import flagsaver
from conftest import REPO, snapshot

from pipelines import device_benchmark as cli
from tflq import android, report

FIXTURES = os.path.join(REPO, "tests", "fixtures", "benchmark")
FAKE_ADB = os.path.join(REPO, "tests", "fixtures", "fake_adb.py")


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return f.read()


# ---- parser ----

def test_parse_new_format_with_prefix():
    r = android.parse_benchmark_output(fixture("tflite_new_xnnpack.txt"))
    assert r.format == "tflite_benchmark_model"
    assert r.inference_avg_ms == pytest.approx(115.246)
    assert r.init_ms == pytest.approx(1361.236)
    assert r.first_inference_ms == pytest.approx(125.113)
    assert r.warmup_avg_ms == pytest.approx(115.344)
    assert r.inference_stats_us["count"] == 50 and r.inference_stats_us["median"] == 115350
    assert r.warmup_stats_us["count"] == 4
    assert r.peak_memory_mb == pytest.approx(74.6641)
    assert r.memory_overall_mb == pytest.approx(132.816)
    assert r.xnnpack_created and r.delegated_nodes is None


def test_parse_old_format_without_prefix_curr_first():
    r = android.parse_benchmark_output(fixture("tflite_old_no_prefix.txt"))
    assert r.inference_avg_ms == pytest.approx(3.06125)
    assert r.inference_stats_us["curr"] == 3050 and r.inference_stats_us["count"] == 322
    assert r.peak_memory_mb == pytest.approx(138.809)  # old "Peak memory footprint" line
    assert not r.xnnpack_created


def test_parse_exponents_and_count_one():
    r = android.parse_benchmark_output(fixture("tflite_exponent_count1.txt"))
    assert r.inference_avg_ms == pytest.approx(10698.2)
    assert r.warmup_stats_us == {"count": 1, "curr": 11403859.0}
    assert r.inference_stats_us["first"] == pytest.approx(1.14039e7)
    assert r.peak_memory_mb == pytest.approx(161.0)
    assert r.memory_overall_mb == pytest.approx(150.0)


def test_parse_count_zero_warmup():
    r = android.parse_benchmark_output(fixture("tflite_count0.txt"))
    assert r.warmup_stats_us == {"count": 0}
    assert r.inference_avg_ms == pytest.approx(2.01)
    assert r.peak_memory_mb is None and r.memory_overall_mb == pytest.approx(9.5)


def test_parse_gpu_delegate_nodes():
    r = android.parse_benchmark_output(fixture("tflite_gpu.txt"))
    assert (r.delegate, r.delegated_nodes, r.total_nodes) == ("TfLiteGpuDelegateV2", 58, 58)
    android.check_delegate(r, "gpu", fixture("tflite_gpu.txt"))


def test_parse_litert_format():
    r = android.parse_benchmark_output(fixture("litert.txt"))
    assert r.format == "litert_benchmark"
    assert r.inference_avg_ms == pytest.approx(12.34)
    assert r.peak_memory_mb == pytest.approx(56.78)
    assert r.warmup_avg_ms == pytest.approx(13.02)
    assert r.xnnpack_created


def test_stat_line_only_output():
    text = "count=50 first=10 curr=10 min=9 max=11 avg=10.5 std=1\n"
    assert android.parse_benchmark_output(text).inference_avg_ms == pytest.approx(0.0105)


@pytest.mark.parametrize("text, message", [
    (fixture("garbage.txt"), "Unrecognized benchmark output: .*Exec format error"),
    ("", r"\(empty output\)"),
    ("INFO: count=0\n", "no inference average"),
    ("========== BENCHMARK RESULTS ==========\nPeak memory: 5.0 MB\n", "no 'Inference \\(avg\\)'"),
])
def test_unknown_output_is_an_error_quoting_it(text, message):
    with pytest.raises(ValueError, match=message):
        android.parse_benchmark_output(text)


@pytest.mark.parametrize("name, delegate, message", [
    ("tflite_gpu_nothing.txt", "gpu", "delegated nothing"),
    ("tflite_gpu_failed.txt", "gpu", "Delegate gpu failed: .*Failed to apply GPU delegate"),
    ("tflite_old_no_prefix.txt", "xnnpack", "xnnpack was not applied"),
])
def test_delegate_failures(name, delegate, message):
    text = fixture(name)
    with pytest.raises(android.DeviceError, match=message):
        android.check_delegate(android.parse_benchmark_output(text), delegate, text)


# ---- devices ----

DEVICES_TEXT = """* daemon not running; starting now at tcp:5037
* daemon started successfully
List of devices attached
R58M123ABC             device usb:1-1 product:beyond1 model:SM_G973F device:beyond1 transport_id:1
emulator-5554          unauthorized transport_id:2
0A1B2C                 offline transport_id:3
"""


def test_parse_devices():
    devices = android.parse_devices(DEVICES_TEXT)
    assert [(d.serial, d.state) for d in devices] == [
        ("R58M123ABC", "device"), ("emulator-5554", "unauthorized"), ("0A1B2C", "offline")]
    assert devices[0].model == "SM_G973F"


@pytest.mark.parametrize("serial, message", [
    (None, "More than one device attached .*pass --serial"),
    ("emulator-5554", "unauthorized: accept the USB debugging prompt"),
    ("0A1B2C", "is offline"),
    ("nope", "Device 'nope' not found"),
])
def test_select_device_errors(serial, message):
    with pytest.raises(android.DeviceError, match=message):
        android.select_device(android.parse_devices(DEVICES_TEXT), serial)


def test_select_device_ok_and_none():
    devices = android.parse_devices(DEVICES_TEXT)
    assert android.select_device(devices, "R58M123ABC").serial == "R58M123ABC"
    assert android.select_device(devices[:1]).serial == "R58M123ABC"
    with pytest.raises(android.DeviceError, match="No Android device found"):
        android.select_device([])


# ---- the binary ----

def make_elf(path, machine=183):
    header = bytearray(b"\x7fELF\x02\x01\x01" + bytes(57))
    header[18:20] = machine.to_bytes(2, "little")
    with open(path, "wb") as f:
        f.write(bytes(header))
    os.chmod(path, 0o755)
    return str(path)


def test_check_binary(tmp_path):
    binary = make_elf(tmp_path / "benchmark_model")
    android.check_binary(binary, "arm64-v8a")
    assert android.elf_machine(binary) == 183
    with pytest.raises(ValueError, match="built for x86_64 but the device ABI is arm64-v8a"):
        android.check_binary(make_elf(tmp_path / "x86", machine=62), "arm64-v8a")
    with pytest.raises(ValueError, match="not found"):
        android.check_binary(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="never downloads"):
        android.check_binary(None)
    plain = tmp_path / "plain"
    plain.write_bytes(open(binary, "rb").read())
    with pytest.raises(ValueError, match="not executable"):
        android.check_binary(str(plain))
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    with pytest.raises(ValueError, match="not an ELF executable"):
        android.check_binary(str(script))


def test_benchmark_plan_validation(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    plan = android.BenchmarkPlan(models=(str(model),), threads=(4,), delegates=("gpu",),
                                 taskset="f0", num_runs=10)
    command = android.benchmark_command("/d/bm", "/d/m.tflite", 4, "gpu", plan)
    assert command == ("taskset f0 /d/bm --graph=/d/m.tflite --num_threads=4 --use_gpu=true "
                       "--warmup_runs=1 --num_runs=10 --report_peak_memory_footprint=true")
    bad = [({"delegates": ("tpu",)}, "Unknown delegate"), ({"threads": (0,)}, "threads must be"),
           ({"num_runs": 0}, "num_runs must be"), ({"taskset": "big"}, "hex CPU mask"),
           ({"models": (str(tmp_path / "none.tflite"),)}, "Model not found"),
           ({"models": ()}, "No model")]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            android.BenchmarkPlan(**{"models": (str(model),), **kwargs})


# ---- end to end through a fake adb ----

@pytest.fixture()
def fake_adb(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(f"#!{sys.executable}\n" + open(FAKE_ADB).read())
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "adb_log.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("FAKE_ADB_FIXTURES", FIXTURES)
    monkeypatch.setenv("FAKE_ADB_DEVICES", "R58M123ABC device product:p model:Pixel_7 device:d")
    monkeypatch.setenv("FAKE_ADB_PROPS", json.dumps({
        "ro.product.cpu.abi": "arm64-v8a", "ro.product.model": "Pixel 7",
        "ro.build.version.sdk": "34"}))
    monkeypatch.setenv("FAKE_ADB_OUTPUTS", json.dumps({
        "xnnpack": "tflite_new_xnnpack.txt", "gpu": "tflite_gpu.txt", "cpu":
        "tflite_old_no_prefix.txt", "nnapi": "tflite_gpu_nothing.txt"}))

    def calls():
        return [json.loads(line) for line in open(log)] if log.exists() else []

    return calls


@pytest.fixture()
def desktop_report(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    modes = []
    for mode in ("float32", "int8"):
        (folder / f"m_{mode}.tflite").write_bytes(b"tflite " + mode.encode())
        modes.append({"mode": mode, "path": f"m_{mode}.tflite", "size_bytes": 8,
                      "size_ratio": 1.0, "float_ops": [], "accuracy": 0.9,
                      "accuracy_drop_pp": 0.0, "top1_agreement": 1.0, "sqnr_db": 40.0,
                      "cosine": 1.0, "max_abs_error": 0.1,
                      "latency_ms": {"median": 0.5, "p90": 0.6, "runs": 5},
                      "conversion_seconds": 1.0, "notes": []})
    r = {"schema_version": 1, "versions": {"tflq": "x", "tensorflow": "t", "litert": "l"},
         "machine": "m", "model": {"source": "m.keras", "flavor": "tf_keras", "inputs": []},
         "settings": {"seed": 0, "num_threads": 1, "latency_runs": 5},
         "data": {"calibration": {"source": "c", "num_samples": 1},
                  "evaluation": {"source": "e", "num_samples": 1, "has_labels": True}},
         "float": {"accuracy": 0.9}, "modes": modes,
         "gates": {"max_accuracy_drop": None, "min_agreement": None, "passed": True,
                   "failures": []}}
    path = folder / "report.json"
    path.write_bytes(report.to_json(r))
    return str(path)


def run_cli(capsys, **values):
    with flagsaver.flagsaver(**values):
        code = cli.main(["device_benchmark"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_merges_device_results_into_report(capsys, tmp_path, fake_adb, desktop_report):
    binary = make_elf(tmp_path / "benchmark_model")
    code, out, err = run_cli(capsys, report=desktop_report, benchmark_binary=binary,
                             threads="1,4", delegates="xnnpack,gpu", num_runs=20, taskset="f0")
    assert code == 0, err
    merged = json.load(open(desktop_report))
    table = merged["device"]["table"]
    assert len(table) == 2 * 2 * 2  # models × delegates × threads
    assert merged["device"]["info"] == {"serial": "R58M123ABC", "abi": "arm64-v8a",
                                        "model": "Pixel 7", "sdk": "34"}
    int8_gpu = [r for r in table if r["mode"] == "int8" and r["delegate"] == "gpu"]
    assert int8_gpu[0]["device_avg_ms"] == pytest.approx(8.012)
    assert int8_gpu[0]["delegated_nodes"] == 58 and int8_gpu[0]["desktop_median_ms"] == 0.5
    md = open(os.path.join(os.path.dirname(desktop_report), "report.md")).read()
    assert "## On device" in md and "| m_int8.tflite | int8 | gpu | 4 | 8.012 | 0.500 |" in md
    page = open(os.path.join(os.path.dirname(desktop_report), "report.html")).read()
    assert '<table id="device">' in page and "Pixel 7" in page  # report.html rewritten too
    assert "<td>m_int8.tflite</td><td>int8</td><td>gpu</td><td>4</td><td>8.012</td>" in page
    calls = fake_adb()
    assert calls[0] == ["devices", "-l"]
    assert ["-s", "R58M123ABC", "push", binary, "/data/local/tmp/tflq/benchmark_model"] in calls
    pushes = [c for c in calls if c[2:3] == ["push"]]
    assert len(pushes) == 3  # the binary once, each model once
    runs = [c for c in calls if c[2:3] == ["shell"] and "benchmark_model --graph" in c[3]]
    assert len(runs) == 8 and all(c[3].startswith("taskset f0 ") for c in runs)
    assert all("--num_runs=20" in c[3] for c in runs)
    assert calls[-1] == ["-s", "R58M123ABC", "shell", "rm", "-rf", "/data/local/tmp/tflq"]
    assert "Pixel 7" in out


def test_cli_with_model_writes_device_results(capsys, tmp_path, fake_adb):
    binary = make_elf(tmp_path / "benchmark_model")
    model = tmp_path / "a.tflite"
    model.write_bytes(b"x")
    out_dir = tmp_path / "dev"
    code, out, _ = run_cli(capsys, model=str(model), benchmark_binary=binary, threads="2",
                           delegates="cpu", out=str(out_dir), serial="R58M123ABC",
                           warmup_runs=3, timeout=30.0)
    assert code == 0
    results = json.load(open(out_dir / "device_results.json"))
    assert results["runs"][0]["result"]["inference_avg_ms"] == pytest.approx(3.06125)
    assert "--use_xnnpack=false" in results["runs"][0]["command"]
    assert "--warmup_runs=3" in results["runs"][0]["command"]
    assert "a.tflite [cpu, 2 thread(s)]: 3.061 ms avg" in out


@pytest.mark.parametrize("env, flags_, message", [
    ({"FAKE_ADB_DEVICES": ""}, {}, "No Android device found"),
    ({"FAKE_ADB_DEVICES": "X unauthorized"}, {}, "unauthorized"),
    ({"FAKE_ADB_DEVICES": "X offline"}, {}, "offline"),
    ({"FAKE_ADB_DEVICES": "A device\nB device"}, {}, "More than one device"),
    ({"FAKE_ADB_PROPS": json.dumps({"ro.product.cpu.abi": "x86_64"})}, {},
     "built for arm64-v8a but the device ABI is x86_64"),
    ({}, {"delegates": "nnapi"}, "Delegate nnapi delegated nothing"),
    ({"FAKE_ADB_OUTPUTS": json.dumps({"xnnpack": "garbage.txt"})}, {},
     "m_float32.tflite \\[xnnpack, 1 thread\\(s\\)\\]: Unrecognized benchmark output"),
    ({}, {"benchmark_binary": "/no/such/benchmark_model"}, "Benchmark binary not found"),
    ({}, {"delegates": "tpu"}, "Unknown delegate"),
    ({}, {"threads": "one"}, "--threads must be a comma list of integers"),
    ({}, {"report": "/no/report.json"}, "Report not found"),
    ({}, {"model": "x.tflite"}, "exactly one of --model or --report"),
])
def test_cli_errors_exit_2_and_write_nothing(capsys, tmp_path, fake_adb, desktop_report,
                                             monkeypatch, env, flags_, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    binary = make_elf(tmp_path / "benchmark_model")
    before = snapshot(tmp_path / "run")
    values = {"report": desktop_report, "benchmark_binary": binary, "threads": "1"}
    values.update(flags_)
    code, _, err = run_cli(capsys, **values)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert snapshot(tmp_path / "run") == before
    assert not os.path.exists("tflq_device")
    ran = [c for c in fake_adb() if c[2:3] == ["shell"] and "benchmark_model --graph" in c[3]]
    if ran:  # whatever was pushed got cleaned up
        assert fake_adb()[-1][2:] == ["shell", "rm", "-rf", "/data/local/tmp/tflq"]


def test_pull_instrumented_results(fake_adb):
    adb = android.Adb("adb", "R58M123ABC")
    result = android.pull_instrumented_results(adb)
    assert result["avg_ms"] == 3.21
    calls = fake_adb()
    assert calls[0][2:5] == ["shell", "am", "instrument"]
    assert "dev.tflq.demo.test/androidx.test.runner.AndroidJUnitRunner" in calls[0]


def test_adb_missing_is_a_clear_error(tmp_path):
    with pytest.raises(android.DeviceError, match="adb not found"):
        android.Adb(str(tmp_path / "no-adb")).devices()


def test_real_debian_adb_without_a_device(capsys, tmp_path):
    adb = shutil.which("adb")
    assert adb, "Debian's adb is not installed (apt-get install -y adb)"
    binary = make_elf(tmp_path / "benchmark_model")
    model = tmp_path / "a.tflite"
    model.write_bytes(b"x")
    try:
        code, _, err = run_cli(capsys, model=str(model), benchmark_binary=binary, adb=adb,
                               out=str(tmp_path / "o"), timeout=60.0)
    finally:
        subprocess.run([adb, "kill-server"], capture_output=True, timeout=30, check=False)
    assert code == 2
    assert err.startswith("error: No Android device found")
    assert not os.path.exists(tmp_path / "o")
