"""On-device validation: adb orchestration and benchmark-output parsing.

tflq never downloads ``benchmark_model``: the user passes their own binary. The harness
lists devices, picks one, reads its ABI/model/SDK, checks the binary's ELF machine against
the ABI, pushes binary and models to ``/data/local/tmp/tflq``, runs a matrix of models ×
delegates × threads, parses every output, and removes what it pushed.

The parser understands TFLite's ``benchmark_model`` (with or without the ``INFO: `` prefix,
numbers in exponent notation, old and new memory lines, stat lines in either field order,
``count=0``/``count=1``) and LiteRT's own ``BENCHMARK RESULTS`` block. Unknown output is an
error quoting the text, never a silent zero.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
from collections.abc import Sequence

from tflq.android.output import DeviceError, check_delegate, parse_benchmark_output, quote

__all__ = ["REMOTE_DIR", "DELEGATES", "DELEGATE_FLAGS", "ABI_ELF_MACHINE", "Device",
    "parse_devices", "select_device", "elf_machine", "check_binary", "Adb", "BenchmarkPlan",
    "benchmark_command", "run_matrix", "merge_into_report", "pull_instrumented_results"]

REMOTE_DIR = "/data/local/tmp/tflq"
DELEGATES = ("xnnpack", "gpu", "nnapi", "cpu")
DELEGATE_FLAGS = {
    "xnnpack": ["--use_xnnpack=true"],
    "gpu": ["--use_gpu=true"],
    "nnapi": ["--use_nnapi=true"],
    "cpu": ["--use_xnnpack=false"],
}
# ELF e_machine values for the Android ABIs.
ABI_ELF_MACHINE = {"arm64-v8a": 183, "armeabi-v7a": 40, "armeabi": 40, "x86_64": 62, "x86": 3}


@dataclasses.dataclass(frozen=True)
class Device:
    serial: str
    state: str
    properties: dict

    @property
    def model(self) -> str | None:
        return self.properties.get("model")


def parse_devices(text: str) -> list[Device]:
    """Parses ``adb devices -l`` output (daemon start-up lines are ignored)."""
    devices = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("List of devices", "*", "adb server")):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        props = dict(p.split(":", 1) for p in parts[2:] if ":" in p)
        devices.append(Device(serial=parts[0], state=parts[1], properties=props))
    return devices


def select_device(devices: Sequence[Device], serial: str | None = None) -> Device:
    """Picks the device to use, with a clear error for every way that can fail.

    Raises:
      DeviceError: no device, serial not found, unauthorized, offline, or more than one
        device and no serial.
    """
    if not devices:
        raise DeviceError("No Android device found: `adb devices` lists none. Connect a phone "
                          "with USB debugging enabled or start an emulator.")
    if serial is not None:
        matches = [d for d in devices if d.serial == serial]
        if not matches:
            raise DeviceError(f"Device {serial!r} not found. Attached: "
                              f"{[d.serial for d in devices]}")
        device = matches[0]
    else:
        if len(devices) > 1:
            raise DeviceError(f"More than one device attached {[d.serial for d in devices]}: "
                              "pass --serial to choose one.")
        device = devices[0]
    if device.state == "unauthorized":
        raise DeviceError(f"Device {device.serial} is unauthorized: accept the USB debugging "
                          "prompt on the phone, then retry.")
    if device.state == "offline":
        raise DeviceError(f"Device {device.serial} is offline: reconnect it or run "
                          "`adb reconnect`.")
    if device.state != "device":
        raise DeviceError(f"Device {device.serial} is in state {device.state!r}, not ready.")
    return device


def elf_machine(path: str) -> int:
    """The ELF ``e_machine`` of a binary.

    Raises:
      ValueError: the file is not an ELF executable.
    """
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise ValueError(f"Benchmark binary {path!r} is not an ELF executable.")
    order = "little" if header[5] == 1 else "big"
    return int.from_bytes(header[18:20], order)


def check_binary(path: str, abi: str | None = None) -> None:
    """Checks the user's ``benchmark_model``: present, executable, built for the device ABI.

    Raises:
      ValueError: missing, not executable, not ELF, or built for another ABI.
    """
    if not path:
        raise ValueError("Pass the path of your benchmark_model binary (--benchmark_binary); "
                         "tflq never downloads it.")
    if not os.path.isfile(path):
        raise ValueError(f"Benchmark binary not found: {path!r}")
    if not os.access(path, os.X_OK):
        raise ValueError(f"Benchmark binary {path!r} is not executable (chmod +x it).")
    machine = elf_machine(path)
    if abi is not None and abi in ABI_ELF_MACHINE and ABI_ELF_MACHINE[abi] != machine:
        built_for = [a for a, m in ABI_ELF_MACHINE.items() if m == machine] or [f"e_machine {machine}"]
        raise ValueError(f"Benchmark binary {path!r} is built for {built_for[0]} but the device "
                         f"ABI is {abi}.")


class Adb:
    """Runs adb commands for one device with time limits.

    Args:
      adb: the adb executable (a path or a name on PATH).
      serial: device serial (``-s``); None for device-less commands.
      timeout: seconds per command.
    """

    def __init__(self, adb: str = "adb", serial: str | None = None, timeout: float = 600):
        self.adb, self.serial, self.timeout = adb, serial, timeout

    def run(self, *args: str, timeout: float | None = None, check: bool = True) -> str:
        command = [self.adb] + (["-s", self.serial] if self.serial else []) + list(args)
        try:
            result = subprocess.run(command, capture_output=True, text=True,
                                    timeout=timeout or self.timeout, check=False)
        except FileNotFoundError as e:
            raise DeviceError(f"adb not found ({self.adb!r}): install it (apt-get install adb) "
                              "or pass --adb.") from e
        except OSError as e:  # not executable, not a program (ENOEXEC), ...
            raise DeviceError(f"adb {self.adb!r} cannot be run: {e.strerror or e} (check --adb "
                              "and the file's permissions).") from e
        except subprocess.TimeoutExpired as e:
            raise DeviceError(f"`{shlex.join(command)}` timed out after {e.timeout:g} s.") from e
        output = (result.stdout or "") + (result.stderr or "")
        if check and result.returncode != 0:
            first = next((ln for ln in output.splitlines() if ln.strip()), "")
            if "no devices/emulators found" in output:
                raise DeviceError("No Android device found: adb says 'no devices/emulators found'.")
            if "unauthorized" in output:
                raise DeviceError(f"Device {self.serial} is unauthorized: accept the USB "
                                  "debugging prompt on the phone.")
            if "offline" in output:
                raise DeviceError(f"Device {self.serial} is offline.")
            raise DeviceError(f"`{shlex.join(command)}` failed (exit {result.returncode}): "
                              f"{first.strip()[:200]}")
        return output

    def for_device(self, serial: str) -> Adb:
        return Adb(self.adb, serial, self.timeout)

    def devices(self) -> list[Device]:
        return parse_devices(self.run("devices", "-l"))

    def getprop(self, name: str) -> str:
        return self.run("shell", "getprop", name).strip()

    def device_info(self) -> dict:
        return {
            "serial": self.serial,
            "abi": self.getprop("ro.product.cpu.abi"),
            "model": self.getprop("ro.product.model"),
            "sdk": self.getprop("ro.build.version.sdk"),
        }


@dataclasses.dataclass(frozen=True)
class BenchmarkPlan:
    """What to run on the device.

    Attributes:
      models: local .tflite paths.
      threads: thread counts.
      delegates: names from ``DELEGATES``.
      warmup_runs, num_runs: passed to benchmark_model.
      taskset: CPU mask for ``taskset`` (e.g. ``f0`` pins the big cores), None to not pin.
    """

    models: tuple[str, ...]
    threads: tuple[int, ...] = (1, 4)
    delegates: tuple[str, ...] = ("xnnpack",)
    warmup_runs: int = 1
    num_runs: int = 50
    taskset: str | None = None

    def __post_init__(self):
        if not self.models:
            raise ValueError("No model to benchmark.")
        for model in self.models:
            if not os.path.isfile(model):
                raise ValueError(f"Model not found: {model!r}")
            if not model.endswith(".tflite"):
                raise ValueError(f"Expected a .tflite model. Received: {model!r}")
        unknown = [d for d in self.delegates if d not in DELEGATES]
        if unknown or not self.delegates:
            raise ValueError(f"Unknown delegate(s) {unknown}. Available: {sorted(DELEGATES)}")
        if not self.threads or any(t < 1 for t in self.threads):
            raise ValueError(f"threads must be positive. Received: threads={list(self.threads)}")
        if self.num_runs < 1 or self.warmup_runs < 0:
            raise ValueError(f"num_runs must be >= 1 and warmup_runs >= 0. Received: "
                             f"num_runs={self.num_runs}, warmup_runs={self.warmup_runs}")
        if self.taskset is not None and not re.fullmatch(r"[0-9a-fA-F]+", self.taskset):
            raise ValueError(f"taskset must be a hex CPU mask like f0. Received: {self.taskset!r}")


def benchmark_command(remote_binary: str, remote_model: str, threads: int, delegate: str,
                      plan: BenchmarkPlan) -> str:
    """The shell command run on the device for one cell of the matrix."""
    args = [remote_binary, f"--graph={remote_model}", f"--num_threads={threads}",
            *DELEGATE_FLAGS[delegate], f"--warmup_runs={plan.warmup_runs}",
            f"--num_runs={plan.num_runs}", "--report_peak_memory_footprint=true"]
    if plan.taskset:
        args = ["taskset", plan.taskset, *args]
    return " ".join(shlex.quote(a) for a in args)


def run_matrix(adb: Adb, binary: str, plan: BenchmarkPlan, serial: str | None = None,
               progress=None) -> dict:
    """Benchmarks every model × delegate × threads on one device.

    Picks the device, checks the binary against its ABI, pushes, runs, parses, and always
    removes ``REMOTE_DIR`` afterwards.

    Returns:
      ``{"device": {...}, "runs": [{model, delegate, threads, command, result}]}``.

    Raises:
      DeviceError/ValueError: any device, binary or delegate problem, or unparsable output.
    """
    check_binary(binary)
    device = select_device(adb.devices(), serial)
    dev = adb.for_device(device.serial)
    info = dev.device_info()
    check_binary(binary, info["abi"])
    remote_binary = f"{REMOTE_DIR}/benchmark_model"
    runs = []
    try:
        dev.run("shell", "mkdir", "-p", REMOTE_DIR)
        dev.run("push", binary, remote_binary)
        dev.run("shell", "chmod", "755", remote_binary)
        cells = [(m, d, t) for m in plan.models for d in plan.delegates for t in plan.threads]
        pushed = set()
        for model, delegate, threads in (progress(cells) if progress else cells):
            remote_model = f"{REMOTE_DIR}/{os.path.basename(model)}"
            if model not in pushed:
                dev.run("push", model, remote_model)
                pushed.add(model)
            command = benchmark_command(remote_binary, remote_model, threads, delegate, plan)
            output = dev.run("shell", command)
            try:
                result = parse_benchmark_output(output)
            except ValueError as e:
                raise DeviceError(f"{os.path.basename(model)} [{delegate}, {threads} thread(s)]: "
                                  f"{e}") from e
            check_delegate(result, delegate, output)
            runs.append({"model": os.path.basename(model), "delegate": delegate,
                         "threads": threads, "command": command, "result": result.to_dict()})
    finally:
        dev.run("shell", "rm", "-rf", REMOTE_DIR, check=False)
    return {"device": info, "runs": runs}


def merge_into_report(report: dict, device_results: dict) -> dict:
    """Returns a copy of report.json's dict with the device runs beside desktop numbers."""
    merged = dict(report)
    desktop = {m["path"]: m for m in report.get("modes", [])}
    rows = []
    for run in device_results["runs"]:
        mode = desktop.get(run["model"])
        rows.append({
            "model": run["model"],
            "mode": mode["mode"] if mode else None,
            "delegate": run["delegate"],
            "threads": run["threads"],
            "device_avg_ms": run["result"]["inference_avg_ms"],
            "device_peak_memory_mb": run["result"]["peak_memory_mb"],
            "delegated_nodes": run["result"]["delegated_nodes"],
            "total_nodes": run["result"]["total_nodes"],
            "desktop_median_ms": mode["latency_ms"]["median"] if mode else None,
        })
    merged["device"] = {"info": device_results["device"], "runs": device_results["runs"],
                        "table": rows}
    return merged


def pull_instrumented_results(adb: Adb, package: str = "dev.tflq.demo",
                              runner: str = "androidx.test.runner.AndroidJUnitRunner") -> dict:
    """Runs the android_demo instrumented benchmark and pulls its JSON result.

    The test writes ``benchmark.json`` to the app's external files folder.
    """
    import json

    output = adb.run("shell", "am", "instrument", "-w", "-e", "class",
                     f"{package}.BenchmarkTest", f"{package}.test/{runner}")
    if "FAILURES!!!" in output or "INSTRUMENTATION_FAILED" in output or "OK (" not in output:
        raise DeviceError(f"Instrumented benchmark failed: {quote(output)}")
    text = adb.run("shell", "cat", f"/sdcard/Android/data/{package}/files/benchmark.json")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DeviceError(f"Instrumented benchmark wrote invalid JSON: {quote(text)}") from e
